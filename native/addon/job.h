// One way native work settles a promise: the work runs on an engine thread (a session's thread,
// or a thread of its own for loading and inspecting), never on libuv's pool; its progress
// reports and then its settlement reach JS, in order, through one thread-safe function
// (progress.h). Objects the work uses are Ref()'d until the promise settles.
//
// Everything a job holds that must be released on the main thread (the deferred, references,
// the work's captures) is moved into the settlement task, so nothing of it is destroyed on the
// worker thread. When the settlement cannot run (the environment is being torn down: a worker
// terminated, the process exiting), the job's JS handles are left to the dying environment and
// only its C++ results are freed, on whatever thread lets go of them.
//
// A job's abort flag is registered with the environment's Lifetime (lifetime.h) while the job is
// pending, so that the environment's teardown aborts it.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "addon-state.h"
#include "js-error.h"
#include "progress.h"

namespace sdnode {

// Hands a job's body to the thread that runs it.
using Executor = std::function<void(std::function<void()>)>;

// A thread of its own per job (loading, inspecting: long file reads that must not hold the pool),
// joined at the environment's teardown.
inline Executor own_thread(Napi::Env env) {
    std::shared_ptr<Lifetime> life = AddonState::Get(env).lifetime;
    return [life](std::function<void()> body) { life->spawn(std::move(body)); };
}

template <typename Result>
class Job {
public:
    using Work = std::function<Result()>;
    using ToJs = std::function<Napi::Value(Napi::Env, Result &)>;

    // `abort` (may be null): the job's flag, raised by the environment's teardown too.
    static Napi::Promise Start(Napi::Env env, const char * name, const Executor & executor, Work work, ToJs to_js,
                               std::vector<Napi::Object> keep_alive = {}, std::shared_ptr<JsTaskQueue> queue = nullptr,
                               std::shared_ptr<std::atomic<bool>> abort = nullptr) {
        auto state = std::make_shared<State>(env);
        state->to_js = std::move(to_js);
        state->work = std::move(work);
        for (auto & o : keep_alive) state->refs.push_back(Napi::Persistent(o));
        state->life = AddonState::Get(env).lifetime;
        state->life_key = state->life->add_job(std::move(abort));
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
        // Unsettled (the environment went away first): its references belong to the dead
        // environment, so nothing here calls into it.
        ~State() {
            for (auto & r : refs) r.SuppressDestruct();
            if (life) life->remove_job(life_key);
        }
        Napi::Promise::Deferred deferred;
        std::shared_ptr<Lifetime> life;
        uint64_t life_key = 0;
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
            } else {
                try {
                    deferred.Resolve(to_js(env, *result));
                } catch (const Napi::Error & e) {
                    deferred.Reject(e.Value());
                } catch (...) {
                    deferred.Reject(CapturedError::from_current_exception().to_js(env).Value());
                }
            }
            refs.clear();  // released here, on the JS thread
        }
    };
};

}  // namespace sdnode
