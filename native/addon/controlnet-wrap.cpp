#include "controlnet-wrap.h"

#include "abort-flag.h"
#include "addon-state.h"
#include "convert.h"
#include "job.h"

namespace sdnode {

Napi::Function ControlNetWrap::Define(Napi::Env env) {
    return DefineClass(env, "NativeControlNet",
                       {
                           StaticMethod<&ControlNetWrap::Load>("load"),
                           InstanceMethod<&ControlNetWrap::Info>("info"),
                           InstanceMethod<&ControlNetWrap::Dispose>("dispose"),
                       });
}

ControlNetWrap::ControlNetWrap(const Napi::CallbackInfo & info) : Napi::ObjectWrap<ControlNetWrap>(info) {
    if (info.Length() != 1 || !info[0].IsExternal()) {
        throw_invalid_js(info.Env(), "NativeControlNet cannot be constructed directly; use loadControlNet()");
    }
    net_ = *info[0].As<Napi::External<std::shared_ptr<const sd::ControlNet>>>().Data();
    // Native memory held, as NativeModel reports it, so GC pressure reflects it.
    memory_.set(info.Env(), static_cast<int64_t>(net_->weight_bytes()));
}

ControlNetWrap::~ControlNetWrap() { memory_.close(Env()); }

std::shared_ptr<const sd::ControlNet> ControlNetWrap::From(Napi::Env env, Napi::Value v, const std::string & what) {
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(AddonState::Get(env).controlnet_ctor.Value())) {
        throw_invalid_js(env, what + " must be a ControlNet from loadControlNet()");
    }
    ControlNetWrap * w = ControlNetWrap::Unwrap(v.As<Napi::Object>());
    if (!w->net_) throw CapturedError{"Disposed", what + ": the ControlNet was disposed", ""}.to_js(env);
    return w->net_;
}

Napi::Value ControlNetWrap::Load(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw_invalid_js(env, "path must be a string");
    const std::string path = info[0].As<Napi::String>().Utf8Value();
    Napi::Object opts = options_arg(info, 1);
    return guard(env, [&]() -> Napi::Value {
        sd::ControlNetLoadOptions options;
        if (auto wtype = optional_string(opts, "weightType")) options.weight_type = sd::parse_weight_type(*wtype);
        options.threads = optional_int(opts, "threads").value_or(sd::default_thread_count());
        options.device = optional_string(opts, "device").value_or("auto");
        auto abort = AbortFlag::From(info.Length() > 3 ? info[3] : env.Undefined());
        auto queue = std::make_shared<JsTaskQueue>(env, info.Length() > 2 ? info[2] : env.Undefined(), "sdnode.loadControlNet");
        options.abort = abort.get();
        options.progress = [queue](double f) {
            post_progress<double>(*queue, f, [](Napi::Env e, const double & v) -> Napi::Value { return Napi::Number::New(e, v); });
        };
        return Job<std::shared_ptr<const sd::ControlNet>>::Start(
            env, "sdnode.loadControlNet", own_thread(env),
            [path, options, abort]() { return sd::ControlNet::load(path, options); },
            [](Napi::Env e, std::shared_ptr<const sd::ControlNet> & net) -> Napi::Value {
                auto ext = Napi::External<std::shared_ptr<const sd::ControlNet>>::New(e, &net);
                return AddonState::Get(e).controlnet_ctor.New({ext});
            },
            {}, queue, abort);
    });
}

Napi::Value ControlNetWrap::Info(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (!net_) throw CapturedError{"Disposed", "the ControlNet was disposed", ""}.to_js(env);
    const sd::UnetParams & p = net_->params();
    Napi::Object o = Napi::Object::New(env);
    o.Set("path", net_->path());
    o.Set("architecture", net_->family());
    o.Set("device", ggml_backend_dev_name(net_->device()));
    o.Set("weightBytes", static_cast<double>(net_->weight_bytes()));
    o.Set("mappedBytes", static_cast<double>(net_->mapped_weight_bytes()));
    o.Set("contextDim", p.context_dim);
    o.Set("modelChannels", p.model_channels);
    o.Set("latentChannels", p.in_channels);
    o.Set("hintChannels", net_->hint_channels());
    o.Set("controlCount", net_->control_count());
    o.Set("unusedTensors", to_js_array(env, net_->unused_tensors()));
    o.Set("warnings", to_js_array(env, net_->warnings()));
    return o;
}

Napi::Value ControlNetWrap::Dispose(const Napi::CallbackInfo & info) {
    memory_.close(info.Env());
    net_.reset();  // running generations keep their own reference until they end
    return info.Env().Undefined();
}

Napi::Value Canny(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 5 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
        !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsNumber() || !info[4].IsObject()) {
        throw_invalid_js(env, "canny(pixels: Uint8Array, width, height, channels, options)");
    }
    const Napi::Uint8Array a = info[0].As<Napi::Uint8Array>();
    auto pixels = std::make_shared<std::vector<uint8_t>>(a.Data(), a.Data() + a.ElementLength());
    const int width = info[1].As<Napi::Number>().Int32Value(), height = info[2].As<Napi::Number>().Int32Value();
    const int channels = info[3].As<Napi::Number>().Int32Value();
    const Napi::Object k = info[4].As<Napi::Object>();
    return guard(env, [&]() -> Napi::Value {
        sd::CannyParams cp;
        cp.high_threshold = optional_number(k, "highThreshold").value_or(cp.high_threshold);
        cp.low_threshold = optional_number(k, "lowThreshold").value_or(cp.low_threshold);
        cp.weak = optional_number(k, "weak").value_or(cp.weak);
        cp.strong = optional_number(k, "strong").value_or(cp.strong);
        cp.inverse = k.Get("inverse").ToBoolean().Value();
        return Job<std::shared_ptr<std::vector<uint8_t>>>::Start(
            env, "sdnode.canny", own_thread(env),
            [pixels, width, height, channels, cp]() {
                sd::preprocess_canny(*pixels, width, height, channels, cp);
                return pixels;
            },
            [](Napi::Env e, std::shared_ptr<std::vector<uint8_t>> & out) -> Napi::Value {
                Napi::Uint8Array data = Napi::Uint8Array::New(e, out->size());
                std::copy(out->begin(), out->end(), data.Data());
                return data;
            });
    });
}

}  // namespace sdnode
