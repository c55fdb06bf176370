// Per-environment addon data (constructors for instanceof checks), so the addon works in worker
// threads and several environments at once.
#pragma once
#include <napi.h>

#include <memory>

#include "lifetime.h"

namespace sdnode {

struct AddonState {
    Napi::FunctionReference abort_flag_ctor;
    Napi::FunctionReference model_ctor;
    Napi::FunctionReference session_ctor;
    Napi::FunctionReference controlnet_ctor;
    // What this environment started natively, stopped at its teardown.
    std::shared_ptr<Lifetime> lifetime = std::make_shared<Lifetime>();

    static AddonState & Get(Napi::Env env) { return *env.GetInstanceData<AddonState>(); }
};

}  // namespace sdnode
