// Per-environment addon data (constructors for instanceof checks), so the addon works in worker
// threads and several environments at once.
#pragma once
#include <napi.h>

namespace sdnode {

struct AddonState {
    Napi::FunctionReference abort_flag_ctor;
    Napi::FunctionReference model_ctor;
    Napi::FunctionReference session_ctor;

    static AddonState & Get(Napi::Env env) { return *env.GetInstanceData<AddonState>(); }
};

}  // namespace sdnode
