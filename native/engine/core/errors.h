// One exception type for the whole engine. The addon maps `code` to a typed JS error class;
// the message is written for the user: what was wrong, and what was expected.
#pragma once
#include <cstdio>
#include <stdexcept>
#include <string>

namespace sd {

enum class ErrorCode {
    InvalidArgument,   // a caller-provided value is out of range or malformed
    ModelFormat,       // a model file is corrupt, truncated or not what it claims to be
    UnsupportedModel,  // a well-formed file whose architecture or tensor type we do not run
    Aborted,           // the caller's abort flag was raised
    Io,                // the OS refused: missing file, permission, mmap failure
    OutOfMemory,       // an allocation (host or device) failed
    Internal,          // a bug: an invariant of the engine did not hold
};

const char * error_code_name(ErrorCode code);

class Error : public std::runtime_error {
public:
    Error(ErrorCode code, const std::string & message, std::string file = {})
        : std::runtime_error(message), code_(code), file_(std::move(file)) {}
    ErrorCode code() const { return code_; }
    // The file the error is about, if any (absolute or as given by the caller).
    const std::string & file() const { return file_; }

private:
    ErrorCode code_;
    std::string file_;
};

// Shorthands that read well at the throw site.
[[noreturn]] inline void throw_invalid(const std::string & msg) { throw Error(ErrorCode::InvalidArgument, msg); }
[[noreturn]] inline void throw_format(const std::string & file, const std::string & msg) {
    throw Error(ErrorCode::ModelFormat, file + ": " + msg, file);
}
[[noreturn]] inline void throw_unsupported(const std::string & file, const std::string & msg) {
    throw Error(ErrorCode::UnsupportedModel, file + ": " + msg, file);
}

// A number as messages show it: shortest of %g ("0.002", "120", "1e+09").
inline std::string number_text(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

}  // namespace sd
