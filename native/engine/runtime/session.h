// A session: the per-run state of one model — its own compute backend on the model's device,
// the graph runner (compute buffers reserved per shape and reused) and the thread its jobs run
// on. A Model can serve several sessions (a server on a GPU); one session runs one job at a time,
// in the order they were submitted: that queue is the one thing that serializes runs.
//
// Every graph of a session runs on its thread, so the CPU backend's worker team and per-thread
// scratch exist once per session (a libuv pool thread per job grew resident memory by ~40 MB per
// pool thread), and no caller's thread is held while a job runs.
#pragma once
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <queue>
#include <thread>

#include "ggml-cpp.h"
#include "runtime/graph-runner.h"

namespace sd {

class Model;
class LoraState;

class Session {
public:
    // Starts the session's backend and thread. Throws Internal when the device cannot start a
    // backend.
    explicit Session(std::shared_ptr<const Model> model);
    // stop().
    ~Session();
    Session(const Session &) = delete;
    Session & operator=(const Session &) = delete;

    const Model & model() const { return *model_; }
    // Only from a job (the session's thread).
    GraphRunner & runner() { return *runner_; }
    // The session's LoRAs (adapters/lora.h): parsed files and the active set. Only from a job.
    LoraState & loras() { return *loras_; }
    // Bytes of compute buffers reserved so far and of the active LoRAs' tensors (from any thread).
    size_t compute_bytes() const;

    // Queues `job` to run on the session's thread after every job submitted before it. A job
    // must not throw (it reports its own outcome).
    void submit(std::function<void()> job);

    // Runs the jobs already submitted, then ends the thread and waits for it (unless called on
    // it: then it ends after the current job). Later submissions are dropped unrun. Idempotent.
    void stop();

private:
    void loop();

    std::shared_ptr<const Model> model_;
    ggml_backend_ptr backend_;
    std::unique_ptr<GraphRunner> runner_;
    std::unique_ptr<LoraState> loras_;  // after the runner and backend: its tensors go first
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    std::queue<std::function<void()>> jobs_;
    bool stop_ = false;
    std::mutex join_mutex_;
    size_t compute_bytes_ = 0;  // compute buffers and LoRA tensors, updated after each job, under mutex_
    std::thread thread_;        // last: starts once the members above exist
};

}  // namespace sd
