// An AsyncWorker that settles a Promise. The work runs on libuv's pool with no JS access; the
// result is converted on the main thread. Objects the work uses are Ref()'d by the caller
// through `keep_alive` so they cannot be collected or disposed of underneath it.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <vector>

#include "js-error.h"

namespace sdnode {

template <typename Result>
class PromiseWorker : public Napi::AsyncWorker {
public:
    using Work = std::function<Result()>;
    using ToJs = std::function<Napi::Value(Napi::Env, Result &)>;

    // Queues the work and returns its promise.
    static Napi::Promise Start(Napi::Env env, const char * name, Work work, ToJs to_js,
                               std::vector<Napi::Object> keep_alive = {}) {
        auto * w = new PromiseWorker(env, name, std::move(work), std::move(to_js), keep_alive);
        Napi::Promise promise = w->deferred_.Promise();
        w->Queue();
        return promise;
    }

protected:
    void Execute() override {
        try {
            result_ = std::make_unique<Result>(work_());
        } catch (...) {
            error_ = CapturedError::from_current_exception();
            failed_ = true;
        }
    }

    void OnOK() override {
        Napi::Env env = Env();
        Napi::HandleScope scope(env);
        if (failed_) {
            deferred_.Reject(error_.to_js(env).Value());
            return;
        }
        try {
            deferred_.Resolve(to_js_(env, *result_));
        } catch (const Napi::Error & e) {
            deferred_.Reject(e.Value());
        } catch (...) {
            deferred_.Reject(CapturedError::from_current_exception().to_js(env).Value());
        }
    }

    void OnError(const Napi::Error & e) override { deferred_.Reject(e.Value()); }

private:
    PromiseWorker(Napi::Env env, const char * name, Work work, ToJs to_js, std::vector<Napi::Object> & keep)
        : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)),
          work_(std::move(work)), to_js_(std::move(to_js)) {
        for (auto & o : keep) refs_.push_back(Napi::Persistent(o));
    }

    Napi::Promise::Deferred deferred_;
    Work work_;
    ToJs to_js_;
    std::unique_ptr<Result> result_;
    CapturedError error_;
    bool failed_ = false;
    std::vector<Napi::ObjectReference> refs_;
};

}  // namespace sdnode
