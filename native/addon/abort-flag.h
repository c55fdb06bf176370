// AbortFlag: a JS object holding a shared atomic flag. lib/ raises it from an AbortSignal's
// "abort" event; native work checks it between steps and inside graph computation.
#pragma once
#include <napi.h>

#include <atomic>
#include <memory>

namespace sdnode {

class AbortFlag : public Napi::ObjectWrap<AbortFlag> {
public:
    static Napi::Function Define(Napi::Env env);
    explicit AbortFlag(const Napi::CallbackInfo & info);

    std::shared_ptr<std::atomic<bool>> flag() const { return flag_; }
    // The flag of an AbortFlag argument, or a fresh never-raised one for undefined.
    static std::shared_ptr<std::atomic<bool>> From(const Napi::Value & value);

private:
    Napi::Value Abort(const Napi::CallbackInfo & info);
    Napi::Value Aborted(const Napi::CallbackInfo & info);

    std::shared_ptr<std::atomic<bool>> flag_ = std::make_shared<std::atomic<bool>>(false);
};

}  // namespace sdnode
