#include "model-wrap.h"

#include "abort-flag.h"
#include "addon-state.h"
#include "convert.h"
#include "job.h"

namespace sdnode {

Napi::Function ModelWrap::Define(Napi::Env env) {
    return DefineClass(env, "NativeModel",
                       {
                           StaticMethod<&ModelWrap::Load>("load"),
                           InstanceMethod<&ModelWrap::Info>("info"),
                           InstanceMethod<&ModelWrap::Tokenize>("tokenize"),
                           InstanceMethod<&ModelWrap::CreateSession>("createSession"),
                           InstanceMethod<&ModelWrap::Dispose>("dispose"),
                       });
}

ModelWrap::ModelWrap(const Napi::CallbackInfo & info) : Napi::ObjectWrap<ModelWrap>(info) {
    // Only Load() constructs instances, passing the loaded model as an External.
    if (info.Length() != 1 || !info[0].IsExternal()) {
        throw_invalid_js(info.Env(), "NativeModel cannot be constructed directly; use loadModel()");
    }
    model_ = *info[0].As<Napi::External<std::shared_ptr<const sd::Model>>>().Data();
    // Tell V8 how much native memory this object holds, so GC pressure reflects it.
    memory_.set(info.Env(), static_cast<int64_t>(model_->weight_bytes()));
}

ModelWrap::~ModelWrap() { memory_.close(Env()); }

std::shared_ptr<const sd::Model> ModelWrap::model(Napi::Env env) const {
    if (!model_) throw CapturedError{"Disposed", "the model was disposed", ""}.to_js(env);
    return model_;
}

Napi::Value ModelWrap::Load(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw_invalid_js(env, "path must be a string");
    const std::string path = info[0].As<Napi::String>().Utf8Value();
    Napi::Object opts = options_arg(info, 1);
    return guard(env, [&]() -> Napi::Value {
        sd::ModelLoadOptions options;
        if (auto wtype = optional_string(opts, "weightType")) options.weight_type = sd::parse_weight_type(*wtype);
        options.threads = optional_int(opts, "threads").value_or(sd::default_thread_count());
        options.device = optional_string(opts, "device").value_or("auto");
        options.taesd_path = optional_string(opts, "taesd").value_or("");
        options.vae_path = optional_string(opts, "vae").value_or("");
        options.prediction = optional_string(opts, "prediction");
        options.embeddings_dir = optional_string(opts, "embeddingsDir").value_or("");
        auto abort = AbortFlag::From(info.Length() > 3 ? info[3] : env.Undefined());
        auto queue = std::make_shared<JsTaskQueue>(env, info.Length() > 2 ? info[2] : env.Undefined(), "sdnode.loadModel");
        options.abort = abort.get();
        options.progress = [queue](double f) {
            post_progress<double>(*queue, f, [](Napi::Env e, const double & v) -> Napi::Value { return Napi::Number::New(e, v); });
        };
        return Job<std::shared_ptr<const sd::Model>>::Start(
            env, "sdnode.loadModel", own_thread(env),
            [path, options, abort]() { return sd::Model::load(path, options); },
            [](Napi::Env e, std::shared_ptr<const sd::Model> & model) -> Napi::Value {
                auto ext = Napi::External<std::shared_ptr<const sd::Model>>::New(e, &model);
                return AddonState::Get(e).model_ctor.New({ext});
            },
            {}, queue, abort);
    });
}

Napi::Value ModelWrap::Info(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    const auto m = model(env);
    Napi::Object o = Napi::Object::New(env);
    o.Set("architecture", sd::arch_name(m->arch()));
    o.Set("device", m->device_name());
    o.Set("weightBytes", static_cast<double>(m->weight_bytes()));
    o.Set("mappedBytes", static_cast<double>(m->mapped_weight_bytes()));
    o.Set("threads", m->default_threads());
    o.Set("contextDim", m->info().unet.context_dim);
    o.Set("latentChannels", m->info().unet.in_channels);
    o.Set("prediction", sd::prediction_name(m->info().unet.prediction));
    const sd::NoiseSchedule & ns = m->schedule();
    Napi::Object schedule = Napi::Object::New(env);
    schedule.Set("kind", ns.kind() == sd::NoiseSchedule::Kind::Edm ? "edm" : "discrete");
    schedule.Set("sigmaMin", ns.sigma_min());
    schedule.Set("sigmaMax", ns.sigma_max());
    schedule.Set("fromFile", ns.table_from_file());
    o.Set("noiseSchedule", schedule);
    o.Set("spatialMultiple", m->unet().spatial_multiple() * m->vae().upscale());
    o.Set("unusedTensors", to_js_array(env, m->unused_tensors()));
    o.Set("warnings", to_js_array(env, m->warnings()));
    return o;
}

Napi::Value ModelWrap::Tokenize(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    const auto m = model(env);
    if (info.Length() < 1 || !info[0].IsString()) throw_invalid_js(env, "text must be a string");
    const std::string text = info[0].As<Napi::String>().Utf8Value();
    return guard(env, [&]() -> Napi::Value {
        sd::WeightedTokens t = m->tokenizer().tokenize(text);
        Napi::Object out = Napi::Object::New(env);
        out.Set("tokens", to_js_array(env, t.tokens));
        out.Set("weights", to_js_array(env, t.weights));
        return out;
    });
}

Napi::Value ModelWrap::CreateSession(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    const auto m = model(env);
    return guard(env, [&]() -> Napi::Value {
        auto session = std::make_shared<sd::Session>(m);
        AddonState::Get(env).lifetime->add_session(session);
        auto ext = Napi::External<std::shared_ptr<sd::Session>>::New(env, &session);
        return AddonState::Get(env).session_ctor.New({ext});
    });
}

Napi::Value ModelWrap::Dispose(const Napi::CallbackInfo & info) {
    memory_.close(info.Env());
    model_.reset();  // sessions and running jobs keep their own reference until they end
    return info.Env().Undefined();
}

}  // namespace sdnode
