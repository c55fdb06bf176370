#include "pipelines/pipeline.h"

#include <algorithm>
#include <chrono>

#include "core/errors.h"
#include "components/text-encoder.h"

namespace sd {

namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

void check_abort(const std::atomic<bool> * abort) {
    if (abort && abort->load()) throw Error(ErrorCode::Aborted, "generation was aborted");
}

// [1, tokens, dim] ×2 → [2, tokens, dim] (same token count only).
HostTensor stack2(const HostTensor & a, const HostTensor & b) {
    HostTensor out;
    out.ne[0] = a.ne[0];
    out.ne[1] = a.ne[1];
    out.ne[2] = a.ne[2] * 2;
    out.data.reserve(a.data.size() * 2);
    out.data.insert(out.data.end(), a.data.begin(), a.data.end());
    out.data.insert(out.data.end(), b.data.begin(), b.data.end());
    return out;
}

}  // namespace

int effective_clip_skip(const Model & model, int clip_skip) {
    const TextEncoderParams & te = model.info().text_encoder;
    int skip = clip_skip > 0 ? clip_skip : default_clip_skip(model.arch());
    // diffusers' SD2.x text encoders ship 23 of OpenCLIP-H's 24 layers (SD2 never uses the last
    // one): their output is already one layer from the end.
    if (te.kind == "openclip-vit-h-14" && te.layers == 23) skip = std::max(1, skip - 1);
    if (skip > te.layers) {
        if (clip_skip > 0) {
            throw_invalid("clipSkip must be from 1 to " + std::to_string(te.layers) + " for this text encoder; received " +
                          std::to_string(clip_skip));
        }
        skip = te.layers;  // the default never asks for more layers than there are
    }
    return skip;
}

HostTensor encode_text(const Model & model, GraphRunner & runner, const std::string & prompt, int clip_skip) {
    return encode_prompt(runner, model.text_encoder(), model.tokenizer().tokenize(prompt), effective_clip_skip(model, clip_skip));
}

void check_generate_params(const Model & model, const GenerateParams & p) {
    const int multiple = model.unet().spatial_multiple() * model.vae().upscale();
    auto side = [&](const char * name, int v) {
        if (v < 64 || v > 4096 || v % multiple != 0) {
            throw_invalid(std::string(name) + " must be a multiple of " + std::to_string(multiple) + " from 64 to 4096; received " +
                          std::to_string(v));
        }
    };
    side("width", p.width);
    side("height", p.height);
    if (p.steps < 1 || p.steps > 1000) throw_invalid("steps must be an integer from 1 to 1000; received " + std::to_string(p.steps));
    if (!std::isfinite(p.cfg_scale) || p.cfg_scale < 0) throw_invalid("cfgScale must be a finite number >= 0");
    if (p.batch < 1 || p.batch > 64) throw_invalid("batchSize must be an integer from 1 to 64; received " + std::to_string(p.batch));
    if (!std::isnan(p.eta) && (!std::isfinite(p.eta) || p.eta < 0)) throw_invalid("eta must be a finite number >= 0");
    const UnetParams & u = model.info().unet;
    if (u.in_channels != model.info().vae.z_channels) {
        throw Error(ErrorCode::UnsupportedModel,
                    "text-to-image needs a UNet with " + std::to_string(model.info().vae.z_channels) + " input channels; this one has " +
                        std::to_string(u.in_channels) + (u.variant.empty() ? "" : " (" + u.variant + ")"));
    }
}

GenerateOutput generate(const Model & model, GraphRunner & runner, const GenerateParams & p, const std::atomic<bool> * abort,
                        const std::function<void(const StepProgress &)> & progress) {
    check_generate_params(model, p);
    const Clock::time_point t0 = Clock::now();
    runner.set_abort_flag(abort);
    GenerateOutput out;
    out.scheduler = p.scheduler ? *p.scheduler : default_scheduler(p.sampler);
    out.eta = std::isnan(p.eta) ? default_eta(p.sampler) : p.eta;

    // Conditioning, once for the whole batch.
    const bool guided = p.cfg_scale != 1.0f;
    HostTensor cond = encode_text(model, runner, p.prompt, p.clip_skip);
    HostTensor uncond;
    if (guided) uncond = encode_text(model, runner, p.negative_prompt, p.clip_skip);
    // cond and uncond share one UNet evaluation when their token counts agree.
    const bool batched = guided && cond.ne[1] == uncond.ne[1];
    HostTensor both;
    if (batched) both = stack2(cond, uncond);
    out.timings.text_encode_ms = ms_since(t0);
    check_abort(abort);

    const DiscreteSchedule schedule;
    const std::vector<float> sigmas = make_sigmas(out.scheduler, p.steps, schedule);
    const Prediction prediction = model.info().unet.prediction;
    const int C = model.info().vae.z_channels;
    const int w = p.width / model.vae().upscale(), h = p.height / model.vae().upscale();
    out.latent_channels = C;
    out.latent_width = w;
    out.latent_height = h;
    const size_t n = static_cast<size_t>(C) * w * h;

    // D(x, sigma): CFG over the UNet's noise prediction, then the eps/v scalings.
    HostTensor x_in;
    x_in.ne[0] = w;
    x_in.ne[1] = h;
    x_in.ne[2] = C;
    const Denoise denoise = [&](const float * x, float sigma, float * denoised) {
        const Scalings s = denoiser_scalings(prediction, sigma);
        const float t = schedule.sigma_to_t(sigma);
        const int batch = batched ? 2 : 1;
        x_in.ne[3] = batch;
        x_in.data.resize(n * batch);
        for (int b = 0; b < batch; ++b)
            for (size_t i = 0; i < n; ++i) x_in.data[b * n + i] = x[i] * s.c_in;
        std::vector<float> eps;
        if (batched) {
            HostTensor o = model.unet().forward(runner, x_in, {t, t}, both);
            eps.resize(n);
            for (size_t i = 0; i < n; ++i) eps[i] = o.data[n + i] + p.cfg_scale * (o.data[i] - o.data[n + i]);
        } else {
            HostTensor oc = model.unet().forward(runner, x_in, {t}, cond);
            eps = std::move(oc.data);
            if (guided) {
                HostTensor ou = model.unet().forward(runner, x_in, {t}, uncond);
                for (size_t i = 0; i < n; ++i) eps[i] = ou.data[i] + p.cfg_scale * (eps[i] - ou.data[i]);
            }
        }
        for (size_t i = 0; i < n; ++i) denoised[i] = eps[i] * s.c_out + x[i] * s.c_skip;
    };

    const int total_steps = p.steps * p.batch;
    for (int b = 0; b < p.batch; ++b) {
        const Clock::time_point ts = Clock::now();
        GeneratedImage img;
        img.seed = p.seed + static_cast<uint64_t>(b);
        // Initial noise and the sampler's ancestral noise come from one generator seeded with
        // the image's seed, continuing after the initial draw (as stable-diffusion.cpp does).
        std::unique_ptr<Rng> rng = make_rng(p.rng, img.seed);
        std::unique_ptr<Rng> sampler_rng;
        if (p.sampler_rng && *p.sampler_rng != p.rng) sampler_rng = make_rng(*p.sampler_rng, img.seed);
        std::vector<float> x(n);
        rng->randn(x.data(), n);
        for (float & v : x) v *= sigmas[0];
        const StepHook hook = [&](int step, int) {
            if (progress) progress(StepProgress{b * p.steps + step, total_steps, ms_since(t0)});
            return !(abort && abort->load());
        };
        sample(p.sampler, denoise, x.data(), n, sigmas, sampler_rng ? sampler_rng.get() : rng.get(), out.eta, hook);
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
        check_abort(abort);
    }
    runner.set_abort_flag(nullptr);
    out.timings.total_ms = ms_since(t0);
    return out;
}

}  // namespace sd
