// inspectModel(path): open, canonicalize and detect on a worker thread; report what was found.
#include "inspect.h"

#include "convert.h"
#include "job.h"
#include "model-wrap.h"
#include "sd.h"

namespace sdnode {

namespace {


Napi::Value unet_to_js(Napi::Env env, const sd::UnetParams & u) {
    if (!u.present) return env.Null();
    Napi::Object o = Napi::Object::New(env);
    o.Set("inChannels", u.in_channels);
    o.Set("outChannels", u.out_channels);
    o.Set("modelChannels", u.model_channels);
    o.Set("channelMult", to_js_array(env, u.channel_mult));
    o.Set("numResBlocks", to_js_array(env, u.num_res_blocks));
    o.Set("transformerDepth", to_js_array(env, u.transformer_depth));
    o.Set("transformerDepthMiddle", u.transformer_depth_middle);
    o.Set("hasMiddleBlock", u.has_middle_block);
    o.Set("contextDim", u.context_dim);
    o.Set("numHeads", u.num_heads);
    o.Set("numHeadChannels", u.num_head_channels);
    o.Set("useLinearProjection", u.use_linear_projection);
    o.Set("admInChannels", u.adm_in_channels);
    o.Set("timeEmbedDim", u.time_embed_dim);
    o.Set("prediction", sd::prediction_name(u.prediction));
    o.Set("variant", u.variant);
    return o;
}

Napi::Value vae_to_js(Napi::Env env, const sd::VaeParams & v) {
    if (!v.present) return env.Null();
    Napi::Object o = Napi::Object::New(env);
    o.Set("hasEncoder", v.has_encoder);
    o.Set("hasDecoder", v.has_decoder);
    o.Set("ch", v.ch);
    o.Set("channelMult", to_js_array(env, v.channel_mult));
    o.Set("numResBlocks", v.num_res_blocks);
    o.Set("zChannels", v.z_channels);
    o.Set("inChannels", v.in_channels);
    o.Set("scaleFactor", v.scale_factor);
    return o;
}

Napi::Value te_to_js(Napi::Env env, const sd::TextEncoderParams & t) {
    if (!t.present) return env.Null();
    Napi::Object o = Napi::Object::New(env);
    o.Set("kind", t.kind);
    o.Set("width", t.width);
    o.Set("layers", t.layers);
    o.Set("heads", t.heads);
    o.Set("intermediate", t.intermediate);
    o.Set("vocab", t.vocab);
    o.Set("maxPositions", t.max_positions);
    o.Set("projectionDim", t.projection_dim);
    o.Set("activation", t.activation);
    return o;
}

Napi::Value inspection_to_js(Napi::Env env, sd::ModelReport & r) {
    const sd::ModelInfo & info = r.info;
    Napi::Object o = Napi::Object::New(env);
    o.Set("format", r.format);
    o.Set("architecture", sd::arch_name(info.arch));
    std::vector<std::string> components;
    if (info.unet.present) components.push_back("unet");
    if (info.vae.present) components.push_back("vae");
    if (info.text_encoder.present) components.push_back("textEncoder");
    if (info.text_encoder_2.present) components.push_back("textEncoder2");
    o.Set("components", to_js_array(env, components));
    Napi::Object params = Napi::Object::New(env);
    params.Set("unet", static_cast<double>(info.parameters.unet));
    params.Set("vae", static_cast<double>(info.parameters.vae));
    params.Set("textEncoder", static_cast<double>(info.parameters.text_encoder));
    params.Set("textEncoder2", static_cast<double>(info.parameters.text_encoder_2));
    o.Set("parameters", params);
    Napi::Object dtypes = Napi::Object::New(env);
    for (const auto & [k, n] : info.dtypes) dtypes.Set(k, static_cast<double>(n));
    o.Set("dtypes", dtypes);
    o.Set("unet", unet_to_js(env, info.unet));
    o.Set("vae", vae_to_js(env, info.vae));
    o.Set("textEncoder", te_to_js(env, info.text_encoder));
    o.Set("textEncoder2", te_to_js(env, info.text_encoder_2));
    o.Set("tensorCount", static_cast<double>(r.tensor_count));
    o.Set("unknownTensors", to_js_array(env, r.unknown_tensors));
    o.Set("unusedTensors", to_js_array(env, r.unused_tensors));
    o.Set("ignoredTensors", static_cast<double>(r.ignored_tensors));
    Napi::Object meta = Napi::Object::New(env);
    for (const auto & [k, v] : r.metadata) meta.Set(k, v);
    o.Set("metadata", meta);
    o.Set("warnings", to_js_array(env, info.warnings));
    return o;
}

Napi::Value lora_report_to_js(Napi::Env env, sd::LoraReport & r) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("path", r.path);
    o.Set("format", r.format);
    o.Set("naming", r.naming);
    o.Set("kinds", to_js_array(env, r.kinds));
    Napi::Object rank = Napi::Object::New(env);
    rank.Set("min", r.rank_min);
    rank.Set("max", r.rank_max);
    o.Set("rank", rank);
    o.Set("tensorCount", static_cast<double>(r.tensor_count));
    Napi::Array targets = Napi::Array::New(env, r.targets.size());
    for (uint32_t i = 0; i < r.targets.size(); ++i) {
        const auto & t = r.targets[i];
        Napi::Object to = Napi::Object::New(env);
        to.Set("key", t.key);
        to.Set("component", t.component);
        to.Set("target", t.target);
        to.Set("kind", t.kind);
        to.Set("rank", t.rank);
        if (!t.shape.empty()) {
            std::vector<double> shape(t.shape.begin(), t.shape.end());
            to.Set("shape", to_js_array(env, shape));
        }
        targets.Set(i, to);
    }
    o.Set("targets", targets);
    Napi::Array ignored = Napi::Array::New(env, r.ignored.size());
    for (uint32_t i = 0; i < r.ignored.size(); ++i) {
        Napi::Object io = Napi::Object::New(env);
        io.Set("tensor", r.ignored[i].first);
        io.Set("reason", r.ignored[i].second);
        ignored.Set(i, io);
    }
    o.Set("ignored", ignored);
    Napi::Object meta = Napi::Object::New(env);
    for (const auto & [k, v] : r.metadata) meta.Set(k, v);
    o.Set("metadata", meta);
    return o;
}

}  // namespace

Napi::Value InspectLora(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) {
        throw CapturedError{"InvalidArgument", "inspectLora: path must be a string", ""}.to_js(env);
    }
    std::string path = info[0].As<Napi::String>().Utf8Value();
    std::shared_ptr<const sd::Model> model;
    if (info.Length() > 1 && info[1].IsObject()) model = ModelWrap::Unwrap(info[1].As<Napi::Object>())->model(env);
    return Job<sd::LoraReport>::Start(env, "sdnode.inspectLora", own_thread(env),
                                      [path, model]() { return sd::inspect_lora(path, model.get()); }, lora_report_to_js);
}

Napi::Value InspectModel(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) {
        throw CapturedError{"InvalidArgument", "inspectModel: path must be a string", ""}.to_js(env);
    }
    std::string path = info[0].As<Napi::String>().Utf8Value();
    return Job<sd::ModelReport>::Start(env, "sdnode.inspectModel", own_thread(env), [path]() { return sd::inspect_model(path); },
                                       inspection_to_js);
}

}  // namespace sdnode
