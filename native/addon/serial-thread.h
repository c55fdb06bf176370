// One long-lived thread that runs a model's jobs one at a time. Every graph computation of a
// model then happens on the same thread, so the CPU backend's worker team (OpenMP) and its
// per-thread scratch exist once per model, instead of once per libuv pool thread that happened
// to pick a job up (which grew resident memory by ~40 MB per pool thread over the first
// generations).
#pragma once
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <queue>
#include <thread>
#include <type_traits>

namespace sdnode {

class SerialThread {
public:
    SerialThread() : thread_([this] { loop(); }) {}
    ~SerialThread() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        cv_.notify_one();
        // The last owner may let go on this very thread (from inside a job): never join itself.
        if (std::this_thread::get_id() == thread_.get_id()) {
            thread_.detach();
        } else {
            thread_.join();
        }
    }
    SerialThread(const SerialThread &) = delete;
    SerialThread & operator=(const SerialThread &) = delete;

    // Runs `f` on the thread and returns its result (or rethrows what it threw). Blocks the caller.
    template <typename F>
    std::invoke_result_t<F> run(F && f) {
        std::packaged_task<std::invoke_result_t<F>()> task(std::forward<F>(f));
        auto result = task.get_future();
        {
            std::lock_guard<std::mutex> lock(mutex_);
            jobs_.push([&task] { task(); });  // `task` outlives the job: run() waits for it
        }
        cv_.notify_one();
        return result.get();
    }

private:
    void loop() {
        for (;;) {
            std::function<void()> job;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                cv_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
                if (jobs_.empty()) return;  // stopping, nothing left
                job = std::move(jobs_.front());
                jobs_.pop();
            }
            job();
        }
    }

    std::mutex mutex_;
    std::condition_variable cv_;
    std::queue<std::function<void()>> jobs_;
    bool stop_ = false;
    std::thread thread_;  // last: starts once the members above exist
};

}  // namespace sdnode
