#include "runtime/session.h"

#include "adapters/lora.h"
#include "core/errors.h"
#include "model/model.h"

namespace sd {

Session::Session(std::shared_ptr<const Model> model) : model_(std::move(model)) {
    if (!model_) throw Error(ErrorCode::Internal, "a session needs a model");
    backend_.reset(ggml_backend_dev_init(model_->device(), nullptr));
    if (!backend_) throw Error(ErrorCode::Internal, "cannot start a backend on " + model_->device_name());
    runner_ = std::make_unique<GraphRunner>(backend_.get(), model_->default_threads());
    loras_ = std::make_unique<LoraState>();
    thread_ = std::thread([this] { loop(); });
}

Session::~Session() { stop(); }

void Session::stop() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    cv_.notify_one();
    std::lock_guard<std::mutex> lock(join_mutex_);
    if (!thread_.joinable()) return;
    // The last owner may let go on this very thread (from inside a job): never join itself.
    if (std::this_thread::get_id() == thread_.get_id()) {
        thread_.detach();
    } else {
        thread_.join();
    }
}

size_t Session::compute_bytes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return compute_bytes_;
}

void Session::submit(std::function<void()> job) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stop_) return;  // stopped: nothing runs it (the addon stops sessions only at teardown)
        jobs_.push(std::move(job));
    }
    cv_.notify_one();
}

void Session::loop() {
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
        const size_t bytes = runner_->compute_buffer_bytes() + loras_->bytes();
        std::lock_guard<std::mutex> lock(mutex_);
        compute_bytes_ = bytes;
    }
}

}  // namespace sd
