// Text-to-image: encode -> sample -> decode, the whole loop native, as stable-diffusion.cpp runs it.
//
//   cond, uncond = text_encoder(prompt), text_encoder(negative prompt)      [1, tokens, dim]
//   for image i (seed + i):
//     x     = sample_latent(denoiser, randn(seed + i) * sigmas[0], sigmas)  [1, C, h, w]
//     image = vae.decode(x)                                                [1, 3, 8h, 8w]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <random>

#include "diffusion/denoiser.h"
#include "pipelines/conditioning.h"
#include "pipelines/sampling.h"
#include "sd.h"

namespace sd {

namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

void check_abort(const std::atomic<bool> * abort) {
    if (abort && abort->load()) throw Error(ErrorCode::Aborted, "generation was aborted");
}

int int_in(const char * name, std::optional<int> v, int fallback, int min, int max) {
    const int x = v.value_or(fallback);
    if (x < min || x > max) {
        throw_invalid(std::string(name) + " must be an integer from " + std::to_string(min) + " to " + std::to_string(max) +
                      "; received " + std::to_string(x));
    }
    return x;
}

std::string number_text(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

float number_in(const char * name, std::optional<double> v, double fallback, double min, double max) {
    const double x = v.value_or(fallback);
    if (!std::isfinite(x) || x < min || x > max) {
        throw_invalid(std::string(name) + " must be a finite number from " + number_text(min) + " to " + number_text(max) +
                      "; received " + number_text(x));
    }
    return static_cast<float>(x);
}

void check_prompt(const char * name, const std::string & s) {
    if (s.find('\0') != std::string::npos) throw_invalid(std::string(name) + " must be a string without NUL characters");
    if (utf16_length(s) > static_cast<size_t>(limits::kPromptMaxLength)) {
        throw_invalid(std::string(name) + " must be a string of at most " + std::to_string(limits::kPromptMaxLength) + " characters");
    }
}

}  // namespace

ResolvedParams resolve_generate_params(const Model & model, const GenerateParams & p) {
    using namespace limits;
    ResolvedParams r;
    check_prompt("prompt", p.prompt);
    check_prompt("negativePrompt", p.negative_prompt);
    r.prompt = p.prompt;
    r.negative_prompt = p.negative_prompt;
    const int side = arch_defaults(model.arch()).image_side;
    const int multiple = model.unet().spatial_multiple() * model.vae().upscale();
    auto image_side = [&](const char * name, std::optional<int> v) {
        const int x = v.value_or(side);
        if (x < kImageSideMin || x > kImageSideMax || x % multiple != 0) {
            throw_invalid(std::string(name) + " must be a multiple of " + std::to_string(multiple) + " from " +
                          std::to_string(kImageSideMin) + " to " + std::to_string(kImageSideMax) + "; received " + std::to_string(x));
        }
        return x;
    };
    r.width = image_side("width", p.width);
    r.height = image_side("height", p.height);
    r.steps = int_in("steps", p.steps, kDefaultSteps, kStepsMin, kStepsMax);
    r.batch = int_in("batchSize", p.batch, 1, kBatchMin, kBatchMax);
    r.cfg_scale = number_in("cfgScale", p.cfg_scale, kDefaultCfgScale, kCfgScaleMin, kCfgScaleMax);
    const Sampler sampler = p.sampler ? parse_sampler(*p.sampler) : kDefaultSampler;
    r.sampler = sampler_name(sampler);
    r.scheduler = scheduler_name(p.scheduler ? parse_scheduler(*p.scheduler) : default_scheduler(sampler));
    r.eta = number_in("eta", p.eta, default_eta(sampler), kEtaMin, kEtaMax);
    r.lms_max_order = int_in("lmsMaxOrder", p.lms_max_order, SamplerParams{}.lms_max_order, kLmsMaxOrderMin, kLmsMaxOrderMax);
    if (p.sigmas) {
        const std::vector<double> & s = *p.sigmas;
        const int n = static_cast<int>(s.size()) - 1;
        if (n < kStepsMin || n > kStepsMax) {
            throw_invalid("sigmas must hold from " + std::to_string(kStepsMin + 1) + " to " + std::to_string(kStepsMax + 1) +
                          " values (steps + 1); received " + std::to_string(s.size()));
        }
        if (p.steps && *p.steps != n) {
            throw_invalid("steps must be sigmas.length - 1 (" + std::to_string(n) + ") when sigmas are given; received " +
                          std::to_string(*p.steps));
        }
        for (size_t i = 0; i < s.size(); ++i) {
            const bool last = i + 1 == s.size();
            if (!std::isfinite(s[i]) || (last ? s[i] < kSigmaMin : s[i] <= kSigmaMin) || s[i] > kSigmaMax) {
                throw_invalid("sigmas[" + std::to_string(i) + "] must be a finite number " + (last ? "from 0" : "above 0") +
                              " to " + number_text(kSigmaMax) + " (only the last may be 0); received " + number_text(s[i]));
            }
            r.sigmas.push_back(static_cast<float>(s[i]));
        }
        r.steps = n;
    } else {
        r.sigmas = make_sigmas(parse_scheduler(r.scheduler), r.steps, DiscreteSchedule());
        r.steps = static_cast<int>(r.sigmas.size()) - 1;  // beta drops repeated timesteps
    }
    r.rng = rng_kind_name(parse_rng_kind(p.rng.value_or(kDefaultRng)));
    r.sampler_rng = p.sampler_rng ? rng_kind_name(parse_rng_kind(*p.sampler_rng)) : "";
    if (p.clip_skip) int_in("clipSkip", p.clip_skip, 0, kClipSkipMin, kClipSkipMax);
    effective_clip_skip(model, p.clip_skip);  // throws for more layers than the encoder has
    r.clip_skip = p.clip_skip.value_or(arch_defaults(model.arch()).clip_skip);
    if (p.seed) {
        if (static_cast<double>(*p.seed) > kSeedMax) throw_invalid("seed must be a safe integer (negative for a random seed)");
        r.seed = *p.seed;
    } else {
        static std::mutex mutex;  // one random_device for all threads
        static std::random_device device;
        std::lock_guard<std::mutex> lock(mutex);
        r.seed = device() & 0x7fffffffu;
    }
    // In integers: as doubles, (2^53 - 1) + 2 - 1 rounds back to 2^53 - 1.
    constexpr uint64_t kSeedMaxInt = static_cast<uint64_t>(kSeedMax);
    if (r.seed > kSeedMaxInt - static_cast<uint64_t>(r.batch - 1)) {
        throw_invalid("seed must be small enough that seed + batchSize - 1 is a safe integer; received seed " +
                      std::to_string(r.seed) + " with batchSize " + std::to_string(r.batch));
    }
    r.return_latents = p.return_latents;
    const UnetParams & u = model.info().unet;
    if (u.in_channels != model.info().vae.z_channels) {
        throw Error(ErrorCode::UnsupportedModel,
                    "text-to-image needs a UNet with " + std::to_string(model.info().vae.z_channels) + " input channels; this one has " +
                        std::to_string(u.in_channels) + (u.variant.empty() ? "" : " (" + u.variant + ")"));
    }
    return r;
}

HostTensor encode_prompt(Session & session, const std::string & prompt, std::optional<int> clip_skip,
                         const std::atomic<bool> * abort) {
    check_prompt("text", prompt);
    if (clip_skip) int_in("clipSkip", clip_skip, 0, limits::kClipSkipMin, limits::kClipSkipMax);
    GraphRunner & runner = session.runner();
    const ScopedAbort scoped(runner, abort);
    const Model & model = session.model();
    model.check_files_unchanged();
    return encode_conditioning(model, runner, prompt, effective_clip_skip(model, clip_skip)).context;
}

GenerateOutput generate(Session & session, const GenerateParams & params, const RunControl & control) {
    const Model & model = session.model();
    GenerateOutput out;
    out.params = resolve_generate_params(model, params);
    model.check_files_unchanged();
    const ResolvedParams & p = out.params;
    const Clock::time_point t0 = Clock::now();
    GraphRunner & runner = session.runner();
    const ScopedAbort scoped(runner, control.abort);

    // Conditioning, once for the whole batch.
    const bool guided = p.cfg_scale != 1.0f;
    const int clip_skip = effective_clip_skip(model, params.clip_skip);
    const Conditioning cond = encode_conditioning(model, runner, p.prompt, clip_skip);
    Conditioning uncond;
    if (guided) uncond = encode_conditioning(model, runner, p.negative_prompt, clip_skip);
    out.timings.text_encode_ms = ms_since(t0);
    check_abort(control.abort);

    const DiscreteSchedule schedule;
    SamplingPlan plan;
    plan.sampler = parse_sampler(p.sampler);
    plan.sigmas = p.sigmas;
    plan.eta = p.eta;
    plan.params.lms_max_order = p.lms_max_order;
    const int C = model.info().vae.z_channels;
    const int w = p.width / model.vae().upscale(), h = p.height / model.vae().upscale();
    out.latent_channels = C;
    out.latent_width = w;
    out.latent_height = h;
    const size_t n = static_cast<size_t>(C) * w * h;

    DenoiserInputs di;
    di.unet = &model.unet();
    di.runner = &runner;
    di.prediction = model.info().unet.prediction;
    di.schedule = &schedule;
    di.cond = &cond;
    di.uncond = guided ? &uncond : nullptr;
    di.cfg_scale = p.cfg_scale;
    Denoiser denoiser(di, w, h, C);
    const Denoise denoise = [&](const float * x, float sigma, float * denoised, float * uncond) {
        denoiser(x, sigma, denoised, uncond);
    };

    const RngKind rng_kind = parse_rng_kind(p.rng);
    const int total_steps = p.steps * p.batch;
    for (int b = 0; b < p.batch; ++b) {
        const Clock::time_point ts = Clock::now();
        GeneratedImage img;
        img.seed = p.seed + static_cast<uint64_t>(b);
        std::unique_ptr<Rng> rng = make_rng(rng_kind, img.seed);
        std::unique_ptr<Rng> sampler_rng;
        if (!p.sampler_rng.empty() && p.sampler_rng != p.rng) sampler_rng = make_rng(parse_rng_kind(p.sampler_rng), img.seed);
        const StepHook hook = [&](int step, int) {
            if (control.progress) control.progress(StepProgress{b * p.steps + step, total_steps, ms_since(t0)});
            return !(control.abort && control.abort->load());
        };
        std::vector<float> x = sample_latent(plan, denoise, n, {}, *rng, sampler_rng.get(), hook);
        out.timings.sampling_ms += ms_since(ts);

        const Clock::time_point tv = Clock::now();
        HostTensor latent;
        latent.ne[0] = w;
        latent.ne[1] = h;
        latent.ne[2] = C;
        latent.ne[3] = 1;
        latent.data = x;
        img.rgb = image_to_rgb8(model.vae().decode(runner, latent));
        if (p.return_latents) img.latent = std::move(x);
        out.timings.vae_decode_ms += ms_since(tv);
        out.images.push_back(std::move(img));
        check_abort(control.abort);
    }
    out.timings.total_ms = ms_since(t0);
    return out;
}

}  // namespace sd
