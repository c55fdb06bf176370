// Native memory a JS object holds, reported to V8 (AdjustExternalMemory) so that garbage
// collection pressure reflects it. set() moves the report to a new size; close() takes it back
// for good, and later set() calls are ignored (a job that settles after dispose()). JS thread only.
#pragma once
#include <napi.h>

#include <atomic>
#include <cstdint>

namespace sdnode {

class ExternalMemory {
public:
    void set(Napi::Env env, int64_t bytes) {
        if (closed_ || bytes == reported_) return;
        Napi::MemoryManagement::AdjustExternalMemory(env, bytes - reported_);
        total() += bytes - reported_;
        reported_ = bytes;
    }
    void close(Napi::Env env) {
        set(env, 0);
        closed_ = true;
    }

    // What every object of the addon reports now, in all environments (the addon's
    // externalMemory(), for tests and diagnostics: V8's own statistics do not show it).
    static std::atomic<int64_t> & total() {
        static std::atomic<int64_t> bytes{0};
        return bytes;
    }

private:
    int64_t reported_ = 0;
    bool closed_ = false;
};

}  // namespace sdnode
