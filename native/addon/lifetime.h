// Lifetime: everything native one JS environment (the main thread or a worker) has started, so
// that the environment's teardown (a worker terminated, the process exiting) aborts it and waits
// for it. Nothing of the addon runs after its environment is gone: Node unloads the addon once
// the last environment that loaded it ends, and a thread still in its code would then crash.
//
// Jobs register their abort flags while they run; sessions and the threads of loads and
// inspections are registered when they start. shutdown() (the environment's cleanup hook, on its
// JS thread; for the main thread's process.exit() and uncaught exceptions, which tear nothing
// down, lib/ calls it from process's 'exit' event, before any static object is destroyed)
// raises every flag, then joins every thread.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace sd {
class Session;
}

namespace sdnode {

class Lifetime {
public:
    using Flag = std::shared_ptr<std::atomic<bool>>;

    Lifetime() = default;
    Lifetime(const Lifetime &) = delete;
    Lifetime & operator=(const Lifetime &) = delete;

    // A running or queued job's abort flag, raised at shutdown; returns a key for remove_job.
    // Any thread.
    uint64_t add_job(Flag abort);
    void remove_job(uint64_t key);

    // A session, stopped (its thread joined) at shutdown.
    void add_session(const std::shared_ptr<sd::Session> & session);

    // Runs `body` on a thread of its own, joined at shutdown (or reaped once done). After
    // shutdown began, `body` runs nowhere and false is returned.
    bool spawn(std::function<void()> body);

    bool shutting_down() const { return shutting_down_.load(); }

    // Raises every registered flag, stops every session and joins every thread. JS thread only.
    void shutdown();

private:
    struct OwnThread {
        std::thread thread;
        std::shared_ptr<std::atomic<bool>> done = std::make_shared<std::atomic<bool>>(false);
    };
    void reap_locked();

    std::mutex mutex_;
    std::atomic<bool> shutting_down_{false};
    uint64_t next_key_ = 1;
    std::map<uint64_t, Flag> jobs_;
    std::vector<std::weak_ptr<sd::Session>> sessions_;
    std::list<OwnThread> threads_;
};

}  // namespace sdnode
