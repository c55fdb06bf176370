#include "session-wrap.h"

#include <cmath>

#include "abort-flag.h"
#include "controlnet-wrap.h"
#include "convert.h"
#include "job.h"

namespace sdnode {

namespace {

// Runs a job on the session's thread.
Executor on(std::shared_ptr<sd::Session> session) {
    return [session](std::function<void()> body) { session->submit(std::move(body)); };
}

// generate()'s one callback gets both kinds of events, told apart by `kind`.
Napi::Value step_to_js(Napi::Env env, const sd::StepProgress & p) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("kind", "progress");
    o.Set("step", p.step);
    o.Set("steps", p.steps);
    o.Set("elapsedMs", p.elapsed_ms);
    return o;
}

Napi::Value preview_to_js(Napi::Env env, const sd::StepPreview & p) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("kind", "preview");
    o.Set("step", p.step);
    o.Set("steps", p.steps);
    o.Set("index", p.image);
    o.Set("width", p.width);
    o.Set("height", p.height);
    Napi::Uint8Array data = Napi::Uint8Array::New(env, p.rgb.size());
    std::copy(p.rgb.begin(), p.rgb.end(), data.Data());
    o.Set("data", data);
    return o;
}

// An image option as lib/ passes it: { data: Uint8Array, width, height, channels }, already
// decoded and resized; the engine checks the size and channels.
std::optional<sd::ImageBytes> optional_image(Napi::Object o, const char * key) {
    const Napi::Value v = o.Get(key);
    if (v.IsUndefined()) return std::nullopt;
    const std::string what = std::string(key) + " must be an object { data: Uint8Array, width, height, channels }";
    if (!v.IsObject()) throw_invalid_js(o.Env(), what);
    const Napi::Object img = v.As<Napi::Object>();
    const Napi::Value data = img.Get("data");
    if (!data.IsTypedArray() || data.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) throw_invalid_js(o.Env(), what);
    sd::ImageBytes out;
    const Napi::Uint8Array a = data.As<Napi::Uint8Array>();
    out.pixels.assign(a.Data(), a.Data() + a.ElementLength());
    const auto dim = [&](const char * name) {
        const std::optional<int> d = optional_int(img, name);
        if (!d) throw_invalid_js(o.Env(), what);
        return *d;
    };
    out.width = dim("width");
    out.height = dim("height");
    out.channels = dim("channels");
    return out;
}

// The codec options { decoder?: string, vaeTiling?: boolean | { tileSize?: number, overlap?: number },
// vaeMemoryBudget?: number } (vaeTiling absent: automatic) at
// an object's keys (generate()'s options or encodeImage/decodeLatents'). Types are checked here,
// values by the engine.
sd::CodecParams codec_from(Napi::Object o) {
    Napi::Env env = o.Env();
    sd::CodecParams codec;
    codec.decoder = optional_string(o, "decoder");
    codec.memory_budget = optional_number(o, "vaeMemoryBudget");
    Napi::Value t = o.Get("vaeTiling");
    if (t.IsUndefined()) return codec;
    if (t.IsBoolean()) {
        if (t.As<Napi::Boolean>().Value()) codec.vae_tiling = sd::VaeTilingParams{};
        else codec.vae_tiling_off = true;
        return codec;
    }
    if (!t.IsObject()) throw_invalid_js(env, "vaeTiling must be a boolean or an object");
    Napi::Object to = t.As<Napi::Object>();
    sd::VaeTilingParams tiling;
    Napi::Value size = to.Get("tileSize"), overlap = to.Get("overlap");
    if (!size.IsUndefined()) {
        const double v = size.IsNumber() ? size.As<Napi::Number>().DoubleValue() : NAN;
        if (!(v >= -2147483648.0 && v <= 2147483647.0) || v != static_cast<double>(static_cast<int64_t>(v))) {
            throw_invalid_js(env, "vaeTiling.tileSize must be an integer");
        }
        tiling.tile_size = static_cast<int>(v);
    }
    if (!overlap.IsUndefined()) {
        if (!overlap.IsNumber()) throw_invalid_js(env, "vaeTiling.overlap must be a number");
        tiling.overlap = overlap.As<Napi::Number>().DoubleValue();
    }
    codec.vae_tiling = tiling;
    return codec;
}

// The `loras` array of an options object ([{ path, weight }]); the engine checks the values.
std::vector<sd::LoraRequest> lora_requests(Napi::Object o) {
    Napi::Env env = o.Env();
    std::vector<sd::LoraRequest> out;
    const Napi::Value loras = o.Get("loras");
    if (!loras.IsUndefined()) {
        if (!loras.IsArray()) throw_invalid_js(env, "loras must be an array of { path, weight }");
        const Napi::Array a = loras.As<Napi::Array>();
        if (a.Length() > static_cast<uint32_t>(sd::limits::kLorasMax)) {
            throw_invalid_js(env, "loras must hold at most " + std::to_string(sd::limits::kLorasMax) + " LoRAs");
        }
        for (uint32_t i = 0; i < a.Length(); ++i) {
            const Napi::Value e = a.Get(i);
            const std::string at = "loras[" + std::to_string(i) + "]";
            if (!e.IsObject()) throw_invalid_js(env, at + " must be an object { path, weight }");
            const Napi::Object lo = e.As<Napi::Object>();
            const std::optional<std::string> path = optional_string(lo, "path");
            const std::optional<double> weight = optional_number(lo, "weight");
            if (!path) throw_invalid_js(env, at + ".path must be a string");
            out.push_back({*path, weight.value_or(1.0)});
        }
    }
    return out;
}

// Textual-inversion embeddings as lib/ passes them: [{ path: string, trigger?: string }]
// (undefined: none); the engine checks the files.
std::vector<sd::EmbeddingRef> embeddings_from(Napi::Env env, Napi::Value v) {
    std::vector<sd::EmbeddingRef> out;
    if (v.IsUndefined()) return out;
    const char * what = "embeddings must be an array of { path: string, trigger?: string }";
    if (!v.IsArray()) throw_invalid_js(env, what);
    const Napi::Array a = v.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
        const Napi::Value e = a.Get(i);
        if (!e.IsObject()) throw_invalid_js(env, what);
        const Napi::Object eo = e.As<Napi::Object>();
        const std::optional<std::string> path = optional_string(eo, "path");
        if (!path) throw_invalid_js(env, what);
        out.push_back(sd::EmbeddingRef{*path, optional_string(eo, "trigger").value_or("")});
    }
    return out;
}

// generate()'s options as lib/ passes them: only what the caller gave; the engine fills in and
// checks the rest (model/options.h).
sd::GenerateParams generate_params(Napi::Object o) {
    Napi::Env env = o.Env();
    sd::GenerateParams p;
    p.prompt = optional_string(o, "prompt").value_or("");
    p.negative_prompt = optional_string(o, "negativePrompt").value_or("");
    p.prompt_2 = optional_string(o, "prompt2");
    p.negative_prompt_2 = optional_string(o, "negativePrompt2");
    p.width = optional_int(o, "width");
    p.height = optional_int(o, "height");
    p.steps = optional_int(o, "steps");
    p.clip_skip = optional_int(o, "clipSkip");
    p.batch = optional_int(o, "batchSize");
    p.cfg_scale = optional_number(o, "cfgScale");
    p.eta = optional_number(o, "eta");
    p.sampler = optional_string(o, "sampler");
    p.scheduler = optional_string(o, "scheduler");
    p.rng = optional_string(o, "rng");
    p.sampler_rng = optional_string(o, "samplerRng");
    if (const auto seed = optional_number(o, "seed")) {
        if (!(*seed >= 0 && *seed <= sd::limits::kSeedMax) || *seed != static_cast<double>(static_cast<uint64_t>(*seed))) {
            throw_invalid_js(env, "seed must be a safe non-negative integer");
        }
        p.seed = static_cast<uint64_t>(*seed);
    }
    if (o.Has("sigmas") && !o.Get("sigmas").IsUndefined()) {
        const Napi::Value v = o.Get("sigmas");
        if (!v.IsArray()) throw_invalid_js(env, "sigmas must be an array of numbers");
        const Napi::Array a = v.As<Napi::Array>();
        // Bounded before reading: the engine checks the count against its limits again.
        if (a.Length() > static_cast<uint32_t>(sd::limits::kStepsMax) + 1) {
            throw_invalid_js(env, "sigmas must hold at most " + std::to_string(sd::limits::kStepsMax + 1) + " values");
        }
        std::vector<double> sigmas;
        for (uint32_t i = 0; i < a.Length(); ++i) {
            const Napi::Value e = a.Get(i);
            if (!e.IsNumber()) throw_invalid_js(env, "sigmas[" + std::to_string(i) + "] must be a number");
            sigmas.push_back(e.As<Napi::Number>().DoubleValue());
        }
        p.sigmas = std::move(sigmas);
    }
    p.lms_max_order = optional_int(o, "lmsMaxOrder");
    p.init_image = optional_image(o, "initImage");
    p.mask = optional_image(o, "mask");
    p.strength = optional_number(o, "strength");
    p.image_cfg_scale = optional_number(o, "imageCfgScale");
    // { width, height } / { top, left } pairs; the engine checks the values.
    const auto pair_of = [&](const char * key, const char * a, const char * b) -> std::optional<std::pair<int, int>> {
        const Napi::Value v = o.Get(key);
        if (v.IsUndefined()) return std::nullopt;
        if (!v.IsObject()) throw_invalid_js(env, std::string(key) + " must be an object { " + a + ", " + b + " }");
        const Napi::Object po = v.As<Napi::Object>();
        const std::optional<int> x = optional_int(po, a), y = optional_int(po, b);
        if (!x || !y) throw_invalid_js(env, std::string(key) + " must be an object { " + a + ", " + b + " } of integers");
        return std::pair{*x, *y};
    };
    p.original_size = pair_of("originalSize", "width", "height");
    p.crop_top_left = pair_of("cropTopLeft", "top", "left");
    p.target_size = pair_of("targetSize", "width", "height");
    p.denoise_end = optional_number(o, "denoiseEnd");
    const Napi::Value start = o.Get("startLatent");
    if (!start.IsUndefined()) {
        if (!start.IsTypedArray() || start.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
            throw_invalid_js(env, "startLatent must be a Float32Array");
        }
        const Napi::Float32Array a = start.As<Napi::Float32Array>();
        p.start_latent = std::vector<float>(a.Data(), a.Data() + a.ElementLength());
    }
    p.aesthetic_score = optional_number(o, "aestheticScore");
    p.negative_aesthetic_score = optional_number(o, "negativeAestheticScore");
    const Napi::Value hires = o.Get("hires");
    if (!hires.IsUndefined()) {
        if (!hires.IsObject()) throw_invalid_js(env, "hires must be an object");
        const Napi::Object h = hires.As<Napi::Object>();
        sd::HiresParams hp;
        hp.scale = optional_number(h, "scale");
        hp.width = optional_int(h, "width");
        hp.height = optional_int(h, "height");
        hp.steps = optional_int(h, "steps");
        hp.strength = optional_number(h, "strength");
        hp.upscaler = optional_string(h, "upscaler");
        p.hires = hp;
    }
    p.codec = codec_from(o);
    p.return_latents = o.Get("returnLatents").ToBoolean().Value();
    p.previews = o.Get("previews").ToBoolean().Value();
    p.preview = optional_string(o, "preview");
    p.preview_interval = optional_int(o, "previewInterval");
    p.loras = lora_requests(o);
    p.lora_apply = optional_string(o, "loraApply");
    p.embeddings = embeddings_from(env, o.Get("embeddings"));
    // controlNets: [{ model: NativeControlNet, image, strength?, start?, end?, canny?: { highThreshold,
    // lowThreshold, weak, strong, inverse } }] (lib/ resolves `preprocess` into `canny`).
    const Napi::Value nets = o.Get("controlNets");
    if (!nets.IsUndefined()) {
        if (!nets.IsArray()) throw_invalid_js(env, "controlNets must be an array");
        const Napi::Array a = nets.As<Napi::Array>();
        for (uint32_t i = 0; i < a.Length(); ++i) {
            const std::string name = "controlNets[" + std::to_string(i) + "]";
            const Napi::Value e = a.Get(i);
            if (!e.IsObject()) throw_invalid_js(env, name + " must be an object { model, image, strength?, start?, end? }");
            const Napi::Object co = e.As<Napi::Object>();
            sd::ControlNetUse use;
            use.net = ControlNetWrap::From(env, co.Get("model"), name + ".model");
            const std::optional<sd::ImageBytes> image = optional_image(co, "image");
            if (!image) throw_invalid_js(env, name + ".image is required");
            use.image = *image;
            use.strength = optional_number(co, "strength");
            use.start = optional_number(co, "start");
            use.end = optional_number(co, "end");
            const Napi::Value canny = co.Get("canny");
            if (!canny.IsUndefined()) {
                if (!canny.IsObject()) throw_invalid_js(env, name + ".canny must be an object");
                const Napi::Object k = canny.As<Napi::Object>();
                sd::CannyParams cp;
                cp.high_threshold = optional_number(k, "highThreshold").value_or(cp.high_threshold);
                cp.low_threshold = optional_number(k, "lowThreshold").value_or(cp.low_threshold);
                cp.weak = optional_number(k, "weak").value_or(cp.weak);
                cp.strong = optional_number(k, "strong").value_or(cp.strong);
                cp.inverse = k.Get("inverse").ToBoolean().Value();
                use.canny = cp;
            }
            p.control_nets.push_back(std::move(use));
        }
    }
    return p;
}

Napi::Value resolved_to_js(Napi::Env env, const sd::ResolvedParams & r) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("prompt", r.prompt);
    o.Set("negativePrompt", r.negative_prompt);
    if (r.prompt_2) o.Set("prompt2", *r.prompt_2);
    if (r.negative_prompt_2) o.Set("negativePrompt2", *r.negative_prompt_2);
    o.Set("width", r.width);
    o.Set("height", r.height);
    o.Set("steps", r.steps);
    o.Set("cfgScale", r.cfg_scale);
    o.Set("sampler", r.sampler);
    o.Set("scheduler", r.scheduler);
    o.Set("eta", r.eta);
    o.Set("seed", static_cast<double>(r.seed));
    o.Set("rng", r.rng);
    if (!r.sampler_rng.empty()) o.Set("samplerRng", r.sampler_rng);
    o.Set("clipSkip", r.clip_skip);
    o.Set("batchSize", r.batch);
    Napi::Array sigmas = Napi::Array::New(env, r.sigmas.size());
    for (uint32_t i = 0; i < r.sigmas.size(); ++i) sigmas.Set(i, static_cast<double>(r.sigmas[i]));
    o.Set("sigmas", sigmas);
    o.Set("lmsMaxOrder", r.lms_max_order);
    o.Set("mode", sd::generate_mode_name(r.mode));
    if (r.mode == sd::GenerateMode::Img2Img || r.mode == sd::GenerateMode::Inpaint) o.Set("strength", r.strength);
    if (r.mode == sd::GenerateMode::Edit) o.Set("imageCfgScale", r.image_cfg_scale);
    if (r.hires.enabled) {
        Napi::Object h = Napi::Object::New(env);
        h.Set("width", r.hires.width);
        h.Set("height", r.hires.height);
        h.Set("steps", r.hires.steps);
        h.Set("strength", r.hires.strength);
        h.Set("upscaler", r.hires.upscaler);
        Napi::Array hs = Napi::Array::New(env, r.hires_sigmas.size());
        for (uint32_t i = 0; i < r.hires_sigmas.size(); ++i) hs.Set(i, static_cast<double>(r.hires_sigmas[i]));
        h.Set("sigmas", hs);
        o.Set("hires", h);
    }
    o.Set("returnLatents", r.return_latents);
    o.Set("decoder", r.codec.decoder == sd::Decoder::Taesd ? "taesd" : "vae");
    if (r.size_conditioned) {
        const auto size = [&](std::pair<int, int> v, const char * a, const char * b) {
            Napi::Object so = Napi::Object::New(env);
            so.Set(a, v.first);
            so.Set(b, v.second);
            return so;
        };
        o.Set("originalSize", size(r.original_size, "width", "height"));
        o.Set("cropTopLeft", size(r.crop_top_left, "top", "left"));
        if (!r.aesthetic_conditioned) o.Set("targetSize", size(r.target_size, "width", "height"));
    }
    if (r.denoise_end_steps > 0) o.Set("switchStep", r.denoise_end_steps);
    if (r.aesthetic_conditioned) {
        o.Set("aestheticScore", r.aesthetic_score);
        o.Set("negativeAestheticScore", r.negative_aesthetic_score);
    }
    if (r.previews) {
        o.Set("preview", sd::preview_mode_name(r.preview));
        o.Set("previewInterval", r.preview_interval);
    }
    if (!r.loras.empty()) {
        Napi::Array loras = Napi::Array::New(env, r.loras.size());
        for (uint32_t i = 0; i < r.loras.size(); ++i) {
            Napi::Object lo = Napi::Object::New(env);
            lo.Set("path", r.loras[i].path);
            lo.Set("weight", r.loras[i].weight);
            loras.Set(i, lo);
        }
        o.Set("loras", loras);
        o.Set("loraApply", sd::lora_apply_name(r.lora_apply));
    }
    if (!r.control_nets.empty()) {
        Napi::Array nets = Napi::Array::New(env, r.control_nets.size());
        for (uint32_t i = 0; i < r.control_nets.size(); ++i) {
            const sd::ResolvedControlNet & c = r.control_nets[i];
            Napi::Object co = Napi::Object::New(env);
            co.Set("path", c.path);
            co.Set("strength", c.strength);
            co.Set("start", c.start);
            co.Set("end", c.end);
            if (c.canny) {
                Napi::Object k = Napi::Object::New(env);
                k.Set("type", "canny");
                k.Set("highThreshold", c.canny_params.high_threshold);
                k.Set("lowThreshold", c.canny_params.low_threshold);
                k.Set("weak", c.canny_params.weak);
                k.Set("strong", c.canny_params.strong);
                k.Set("inverse", c.canny_params.inverse);
                co.Set("preprocess", k);
            }
            nets.Set(i, co);
        }
        o.Set("controlNets", nets);
    }
    return o;
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
    t.Set("vaeEncode", r.timings.vae_encode_ms);
    t.Set("sampling", r.timings.sampling_ms);
    t.Set("vaeDecode", r.timings.vae_decode_ms);
    t.Set("total", r.timings.total_ms);
    t.Set("loraApply", r.lora.apply_ms);
    out.Set("timings", t);
    out.Set("warnings", to_js_array(env, r.warnings));
    out.Set("loraBytes", static_cast<double>(r.lora.bytes));
    Napi::Object options = resolved_to_js(env, r.params).As<Napi::Object>();
    options.Set("vaeTiling", r.vae_tiled);
    out.Set("options", options);
    out.Set("latentShape", to_js_array(env, std::vector<int>{r.latent_channels, r.latent_height, r.latent_width}));
    out.Set("imageWidth", r.image_width);
    out.Set("imageHeight", r.image_height);
    return out;
}

struct Encoded {
    sd::PromptEncoding encoding;  // hidden ne {dim, tokens, 1}; pooled (SDXL) ne {1280}
};

struct Closed {};

}  // namespace

Napi::Function SessionWrap::Define(Napi::Env env) {
    return DefineClass(env, "NativeSession",
                       {
                           InstanceMethod<&SessionWrap::Info>("info"),
                           InstanceMethod<&SessionWrap::EncodePrompt>("encodePrompt"),
                           InstanceMethod<&SessionWrap::EncodeImage>("encodeImage"),
                           InstanceMethod<&SessionWrap::DecodeLatents>("decodeLatents"),
                           InstanceMethod<&SessionWrap::Generate>("generate"),
                           InstanceMethod<&SessionWrap::Dispose>("dispose"),
                       });
}

SessionWrap::SessionWrap(const Napi::CallbackInfo & info) : Napi::ObjectWrap<SessionWrap>(info) {
    if (info.Length() != 1 || !info[0].IsExternal()) {
        throw_invalid_js(info.Env(), "NativeSession cannot be constructed directly; use NativeModel.createSession()");
    }
    session_ = *info[0].As<Napi::External<std::shared_ptr<sd::Session>>>().Data();
}

SessionWrap::~SessionWrap() { memory_->close(Env()); }

namespace {

// `to_js` that first reports the session's native memory as the job left it.
template <typename Result>
typename Job<Result>::ToJs reporting(std::shared_ptr<ExternalMemory> memory, std::shared_ptr<sd::Session> s,
                                     typename Job<Result>::ToJs to_js) {
    return [memory = std::move(memory), s = std::move(s), to_js = std::move(to_js)](Napi::Env e, Result & r) {
        memory->set(e, static_cast<int64_t>(s->compute_bytes()));
        return to_js(e, r);
    };
}

}  // namespace

std::shared_ptr<sd::Session> SessionWrap::session(Napi::Env env) const {
    if (!session_) throw CapturedError{"Disposed", "the model was disposed", ""}.to_js(env);
    return session_;
}

Napi::Value SessionWrap::Info(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("computeBytes", static_cast<double>(session(env)->compute_bytes()));
    return o;
}

Napi::Value SessionWrap::EncodePrompt(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    auto s = session(env);
    if (info.Length() < 1 || !info[0].IsString()) {
        throw_invalid_js(env, "encodePrompt(text: string, clipSkip?: number, abort?, embeddings?, { loras, loraApply, prompt2 }?)");
    }
    sd::PromptRequest request;
    request.prompt = info[0].As<Napi::String>().Utf8Value();
    if (info.Length() > 1 && info[1].IsNumber()) request.clip_skip = info[1].As<Napi::Number>().Int32Value();
    auto abort = AbortFlag::From(info.Length() > 2 ? info[2] : env.Undefined());
    request.embeddings = embeddings_from(env, info.Length() > 3 ? info[3] : env.Undefined());
    if (info.Length() > 4 && info[4].IsObject()) {
        const Napi::Object extra = info[4].As<Napi::Object>();
        request.loras = lora_requests(extra);
        request.lora_apply = optional_string(extra, "loraApply");
        request.prompt_2 = optional_string(extra, "prompt2");
    }
    return Job<Encoded>::Start(
        env, "sdnode.encodePrompt", on(s),
        [s, request, abort]() { return Encoded{sd::encode_prompt(*s, request, abort.get())}; },
        reporting<Encoded>(memory_, s, [](Napi::Env e, Encoded & r) -> Napi::Value {
            const sd::HostTensor & hidden = r.encoding.hidden;
            Napi::Object out = Napi::Object::New(e);
            Napi::Float32Array data = Napi::Float32Array::New(e, hidden.data.size());
            std::copy(hidden.data.begin(), hidden.data.end(), data.Data());
            out.Set("data", data);
            out.Set("dim", static_cast<double>(hidden.ne[0]));
            out.Set("tokens", static_cast<double>(hidden.ne[1]));
            Napi::Int32Array ids = Napi::Int32Array::New(e, r.encoding.tokens.size());
            std::copy(r.encoding.tokens.begin(), r.encoding.tokens.end(), ids.Data());
            out.Set("tokenIds", ids);
            if (!r.encoding.pooled.data.empty()) {
                Napi::Float32Array pooled = Napi::Float32Array::New(e, r.encoding.pooled.data.size());
                std::copy(r.encoding.pooled.data.begin(), r.encoding.pooled.data.end(), pooled.Data());
                out.Set("pooled", pooled);
            }
            return out;
        }),
        {info.This().As<Napi::Object>()}, nullptr, abort);
}

// encodeImage(pixels: Uint8Array, width, height, channels, seed: number | undefined, rng: string, abort?)
namespace {

// The codec options at info[i] (undefined: the defaults).
sd::CodecParams codec_arg(const Napi::CallbackInfo & info, size_t i) {
    if (info.Length() <= i || info[i].IsUndefined()) return {};
    if (!info[i].IsObject()) throw_invalid_js(info.Env(), "codec options must be an object");
    return codec_from(info[i].As<Napi::Object>());
}

}  // namespace

Napi::Value SessionWrap::EncodeImage(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    auto s = session(env);
    if (info.Length() < 6 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsNumber() ||
        !info[5].IsString()) {
        throw_invalid_js(env, "encodeImage(pixels: Uint8Array, width, height, channels, seed?, rng)");
    }
    const Napi::Uint8Array a = info[0].As<Napi::Uint8Array>();
    std::vector<uint8_t> pixels(a.Data(), a.Data() + a.ElementLength());
    const int width = info[1].As<Napi::Number>().Int32Value(), height = info[2].As<Napi::Number>().Int32Value();
    const int channels = info[3].As<Napi::Number>().Int32Value();
    std::optional<uint64_t> seed;
    if (info[4].IsNumber()) {
        const double v = info[4].As<Napi::Number>().DoubleValue();
        if (!(v >= 0 && v <= sd::limits::kSeedMax) || v != static_cast<double>(static_cast<uint64_t>(v))) {
            throw_invalid_js(env, "seed must be a safe non-negative integer");
        }
        seed = static_cast<uint64_t>(v);
    }
    const std::string rng = info[5].As<Napi::String>().Utf8Value();
    auto abort = AbortFlag::From(info.Length() > 6 ? info[6] : env.Undefined());
    const sd::CodecParams codec = codec_arg(info, 7);
    struct Latent {
        sd::HostTensor t;
    };
    return Job<Latent>::Start(
        env, "sdnode.encodeImage", on(s),
        [s, pixels = std::move(pixels), width, height, channels, seed, rng, abort, codec]() {
            return Latent{sd::encode_image(*s, pixels, width, height, channels, seed, rng, abort.get(), codec)};
        },
        reporting<Latent>(memory_, s, [](Napi::Env e, Latent & r) -> Napi::Value {
            Napi::Object out = Napi::Object::New(e);
            Napi::Float32Array data = Napi::Float32Array::New(e, r.t.data.size());
            std::copy(r.t.data.begin(), r.t.data.end(), data.Data());
            out.Set("data", data);
            out.Set("width", static_cast<double>(r.t.ne[0]));
            out.Set("height", static_cast<double>(r.t.ne[1]));
            out.Set("channels", static_cast<double>(r.t.ne[2]));
            return out;
        }),
        {info.This().As<Napi::Object>()}, nullptr, abort);
}

// decodeLatents(data: Float32Array, width, height, channels, count, abort?, codec?) -> Uint8Array[] (RGB)
Napi::Value SessionWrap::DecodeLatents(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    auto s = session(env);
    if (info.Length() < 5 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsNumber() ||
        !info[4].IsNumber()) {
        throw_invalid_js(env, "decodeLatents(data: Float32Array, width, height, channels, count)");
    }
    const Napi::Float32Array a = info[0].As<Napi::Float32Array>();
    sd::HostTensor latents;
    for (int d = 0; d < 4; ++d) latents.ne[d] = info[d + 1].As<Napi::Number>().Int64Value();
    if (latents.ne[0] * latents.ne[1] * latents.ne[2] * latents.ne[3] != static_cast<int64_t>(a.ElementLength()) ||
        latents.ne[0] < 1 || latents.ne[1] < 1 || latents.ne[2] < 1 || latents.ne[3] < 1) {
        throw_invalid_js(env, "latents data must hold width * height * channels * count values");
    }
    latents.data.assign(a.Data(), a.Data() + a.ElementLength());
    auto abort = AbortFlag::From(info.Length() > 5 ? info[5] : env.Undefined());
    const sd::CodecParams codec = codec_arg(info, 6);
    struct Images {
        std::vector<std::vector<uint8_t>> rgb;
    };
    return Job<Images>::Start(
        env, "sdnode.decodeLatents", on(s),
        [s, latents = std::move(latents), abort, codec]() { return Images{sd::decode_latents(*s, latents, abort.get(), codec)}; },
        reporting<Images>(memory_, s, [](Napi::Env e, Images & r) -> Napi::Value {
            Napi::Array out = Napi::Array::New(e, r.rgb.size());
            for (uint32_t i = 0; i < r.rgb.size(); ++i) {
                Napi::Uint8Array px = Napi::Uint8Array::New(e, r.rgb[i].size());
                std::copy(r.rgb[i].begin(), r.rgb[i].end(), px.Data());
                out.Set(i, px);
            }
            return out;
        }),
        {info.This().As<Napi::Object>()}, nullptr, abort);
}

Napi::Value SessionWrap::Generate(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    auto s = session(env);
    Napi::Object opts = options_arg(info, 0);
    return guard(env, [&]() -> Napi::Value {
        const sd::GenerateParams params = generate_params(opts);
        sd::resolve_generate_params(s->model(), params);  // before queuing: bad options fail at once
        auto abort = AbortFlag::From(info.Length() > 2 ? info[2] : env.Undefined());
        auto queue = std::make_shared<JsTaskQueue>(env, info.Length() > 1 ? info[1] : env.Undefined(), "sdnode.generate");
        return Job<sd::GenerateOutput>::Start(
            env, "sdnode.generate", on(s),
            [s, params, abort, queue]() {
                sd::RunControl control;
                control.abort = abort.get();
                control.progress = [&queue](const sd::StepProgress & p) { post_progress(*queue, p, step_to_js); };
                control.preview = [&queue](sd::StepPreview && p) { post_progress(*queue, std::move(p), preview_to_js); };
                return sd::generate(*s, params, control);
            },
            reporting<sd::GenerateOutput>(memory_, s, generated_to_js), {info.This().As<Napi::Object>()}, queue, abort);
    });
}

Napi::Value SessionWrap::Dispose(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    if (!session_) {
        auto done = Napi::Promise::Deferred::New(env);
        done.Resolve(env.Undefined());
        return done.Promise();
    }
    // A last job in the queue: it settles once every job before it has, and the session is then
    // released on the main thread (its thread idle, so joining it does not wait).
    std::shared_ptr<sd::Session> s = std::move(session_);
    return Job<Closed>::Start(env, "sdnode.closeSession", on(s), [s]() { return Closed{}; },
                              [memory = memory_](Napi::Env e, Closed &) -> Napi::Value {
                                  memory->close(e);
                                  return e.Undefined();
                              });
}

}  // namespace sdnode
