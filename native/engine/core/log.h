// Engine log messages: Warn and Error go to stderr ("sdnode: ..."); Debug and Info are dropped.
// (Messages a caller must see, such as load warnings, travel in return values instead.)
#pragma once
#include <string>

namespace sd {

enum class LogLevel { Debug, Info, Warn, Error };

void log(LogLevel level, const std::string & message);

}  // namespace sd
