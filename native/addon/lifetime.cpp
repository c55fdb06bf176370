#include "lifetime.h"

#include <algorithm>

#include "sd.h"

namespace sdnode {

uint64_t Lifetime::add_job(Flag abort) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!abort) return 0;
    // Started while the environment goes away: aborted before it runs.
    if (shutting_down_) abort->store(true);
    const uint64_t key = next_key_++;
    jobs_.emplace(key, std::move(abort));
    return key;
}

void Lifetime::remove_job(uint64_t key) {
    if (key == 0) return;
    std::lock_guard<std::mutex> lock(mutex_);
    jobs_.erase(key);
}

void Lifetime::add_session(const std::shared_ptr<sd::Session> & session) {
    std::lock_guard<std::mutex> lock(mutex_);
    // Forget sessions already gone, so a long-lived process does not grow the list.
    sessions_.erase(std::remove_if(sessions_.begin(), sessions_.end(),
                                   [](const std::weak_ptr<sd::Session> & s) { return s.expired(); }),
                    sessions_.end());
    sessions_.push_back(session);
}

void Lifetime::reap_locked() {
    for (auto it = threads_.begin(); it != threads_.end();) {
        if (it->done->load()) {
            it->thread.join();  // past its body: returns at once
            it = threads_.erase(it);
        } else {
            ++it;
        }
    }
}

bool Lifetime::spawn(std::function<void()> body) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (shutting_down_) return false;
    reap_locked();
    OwnThread & t = threads_.emplace_back();
    t.thread = std::thread([body = std::move(body), done = t.done]() mutable {
        body();
        body = nullptr;  // its captures go before the thread is marked done
        done->store(true);
    });
    return true;
}

void Lifetime::shutdown() {
    std::vector<std::shared_ptr<sd::Session>> sessions;
    std::list<OwnThread> threads;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        shutting_down_ = true;
        for (auto & [key, flag] : jobs_) flag->store(true);
        for (auto & w : sessions_) {
            if (auto s = w.lock()) sessions.push_back(std::move(s));
        }
        sessions_.clear();
        threads.swap(threads_);
    }
    // Queued jobs run now and, their flags raised, end at once; a session's thread then stops.
    for (auto & s : sessions) s->stop();
    for (auto & t : threads) {
        if (t.thread.joinable()) t.thread.join();
    }
}

}  // namespace sdnode
