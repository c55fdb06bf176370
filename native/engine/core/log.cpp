#include "core/log.h"

#include <cstdio>
#include <mutex>

namespace sd {

namespace {
std::mutex g_mutex;
LogSink g_sink;
}  // namespace

void set_log_sink(LogSink sink) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_sink = std::move(sink);
}

void log(LogLevel level, const std::string & message) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_sink) {
        g_sink(level, message);
    } else if (level >= LogLevel::Warn) {
        std::fprintf(stderr, "sdnode: %s\n", message.c_str());
    }
}

}  // namespace sd
