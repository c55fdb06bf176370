// A process-wide logging hook. The addon installs one that forwards to JS (debug only);
// the default drops everything below Warn to stderr.
#pragma once
#include <functional>
#include <string>

namespace sd {

enum class LogLevel { Debug, Info, Warn, Error };
using LogSink = std::function<void(LogLevel, const std::string &)>;

void set_log_sink(LogSink sink);
void log(LogLevel level, const std::string & message);

}  // namespace sd
