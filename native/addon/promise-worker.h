// An AsyncWorker that settles a Promise. The work runs on libuv's pool with no JS access; the
// result is converted on the main thread. Objects the work uses are Ref()'d through
// `keep_alive` until the promise settles, so they cannot be collected underneath it. With a
// JsTaskQueue, the settlement goes through the queue after every progress report.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <vector>

#include "js-error.h"
#include "progress.h"

namespace sdnode {

template <typename Result>
class PromiseWorker : public Napi::AsyncWorker {
public:
    using Work = std::function<Result()>;
    using ToJs = std::function<Napi::Value(Napi::Env, Result &)>;

    // Queues the work and returns its promise.
    static Napi::Promise Start(Napi::Env env, const char * name, Work work, ToJs to_js,
                               std::vector<Napi::Object> keep_alive = {},
                               std::shared_ptr<JsTaskQueue> queue = nullptr) {
        auto * w = new PromiseWorker(env, name, std::move(work), std::move(to_js), keep_alive, std::move(queue));
        Napi::Promise promise = w->state_->deferred.Promise();
        w->Queue();
        return promise;
    }

protected:
    void Execute() override {
        try {
            state_->result = std::make_unique<Result>(work_());
        } catch (...) {
            state_->error = CapturedError::from_current_exception();
            state_->failed = true;
        }
    }

    void OnOK() override { finish(); }
    void OnError(const Napi::Error & e) override {
        state_->error = CapturedError{"Internal", e.Message(), ""};
        state_->failed = true;
        finish();
    }

private:
    struct State {
        explicit State(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
        Napi::Promise::Deferred deferred;
        std::unique_ptr<Result> result;
        CapturedError error;
        bool failed = false;
        ToJs to_js;
        std::vector<Napi::ObjectReference> refs;

        void settle(Napi::Env env) {
            Napi::HandleScope scope(env);
            if (failed) {
                deferred.Reject(error.to_js(env).Value());
                return;
            }
            try {
                deferred.Resolve(to_js(env, *result));
            } catch (const Napi::Error & e) {
                deferred.Reject(e.Value());
            } catch (...) {
                deferred.Reject(CapturedError::from_current_exception().to_js(env).Value());
            }
        }
    };

    PromiseWorker(Napi::Env env, const char * name, Work work, ToJs to_js, std::vector<Napi::Object> & keep,
                  std::shared_ptr<JsTaskQueue> queue)
        : Napi::AsyncWorker(env, name), state_(std::make_shared<State>(env)), work_(std::move(work)), queue_(std::move(queue)) {
        state_->to_js = std::move(to_js);
        for (auto & o : keep) state_->refs.push_back(Napi::Persistent(o));
    }

    void finish() {
        Napi::Env env = Env();
        if (!queue_) {
            state_->settle(env);
            return;
        }
        auto state = state_;
        queue_->post_final(env, [state](Napi::Env e, Napi::Function) { state->settle(e); });
    }

    std::shared_ptr<State> state_;
    Work work_;
    std::shared_ptr<JsTaskQueue> queue_;
};

}  // namespace sdnode
