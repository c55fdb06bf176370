// NativeSession: one sd::Session of a model — the run's thread and compute buffers. generate()
// and encodePrompt() queue jobs on the session's thread (in call order: the one queue that
// serializes runs) and return promises; dispose() settles once every queued job has.
#pragma once
#include <napi.h>

#include <memory>

#include "external-memory.h"
#include "sd.h"

namespace sdnode {

class SessionWrap : public Napi::ObjectWrap<SessionWrap> {
public:
    static Napi::Function Define(Napi::Env env);
    // Only NativeModel.createSession() constructs sessions (passing the session as an External).
    explicit SessionWrap(const Napi::CallbackInfo & info);
    ~SessionWrap() override;

private:
    std::shared_ptr<sd::Session> session(Napi::Env env) const;  // throws Disposed
    Napi::Value Info(const Napi::CallbackInfo & info);
    Napi::Value EncodePrompt(const Napi::CallbackInfo & info);
    Napi::Value EncodeImage(const Napi::CallbackInfo & info);
    Napi::Value DecodeLatents(const Napi::CallbackInfo & info);
    Napi::Value Generate(const Napi::CallbackInfo & info);
    Napi::Value Dispose(const Napi::CallbackInfo & info);

    std::shared_ptr<sd::Session> session_;
    // The session's compute buffers and LoRA tensors, reported after each job that settles (the
    // engine measures them when a job ends); taken back at dispose() and finalization.
    std::shared_ptr<ExternalMemory> memory_ = std::make_shared<ExternalMemory>();
};

}  // namespace sdnode
