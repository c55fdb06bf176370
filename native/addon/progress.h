// Messages from a worker thread to JS, in order, through one thread-safe function: progress
// reports while the work runs, then the promise's settlement. Settling through the same queue
// guarantees every progress callback runs before the promise resolves or rejects.
//
// The TSFN stays ref'd from the start of a job until its settlement has run, so the process
// cannot exit with the promise unsettled; no libuv pool thread is held meanwhile (the work runs
// on the engine's threads, native/addon/job.h).
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <optional>

namespace sdnode {

class JsTaskQueue {
public:
    using Task = std::function<void(Napi::Env, Napi::Function)>;

    // `callback` is the user's progress function, or undefined (then tasks still run, with an
    // empty function).
    JsTaskQueue(Napi::Env env, Napi::Value callback, const char * name) {
        Napi::Function fn = callback.IsFunction() ? callback.As<Napi::Function>() : Napi::Function::New(env, [](const Napi::CallbackInfo &) {});
        has_callback_ = callback.IsFunction();
        tsfn_ = Napi::ThreadSafeFunction::New(env, fn, name, 0, 1);
    }
    ~JsTaskQueue() { release(); }
    JsTaskQueue(const JsTaskQueue &) = delete;
    JsTaskQueue & operator=(const JsTaskQueue &) = delete;

    bool has_callback() const { return has_callback_; }

    // Any thread. Never blocks; a task that cannot be queued (environment shutting down) is dropped.
    void post(Task task) {
        if (!tsfn_) return;
        auto * heap = new Task(std::move(task));
        napi_status s = tsfn_->NonBlockingCall(heap, [](Napi::Env env, Napi::Function fn, Task * t) {
            std::unique_ptr<Task> owned(t);
            if (env == nullptr) return;  // environment shutting down
            Napi::HandleScope scope(env);
            (*owned)(env, fn);
        });
        if (s != napi_ok) delete heap;
    }

    // Any thread, once: queue the last task (the settlement) and let go of the function.
    void finish(Task task) {
        post(std::move(task));
        release();
    }

    void release() {
        if (tsfn_) {
            tsfn_->Release();
            tsfn_.reset();
        }
    }

private:
    std::optional<Napi::ThreadSafeFunction> tsfn_;
    bool has_callback_ = false;
};

// Sends one progress value to the user's callback (lib/ wraps it so it never throws).
template <typename Payload>
void post_progress(JsTaskQueue & queue, Payload payload, Napi::Value (*to_js)(Napi::Env, const Payload &)) {
    if (!queue.has_callback()) return;
    queue.post([payload = std::move(payload), to_js](Napi::Env env, Napi::Function fn) { fn.Call({to_js(env, payload)}); });
}

}  // namespace sdnode
