// NativeModel: one loaded sd::Model (immutable, shared with its sessions). Its sessions
// (NativeSession, session-wrap.h) run the work; the model only answers what needs no run.
#pragma once
#include <napi.h>

#include <memory>

#include "external-memory.h"
#include "sd.h"

namespace sdnode {

class ModelWrap : public Napi::ObjectWrap<ModelWrap> {
public:
    static Napi::Function Define(Napi::Env env);
    explicit ModelWrap(const Napi::CallbackInfo & info);
    ~ModelWrap() override;

    // NativeModel.load(path, options, onProgress?, abortFlag?) -> Promise<NativeModel>
    static Napi::Value Load(const Napi::CallbackInfo & info);

    std::shared_ptr<const sd::Model> model(Napi::Env env) const;  // throws Disposed

private:
    Napi::Value Info(const Napi::CallbackInfo & info);
    Napi::Value Tokenize(const Napi::CallbackInfo & info);
    Napi::Value CreateSession(const Napi::CallbackInfo & info);
    Napi::Value Dispose(const Napi::CallbackInfo & info);

    std::shared_ptr<const sd::Model> model_;
    ExternalMemory memory_;  // the weights
};

}  // namespace sdnode
