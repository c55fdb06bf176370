#include "core/log.h"

#include <cstdio>
#include <mutex>

namespace sd {

void log(LogLevel level, const std::string & message) {
    static std::mutex mutex;  // one line at a time from any thread
    if (level < LogLevel::Warn) return;
    std::lock_guard<std::mutex> lock(mutex);
    std::fprintf(stderr, "sdnode: %s\n", message.c_str());
}

}  // namespace sd
