// Progress from a worker thread to a JS callback through a thread-safe function. The TSFN is
// unref'd: a pending progress report never keeps the process alive by itself (the worker's
// promise does, while the work runs). Reports are non-blocking; the worker never waits on JS.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <optional>

namespace sdnode {

template <typename Payload>
class ProgressChannel {
public:
    using ToJs = Napi::Value (*)(Napi::Env, const Payload &);

    // `callback` may be undefined: then send() does nothing.
    ProgressChannel(Napi::Env env, Napi::Value callback, const char * name, ToJs to_js) {
        if (!callback.IsFunction()) return;
        tsfn_ = Napi::ThreadSafeFunction::New(env, callback.As<Napi::Function>(), name, 0, 1);
        tsfn_->Unref(env);
        to_js_ = to_js;
    }
    ~ProgressChannel() { release(); }
    ProgressChannel(const ProgressChannel &) = delete;
    ProgressChannel & operator=(const ProgressChannel &) = delete;

    // Any thread.
    void send(const Payload & p) {
        if (!tsfn_) return;
        auto * copy = new Payload(p);
        ToJs to_js = to_js_;
        napi_status s = tsfn_->NonBlockingCall(copy, [to_js](Napi::Env env, Napi::Function fn, Payload * data) {
            std::unique_ptr<Payload> owned(data);
            if (env == nullptr || fn.IsEmpty()) return;  // environment shutting down
            // lib/ wraps user callbacks so they never throw into here.
            fn.Call({to_js(env, *owned)});
        });
        if (s != napi_ok) delete copy;
    }

    // Main thread or worker; idempotent.
    void release() {
        if (tsfn_) {
            tsfn_->Release();
            tsfn_.reset();
        }
    }

private:
    std::optional<Napi::ThreadSafeFunction> tsfn_;
    ToJs to_js_ = nullptr;
};

}  // namespace sdnode
