#pragma once
#include <napi.h>

namespace sdnode {
Napi::Value Randn(const Napi::CallbackInfo & info);
}  // namespace sdnode
