// Module entry: registers the native classes and functions. The JS-facing shapes are
// declared once, in lib/binding.ts.
#include <napi.h>

#include "abort-flag.h"
#include "addon-state.h"
#include "runtime/backend.h"
#include "kernels/cpu-kernels.h"
#include "inspect.h"
#include "js-error.h"
#include "model-wrap.h"
#include "randn.h"

namespace sdnode {

namespace {

Napi::Value SystemInfo(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        sd::SystemInfo si = sd::system_info();
        Napi::Object out = Napi::Object::New(env);
        out.Set("ggmlVersion", si.ggml_version);
        out.Set("ggmlCommit", si.ggml_commit);
        out.Set("dynamicBackends", si.dynamic_backends);
        out.Set("defaultThreads", si.default_threads);
        Napi::Array backends = Napi::Array::New(env, si.backends.size());
        for (size_t i = 0; i < si.backends.size(); ++i) backends.Set(i, si.backends[i]);
        out.Set("backends", backends);
        Napi::Array devices = Napi::Array::New(env, si.devices.size());
        for (size_t i = 0; i < si.devices.size(); ++i) {
            const auto & d = si.devices[i];
            Napi::Object o = Napi::Object::New(env);
            o.Set("name", d.name);
            o.Set("description", d.description);
            o.Set("backend", d.backend);
            o.Set("type", d.type);
            o.Set("memoryTotal", static_cast<double>(d.memory_total));
            o.Set("memoryFree", static_cast<double>(d.memory_free));
            devices.Set(i, o);
        }
        out.Set("devices", devices);
        Napi::Object features = Napi::Object::New(env);
        for (const auto & [k, v] : si.cpu_features) features.Set(k, v);
        out.Set("cpuFeatures", features);
        const sd::CpuKernels k = sd::cpu_kernels_on_cpu();
        Napi::Object kernels = Napi::Object::New(env);
        kernels.Set("f16", k.f16);
        kernels.Set("f32", k.f32);
        kernels.Set("quant", k.quant);
        kernels.Set("activations", k.activations);
        kernels.Set("amx", k.amx);
        out.Set("cpuKernels", kernels);
        return out;
    });
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
    exports.Set("version", Napi::String::New(env, SDNODE_VERSION));
    exports.Set("systemInfo", Napi::Function::New(env, SystemInfo, "systemInfo"));
    exports.Set("inspectModel", Napi::Function::New(env, InspectModel, "inspectModel"));
    exports.Set("randn", Napi::Function::New(env, Randn, "randn"));
    auto * state = new AddonState();
    Napi::Function abort_flag = AbortFlag::Define(env);
    Napi::Function model = ModelWrap::Define(env);
    state->abort_flag_ctor = Napi::Persistent(abort_flag);
    state->model_ctor = Napi::Persistent(model);
    env.SetInstanceData(state);
    exports.Set("AbortFlag", abort_flag);
    exports.Set("NativeModel", model);
    return exports;
}

}  // namespace sdnode

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return sdnode::Init(env, exports); }
NODE_API_MODULE(sdnode, InitModule)
