// Module entry: registers the native classes and functions. The JS-facing shapes are
// declared once, in lib/binding.ts.
#include <napi.h>

#if defined(_WIN32)
#  define WIN32_LEAN_AND_MEAN
#  define NOMINMAX
#  include <windows.h>
#else
#  include <dlfcn.h>
#endif

#include "abort-flag.h"
#include "addon-state.h"
#include "convert.h"
#include "inspect.h"
#include "js-error.h"
#include "controlnet-wrap.h"
#include "model-wrap.h"
#include "randn.h"
#include "sd.h"
#include "session-wrap.h"

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

// Aborts and joins everything this environment started (lib/ calls it on process 'exit').
Napi::Value Shutdown(const Napi::CallbackInfo & info) {
    AddonState::Get(info.Env()).lifetime->shutdown();
    return info.Env().Undefined();
}

// The engine's option tables (model/options.h): lib/engine-tables.ts is generated from these.
Napi::Value OptionTables(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    const sd::OptionTables t = sd::option_tables();
    Napi::Object o = Napi::Object::New(env);
    o.Set("samplers", to_js_array(env, t.samplers));
    o.Set("schedulers", to_js_array(env, t.schedulers));
    Napi::Object aliases = Napi::Object::New(env);
    for (const auto & [alias, name] : t.scheduler_aliases) aliases.Set(alias, name);
    o.Set("schedulerAliases", aliases);
    o.Set("rngs", to_js_array(env, t.rngs));
    o.Set("weightTypes", to_js_array(env, t.weight_types));
    o.Set("architectures", to_js_array(env, t.architectures));
    o.Set("hiresUpscalers", to_js_array(env, t.hires_upscalers));
    o.Set("decoders", to_js_array(env, t.decoders));
    o.Set("previewModes", to_js_array(env, t.preview_modes));
    o.Set("loraApplyModes", to_js_array(env, t.lora_apply_modes));
    o.Set("predictions", to_js_array(env, t.predictions));
    Napi::Object limits = Napi::Object::New(env);
    for (const auto & l : t.limits) {
        Napi::Object x = Napi::Object::New(env);
        x.Set("min", l.min);
        x.Set("max", l.max);
        x.Set("integer", l.integer);
        if (l.min_exclusive) x.Set("minExclusive", true);
        limits.Set(l.option, x);
    }
    o.Set("limits", limits);
    o.Set("imageSideMultiple", t.image_side_multiple);
    o.Set("promptMaxLength", t.prompt_max_length);
    Napi::Object defaults = Napi::Object::New(env);
    defaults.Set("steps", t.default_steps);
    defaults.Set("cfgScale", t.default_cfg_scale);
    defaults.Set("sampler", t.default_sampler);
    defaults.Set("rng", t.default_rng);
    defaults.Set("strength", t.default_strength);
    defaults.Set("imageCfgScale", t.default_image_cfg_scale);
    defaults.Set("hiresScale", t.default_hires_scale);
    defaults.Set("hiresStrength", t.default_hires_strength);
    defaults.Set("hiresUpscaler", t.default_hires_upscaler);
    defaults.Set("vaeMemoryBudget", t.default_vae_memory_budget);
    defaults.Set("previewInterval", t.default_preview_interval);
    defaults.Set("aestheticScore", t.default_aesthetic_score);
    defaults.Set("negativeAestheticScore", t.default_negative_aesthetic_score);
    o.Set("defaults", defaults);
    Napi::Object arch = Napi::Object::New(env);
    for (const auto & d : t.arch_defaults) {
        Napi::Object x = Napi::Object::New(env);
        x.Set("width", d.image_side);
        x.Set("height", d.image_side);
        x.Set("clipSkip", d.clip_skip);
        x.Set("prediction", sd::prediction_name(d.prediction));
        x.Set("vaeScaleFactor", d.vae_scale_factor);
        arch.Set(sd::arch_name(d.arch), x);
    }
    o.Set("archDefaults", arch);
    Napi::Object samplers = Napi::Object::New(env);
    for (size_t i = 0; i < t.samplers.size(); ++i) {
        Napi::Object x = Napi::Object::New(env);
        x.Set("scheduler", t.sampler_default_schedulers[i]);
        x.Set("eta", t.sampler_default_etas[i]);
        samplers.Set(t.samplers[i], x);
    }
    o.Set("samplerDefaults", samplers);
    return o;
}

// Keeps the addon loaded for the life of the process. Node unloads an addon when the last
// environment that loaded it ends (a worker that was its only user); its dependencies' threads
// (OpenMP's pool, ggml's) and the engine's static state must not lose their code under them.
void pin_addon() {
#if !defined(_WIN32)
    static bool pinned = [] {
        Dl_info self{};
        if (dladdr(reinterpret_cast<void *>(&pin_addon), &self) == 0 || !self.dli_fname) return false;
        return dlopen(self.dli_fname, RTLD_NOW | RTLD_NODELETE | RTLD_NOLOAD) != nullptr;
    }();
    (void)pinned;
#else
    HMODULE self = nullptr;
    GetModuleHandleExW(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS | GET_MODULE_HANDLE_EX_FLAG_PIN,
                       reinterpret_cast<LPCWSTR>(&pin_addon), &self);
#endif
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
    exports.Set("version", Napi::String::New(env, SDNODE_VERSION));
    exports.Set("systemInfo", Napi::Function::New(env, SystemInfo, "systemInfo"));
    exports.Set("inspectModel", Napi::Function::New(env, InspectModel, "inspectModel"));
    exports.Set("inspectLora", Napi::Function::New(env, InspectLora, "inspectLora"));
    exports.Set("randn", Napi::Function::New(env, Randn, "randn"));
    exports.Set("optionTables", Napi::Function::New(env, OptionTables, "optionTables"));
    exports.Set("shutdown", Napi::Function::New(env, Shutdown, "shutdown"));
    exports.Set("externalMemory", Napi::Function::New(
                                      env, [](const Napi::CallbackInfo & info) -> Napi::Value {
                                          return Napi::Number::New(info.Env(), static_cast<double>(ExternalMemory::total().load()));
                                      },
                                      "externalMemory"));
    auto * state = new AddonState();
    Napi::Function abort_flag = AbortFlag::Define(env);
    Napi::Function model = ModelWrap::Define(env);
    Napi::Function session = SessionWrap::Define(env);
    state->abort_flag_ctor = Napi::Persistent(abort_flag);
    state->model_ctor = Napi::Persistent(model);
    state->session_ctor = Napi::Persistent(session);
    Napi::Function controlnet = ControlNetWrap::Define(env);
    state->controlnet_ctor = Napi::Persistent(controlnet);
    exports.Set("NativeControlNet", controlnet);
    exports.Set("canny", Napi::Function::New(env, Canny, "canny"));
    env.SetInstanceData(state);
    // Runs before the environment's objects are finalized (and before Node may unload the addon):
    // every job aborted, every engine thread joined.
    env.AddCleanupHook([lifetime = state->lifetime]() { lifetime->shutdown(); });
    pin_addon();
    exports.Set("AbortFlag", abort_flag);
    exports.Set("NativeModel", model);
    exports.Set("NativeSession", session);
    return exports;
}

}  // namespace sdnode

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return sdnode::Init(env, exports); }
NODE_API_MODULE(sdnode, InitModule)
