// NativeControlNet: one loaded sd::ControlNet (immutable, shared by every generation that names
// it, whatever model or session runs it).
#pragma once
#include <napi.h>

#include <memory>

#include "external-memory.h"
#include "sd.h"

namespace sdnode {

// canny(pixels, width, height, channels, { highThreshold?, lowThreshold?, weak?, strong?, inverse? })
// -> Promise<Uint8Array>: the reference's Canny preprocessor on a copy, off the JS thread.
Napi::Value Canny(const Napi::CallbackInfo & info);

class ControlNetWrap : public Napi::ObjectWrap<ControlNetWrap> {
public:
    static Napi::Function Define(Napi::Env env);
    explicit ControlNetWrap(const Napi::CallbackInfo & info);
    ~ControlNetWrap() override;

    // NativeControlNet.load(path, options, onProgress?, abortFlag?) -> Promise<NativeControlNet>
    static Napi::Value Load(const Napi::CallbackInfo & info);

    // The ControlNet behind a JS value; throws InvalidArgument naming `what` for anything else,
    // Disposed for a disposed one.
    static std::shared_ptr<const sd::ControlNet> From(Napi::Env env, Napi::Value v, const std::string & what);

private:
    Napi::Value Info(const Napi::CallbackInfo & info);
    Napi::Value Dispose(const Napi::CallbackInfo & info);

    std::shared_ptr<const sd::ControlNet> net_;
    ExternalMemory memory_;  // the weights
};

}  // namespace sdnode
