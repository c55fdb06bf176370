// One way native work settles a promise: the work runs on an engine thread (a session's thread,
// or a thread of its own for loading and inspecting), never on libuv's pool; its progress
// reports and then its settlement reach JS, in order, through one thread-safe function
// (progress.h). Objects the work uses are Ref()'d until the promise settles.
//
// Everything a job holds that must be released on the main thread (the deferred, references,
// the work's captures) is moved into the settlement task, so nothing of it is destroyed on the
// worker thread.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "js-error.h"
#include "progress.h"

namespace sdnode {

// Hands a job's body to the thread that runs it.
using Executor = std::function<void(std::function<void()>)>;

// A thread of its own per job (loading, inspecting: long file reads that must not hold the pool).
inline void run_on_own_thread(std::function<void()> body) { std::thread(std::move(body)).detach(); }

template <typename Result>
class Job {
public:
    using Work = std::function<Result()>;
    using ToJs = std::function<Napi::Value(Napi::Env, Result &)>;

    static Napi::Promise Start(Napi::Env env, const char * name, const Executor & executor, Work work, ToJs to_js,
                               std::vector<Napi::Object> keep_alive = {}, std::shared_ptr<JsTaskQueue> queue = nullptr) {
        auto state = std::make_shared<State>(env);
        state->to_js = std::move(to_js);
        state->work = std::move(work);
        for (auto & o : keep_alive) state->refs.push_back(Napi::Persistent(o));
        if (!queue) queue = std::make_shared<JsTaskQueue>(env, env.Undefined(), name);
        Napi::Promise promise = state->deferred.Promise();
        executor([state, queue]() mutable {
            try {
                state->result = std::make_unique<Result>(state->work());
            } catch (...) {
                state->error = CapturedError::from_current_exception();
                state->failed = true;
            }
            std::shared_ptr<State> owned = std::move(state);
            std::shared_ptr<JsTaskQueue> q = std::move(queue);
            q->finish([owned = std::move(owned)](Napi::Env e, Napi::Function) { owned->settle(e); });
        });
        return promise;
    }

private:
    struct State {
        explicit State(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
        Napi::Promise::Deferred deferred;
        Work work;
        std::unique_ptr<Result> result;
        CapturedError error;
        bool failed = false;
        ToJs to_js;
        std::vector<Napi::ObjectReference> refs;

        void settle(Napi::Env env) {
            Napi::HandleScope scope(env);
            work = nullptr;  // its captures (models, sessions) go on this thread
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
};

}  // namespace sdnode
