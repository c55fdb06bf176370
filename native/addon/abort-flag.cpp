#include "abort-flag.h"

#include "addon-state.h"
#include "js-error.h"

namespace sdnode {

Napi::Function AbortFlag::Define(Napi::Env env) {
    return DefineClass(env, "AbortFlag",
                       {InstanceMethod<&AbortFlag::Abort>("abort"), InstanceAccessor<&AbortFlag::Aborted>("aborted")});
}

AbortFlag::AbortFlag(const Napi::CallbackInfo & info) : Napi::ObjectWrap<AbortFlag>(info) {}

Napi::Value AbortFlag::Abort(const Napi::CallbackInfo & info) {
    flag_->store(true);
    return info.Env().Undefined();
}

Napi::Value AbortFlag::Aborted(const Napi::CallbackInfo & info) { return Napi::Boolean::New(info.Env(), flag_->load()); }

std::shared_ptr<std::atomic<bool>> AbortFlag::From(const Napi::Value & value) {
    if (value.IsUndefined() || value.IsNull()) return std::make_shared<std::atomic<bool>>(false);
    Napi::Env env = value.Env();
    if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(AddonState::Get(env).abort_flag_ctor.Value())) {
        throw CapturedError{"InvalidArgument", "abort flag must be an AbortFlag", ""}.to_js(env);
    }
    return AbortFlag::Unwrap(value.As<Napi::Object>())->flag();
}

}  // namespace sdnode
