#pragma once
#include <napi.h>

namespace sdnode {
// inspectModel(path: string): Promise<NativeModelInfo> (shape in lib/binding.ts)
Napi::Value InspectModel(const Napi::CallbackInfo & info);
// inspectLora(path: string, model?: NativeModel): Promise<NativeLoraInfo>
Napi::Value InspectLora(const Napi::CallbackInfo & info);
}  // namespace sdnode
