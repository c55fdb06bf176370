#include "core/errors.h"

namespace sd {

const char * error_code_name(ErrorCode code) {
    switch (code) {
        case ErrorCode::InvalidArgument: return "InvalidArgument";
        case ErrorCode::ModelFormat: return "ModelFormat";
        case ErrorCode::UnsupportedModel: return "UnsupportedModel";
        case ErrorCode::Aborted: return "Aborted";
        case ErrorCode::Io: return "Io";
        case ErrorCode::OutOfMemory: return "OutOfMemory";
        case ErrorCode::Internal: return "Internal";
    }
    return "Internal";
}

}  // namespace sd
