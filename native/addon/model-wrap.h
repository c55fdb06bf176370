// NativeModel: one loaded sd::Model plus its per-run state. Workers hold shared_ptrs to what
// they use and Ref() the JS object, so dispose() while a job runs only frees once it is done.
#pragma once
#include <napi.h>

#include <memory>
#include <mutex>

#include "runtime/graph-runner.h"
#include "model/model.h"
#include "serial-thread.h"

namespace sdnode {

// Per-run state of a model: the graph runner (compute buffers reserved per shape and reused).
// lib/ queues jobs, so one runs at a time; the mutex guards against misuse anyway.
struct ModelRuntime {
    explicit ModelRuntime(std::shared_ptr<sd::Model> m)
        : model(std::move(m)), runner(model->backend(), model->default_threads()) {}
    std::shared_ptr<sd::Model> model;
    sd::GraphRunner runner;
    std::mutex busy;
    SerialThread compute;  // where every graph of this model runs (see serial-thread.h)
};

// Points the runner at a job's abort flag for the job's duration, whatever way it ends.
class AbortScope {
public:
    AbortScope(sd::GraphRunner & runner, const std::atomic<bool> * flag) : runner_(runner) { runner_.set_abort_flag(flag); }
    ~AbortScope() { runner_.set_abort_flag(nullptr); }
    AbortScope(const AbortScope &) = delete;
    AbortScope & operator=(const AbortScope &) = delete;

private:
    sd::GraphRunner & runner_;
};

class ModelWrap : public Napi::ObjectWrap<ModelWrap> {
public:
    static Napi::Function Define(Napi::Env env);
    explicit ModelWrap(const Napi::CallbackInfo & info);
    ~ModelWrap() override;

    // NativeModel.load(path, options, onProgress?, abortFlag?) -> Promise<NativeModel>
    static Napi::Value Load(const Napi::CallbackInfo & info);

private:
    std::shared_ptr<ModelRuntime> runtime(Napi::Env env) const;  // throws Disposed
    Napi::Value Info(const Napi::CallbackInfo & info);
    Napi::Value Tokenize(const Napi::CallbackInfo & info);
    Napi::Value EncodePrompt(const Napi::CallbackInfo & info);
    Napi::Value Generate(const Napi::CallbackInfo & info);
    Napi::Value Dispose(const Napi::CallbackInfo & info);
    void release_memory(Napi::Env env);

    std::shared_ptr<ModelRuntime> runtime_;
    int64_t reported_bytes_ = 0;
};

}  // namespace sdnode
