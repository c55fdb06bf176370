#include "model-wrap.h"

#include "abort-flag.h"
#include "addon-state.h"
#include "runtime/backend.h"
#include "convert.h"
#include "js-error.h"
#include "progress.h"
#include "promise-worker.h"
#include "pipelines/pipeline.h"
#include "components/text-encoder.h"
#include "model/weights.h"

namespace sdnode {

namespace {

Napi::Object options_arg(const Napi::CallbackInfo & info, size_t i) {
    if (info.Length() <= i || !info[i].IsObject()) {
        throw CapturedError{"InvalidArgument", "options must be an object", ""}.to_js(info.Env());
    }
    return info[i].As<Napi::Object>();
}

std::string string_field(Napi::Object o, const char * key, const std::string & fallback) {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined()) return fallback;
    if (!v.IsString()) throw CapturedError{"InvalidArgument", std::string(key) + " must be a string", ""}.to_js(o.Env());
    return v.As<Napi::String>().Utf8Value();
}

int int_field(Napi::Object o, const char * key, int fallback, int min, int max) {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined()) return fallback;
    double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1e300;
    if (d != static_cast<double>(static_cast<int64_t>(d)) || d < min || d > max) {
        throw CapturedError{"InvalidArgument", std::string(key) + " must be an integer from " + std::to_string(min) + " to " +
                                                   std::to_string(max), ""}.to_js(o.Env());
    }
    return static_cast<int>(d);
}

Napi::Value fraction_to_js(Napi::Env env, const double & f) { return Napi::Number::New(env, f); }

}  // namespace

Napi::Function ModelWrap::Define(Napi::Env env) {
    return DefineClass(env, "NativeModel",
                       {
                           StaticMethod<&ModelWrap::Load>("load"),
                           InstanceMethod<&ModelWrap::Info>("info"),
                           InstanceMethod<&ModelWrap::Tokenize>("tokenize"),
                           InstanceMethod<&ModelWrap::EncodePrompt>("encodePrompt"),
                           InstanceMethod<&ModelWrap::Generate>("generate"),
                           InstanceMethod<&ModelWrap::Dispose>("dispose"),
                       });
}

ModelWrap::ModelWrap(const Napi::CallbackInfo & info) : Napi::ObjectWrap<ModelWrap>(info) {
    // Only Load() constructs instances, passing the loaded model as an External.
    if (info.Length() != 1 || !info[0].IsExternal()) {
        throw CapturedError{"InvalidArgument", "NativeModel cannot be constructed directly; use loadModel()", ""}.to_js(info.Env());
    }
    auto * loaded = info[0].As<Napi::External<std::shared_ptr<sd::Model>>>().Data();
    runtime_ = std::make_shared<ModelRuntime>(*loaded);
    // Tell V8 how much native memory this object holds, so GC pressure reflects it.
    reported_bytes_ = static_cast<int64_t>(runtime_->model->weight_bytes());
    Napi::MemoryManagement::AdjustExternalMemory(info.Env(), reported_bytes_);
}

ModelWrap::~ModelWrap() { release_memory(Env()); }

void ModelWrap::release_memory(Napi::Env env) {
    if (reported_bytes_ != 0) {
        Napi::MemoryManagement::AdjustExternalMemory(env, -reported_bytes_);
        reported_bytes_ = 0;
    }
}

std::shared_ptr<ModelRuntime> ModelWrap::runtime(Napi::Env env) const {
    if (!runtime_) throw CapturedError{"Disposed", "the model was disposed", ""}.to_js(env);
    return runtime_;
}

Napi::Value ModelWrap::Load(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw CapturedError{"InvalidArgument", "path must be a string", ""}.to_js(env);
    std::string path = info[0].As<Napi::String>().Utf8Value();
    Napi::Object opts = options_arg(info, 1);
    sd::ModelLoadOptions options;
    std::string wtype = string_field(opts, "weightType", "");
    return guard(env, [&]() -> Napi::Value {
        if (!wtype.empty()) options.weight_type = sd::parse_weight_type(wtype);
        options.threads = int_field(opts, "threads", sd::default_thread_count(), 1, 1024);
        options.device = string_field(opts, "device", "auto");
        auto abort = AbortFlag::From(info.Length() > 3 ? info[3] : env.Undefined());
        auto queue = std::make_shared<JsTaskQueue>(env, info.Length() > 2 ? info[2] : env.Undefined(), "sdnode.loadModel");
        options.abort = abort.get();
        options.progress = [queue](double f) { post_progress(*queue, f, fraction_to_js); };
        return PromiseWorker<std::shared_ptr<sd::Model>>::Start(
            env, "sdnode.loadModel",
            [path, options, abort]() { return std::shared_ptr<sd::Model>(sd::Model::load(path, options)); },
            [](Napi::Env env, std::shared_ptr<sd::Model> & model) -> Napi::Value {
                Napi::External<std::shared_ptr<sd::Model>> ext = Napi::External<std::shared_ptr<sd::Model>>::New(env, &model);
                return AddonState::Get(env).model_ctor.New({ext});
            },
            {}, queue);
    });
}

Napi::Value ModelWrap::Info(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    auto rt = runtime(env);
    const sd::Model & m = *rt->model;
    Napi::Object o = Napi::Object::New(env);
    o.Set("architecture", sd::arch_name(m.arch()));
    o.Set("device", m.device_name());
    o.Set("weightBytes", static_cast<double>(m.weight_bytes()));
    o.Set("mappedBytes", static_cast<double>(m.mapped_weight_bytes()));
    o.Set("computeBytes", static_cast<double>(rt->runner.compute_buffer_bytes()));
    o.Set("threads", m.default_threads());
    o.Set("contextDim", m.info().unet.context_dim);
    o.Set("latentChannels", m.info().unet.in_channels);
    o.Set("prediction", m.info().unet.prediction == sd::Prediction::V ? "v" : "eps");
    o.Set("spatialMultiple", m.unet().spatial_multiple() * m.vae().upscale());
    return o;
}

Napi::Value ModelWrap::Tokenize(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    auto rt = runtime(env);
    if (info.Length() < 1 || !info[0].IsString()) throw CapturedError{"InvalidArgument", "text must be a string", ""}.to_js(env);
    std::string text = info[0].As<Napi::String>().Utf8Value();
    return guard(env, [&]() -> Napi::Value {
        sd::WeightedTokens t = rt->model->tokenizer().tokenize(text);
        Napi::Object out = Napi::Object::New(env);
        out.Set("tokens", to_js_array(env, t.tokens));
        out.Set("weights", to_js_array(env, t.weights));
        return out;
    });
}

namespace {
struct Encoded {
    sd::HostTensor hidden;  // ne {dim, tokens, 1}
};
}  // namespace

Napi::Value ModelWrap::EncodePrompt(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    auto rt = runtime(env);
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) {
        throw CapturedError{"InvalidArgument", "encodePrompt(text: string, clipSkip: number)", ""}.to_js(env);
    }
    std::string text = info[0].As<Napi::String>().Utf8Value();
    int clip_skip = info[1].As<Napi::Number>().Int32Value();
    auto abort = AbortFlag::From(info.Length() > 2 ? info[2] : env.Undefined());
    return PromiseWorker<Encoded>::Start(
        env, "sdnode.encodePrompt",
        [rt, text, clip_skip, abort]() {
            std::lock_guard<std::mutex> lock(rt->busy);
            AbortScope scope(rt->runner, abort.get());
            return rt->compute.run([&] { return Encoded{sd::encode_text(*rt->model, rt->runner, text, clip_skip)}; });
        },
        [](Napi::Env env, Encoded & e) -> Napi::Value {
            Napi::Object out = Napi::Object::New(env);
            Napi::Float32Array data = Napi::Float32Array::New(env, e.hidden.data.size());
            std::copy(e.hidden.data.begin(), e.hidden.data.end(), data.Data());
            out.Set("data", data);
            out.Set("dim", static_cast<double>(e.hidden.ne[0]));
            out.Set("tokens", static_cast<double>(e.hidden.ne[1]));
            return out;
        },
        {info.This().As<Napi::Object>()});
}

namespace {

Napi::Value step_to_js(Napi::Env env, const sd::StepProgress & p) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("step", p.step);
    o.Set("steps", p.steps);
    o.Set("elapsedMs", p.elapsed_ms);
    return o;
}

// Reads generate()'s resolved options (lib/generate.ts fills every field).
sd::GenerateParams generate_params(Napi::Object o) {
    Napi::Env env = o.Env();
    auto str = [&](const char * k) {
        Napi::Value v = o.Get(k);
        if (!v.IsString()) throw CapturedError{"InvalidArgument", std::string(k) + " must be a string", ""}.to_js(env);
        return v.As<Napi::String>().Utf8Value();
    };
    auto num = [&](const char * k) {
        Napi::Value v = o.Get(k);
        if (!v.IsNumber()) throw CapturedError{"InvalidArgument", std::string(k) + " must be a number", ""}.to_js(env);
        return v.As<Napi::Number>().DoubleValue();
    };
    sd::GenerateParams p;
    p.prompt = str("prompt");
    p.negative_prompt = str("negativePrompt");
    p.width = static_cast<int>(num("width"));
    p.height = static_cast<int>(num("height"));
    p.steps = static_cast<int>(num("steps"));
    p.cfg_scale = static_cast<float>(num("cfgScale"));
    p.sampler = sd::parse_sampler(str("sampler"));
    const std::string scheduler = str("scheduler");
    if (!scheduler.empty()) p.scheduler = sd::parse_scheduler(scheduler);
    const double seed = num("seed");
    if (!(seed >= 0 && seed <= 9007199254740991.0)) throw CapturedError{"InvalidArgument", "seed must be a safe non-negative integer", ""}.to_js(env);
    p.seed = static_cast<uint64_t>(seed);
    p.rng = sd::parse_rng_kind(str("rng"));
    const std::string sampler_rng = str("samplerRng");
    if (!sampler_rng.empty()) p.sampler_rng = sd::parse_rng_kind(sampler_rng);
    p.clip_skip = static_cast<int>(num("clipSkip"));
    p.batch = static_cast<int>(num("batchSize"));
    p.eta = static_cast<float>(num("eta"));
    p.return_latents = o.Get("returnLatents").ToBoolean().Value();
    return p;
}

Napi::Value generated_to_js(Napi::Env env, sd::GenerateOutput & r) {
    Napi::Object out = Napi::Object::New(env);
    Napi::Array images = Napi::Array::New(env, r.images.size());
    Napi::Array latents = Napi::Array::New(env, r.images.size());
    for (size_t i = 0; i < r.images.size(); ++i) {
        auto & img = r.images[i];
        Napi::Object o = Napi::Object::New(env);
        Napi::Uint8Array data = Napi::Uint8Array::New(env, img.rgb.size());
        std::copy(img.rgb.begin(), img.rgb.end(), data.Data());
        o.Set("data", data);
        o.Set("seed", static_cast<double>(img.seed));
        images.Set(static_cast<uint32_t>(i), o);
        if (!img.latent.empty()) {
            Napi::Float32Array lat = Napi::Float32Array::New(env, img.latent.size());
            std::copy(img.latent.begin(), img.latent.end(), lat.Data());
            latents.Set(static_cast<uint32_t>(i), lat);
        }
    }
    out.Set("images", images);
    out.Set("latents", latents);
    Napi::Object t = Napi::Object::New(env);
    t.Set("textEncode", r.timings.text_encode_ms);
    t.Set("sampling", r.timings.sampling_ms);
    t.Set("vaeDecode", r.timings.vae_decode_ms);
    t.Set("total", r.timings.total_ms);
    out.Set("timings", t);
    out.Set("scheduler", sd::scheduler_name(r.scheduler));
    out.Set("eta", r.eta);
    out.Set("latentShape", to_js_array(env, std::vector<int>{r.latent_channels, r.latent_height, r.latent_width}));
    return out;
}

}  // namespace

Napi::Value ModelWrap::Generate(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    auto rt = runtime(env);
    Napi::Object opts = options_arg(info, 0);
    return guard(env, [&]() -> Napi::Value {
        sd::GenerateParams params = generate_params(opts);
        sd::check_generate_params(*rt->model, params);  // before queuing: bad options fail fast
        auto abort = AbortFlag::From(info.Length() > 2 ? info[2] : env.Undefined());
        auto queue = std::make_shared<JsTaskQueue>(env, info.Length() > 1 ? info[1] : env.Undefined(), "sdnode.generate");
        return PromiseWorker<sd::GenerateOutput>::Start(
            env, "sdnode.generate",
            [rt, params, abort, queue]() {
                std::lock_guard<std::mutex> lock(rt->busy);
                AbortScope scope(rt->runner, abort.get());
                return rt->compute.run([&] {
                    return sd::generate(*rt->model, rt->runner, params, abort.get(),
                                        [&queue](const sd::StepProgress & p) { post_progress(*queue, p, step_to_js); });
                });
            },
            generated_to_js, {info.This().As<Napi::Object>()}, queue);
    });
}

Napi::Value ModelWrap::Dispose(const Napi::CallbackInfo & info) {
    release_memory(info.Env());
    runtime_.reset();  // running workers keep their own reference until they finish
    return info.Env().Undefined();
}

}  // namespace sdnode
