// Every mode's generation: encode -> sample -> decode, the whole loop native, as
// stable-diffusion.cpp runs it.
//
//   cond, uncond = text_encoder(prompt), text_encoder(negative prompt)       [1, tokens, dim]
//   with an init image (one generator seeded with the seed, draws in this order):
//     init    = vae.encode(image)                                   img2img, inpainting
//     concat  = [mask, vae.encode(image, masked to gray)]           inpainting UNets (9 channels)
//             = mean of vae.encode(image) / scale_factor            instruct-pix2pix UNets (8 channels)
//     sigmas  = sigmas[steps - t_enc - 1 ..], t_enc = int(steps * strength) (< steps)
//   for image i (seed + i):
//     x      = sample_latent(denoiser, init + randn(seed + i) * sigmas[0], sigmas)   [1, C, h, w]
//              (with a mask, each step's denoised = denoised * mask + init * (1 - mask))
//     hires: x = upscale(x); x = sample_latent(.., x + randn(seed + i) * hires_sigmas[0], hires_sigmas)
//     image  = vae.decode(x)                                                        [1, 3, 8h, 8w]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <mutex>
#include <random>

#include "diffusion/denoiser.h"
#include "pipelines/conditioning.h"
#include "pipelines/image-tensors.h"
#include "pipelines/preview.h"
#include "pipelines/resample.h"
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

// A second text (bigG's) only for the models that have bigG.
void check_prompt_2(const Model & model, const char * name, const std::optional<std::string> & s) {
    if (!s) return;
    check_prompt(name, *s);
    if (!model.pooled_encoder()) {
        throw_invalid(std::string(name) + " is the text for SDXL's second text encoder (OpenCLIP bigG); this " + arch_name(model.arch()) +
                      " model has one text encoder");
    }
}

}  // namespace

namespace {

// A number in (min, max]: strengths and scales, where 0 would mean "do nothing".
float number_above(const char * name, std::optional<double> v, double fallback, double min, double max) {
    const double x = v.value_or(fallback);
    if (!std::isfinite(x) || x <= min || x > max) {
        throw_invalid(std::string(name) + " must be a finite number above " + number_text(min) + ", at most " + number_text(max) +
                      "; received " + number_text(x));
    }
    return static_cast<float>(x);
}

// stable-diffusion.cpp's img2img truncation: the last t_enc + 1 sigmas of the `asked`-step schedule,
// t_enc = int(asked * strength), at most asked - 1 (and at least one step is kept).
std::vector<float> truncate_schedule(const std::vector<float> & sigmas, int asked, float strength) {
    size_t t_enc = static_cast<size_t>(static_cast<float>(asked) * strength);
    if (t_enc >= static_cast<size_t>(asked)) t_enc = static_cast<size_t>(asked) - 1;
    size_t start = static_cast<size_t>(asked) - t_enc - 1;
    start = std::min(start, sigmas.size() - 2);
    return std::vector<float>(sigmas.begin() + static_cast<std::ptrdiff_t>(start), sigmas.end());
}

// The largest schedule the hires fix may build to keep `steps` after truncation by its strength.
constexpr int kHiresScheduleStepsMax = 100000;

// Rounds up to a multiple (the reference aligns computed sizes up).
int align_up(int v, int multiple) { return (v + multiple - 1) / multiple * multiple; }

bool is_inpaint_unet(const Model & m) { return m.info().unet.in_channels == 2 * m.info().vae.z_channels + 1; }
bool is_edit_unet(const Model & m) { return m.info().unet.in_channels == 2 * m.info().vae.z_channels; }

}  // namespace

const char * generate_mode_name(GenerateMode mode) {
    switch (mode) {
        case GenerateMode::Txt2Img: return "txt2img";
        case GenerateMode::Img2Img: return "img2img";
        case GenerateMode::Inpaint: return "inpaint";
        case GenerateMode::Edit: return "edit";
    }
    return "txt2img";
}

namespace {

// The LoRAs of a request, checked, without the weight-0 ones (no LoRA at all).
std::vector<LoraRequest> check_loras(const GenerateParams & p) {
    using namespace limits;
    if (p.loras.size() > static_cast<size_t>(kLorasMax)) {
        throw_invalid("loras must hold at most " + std::to_string(kLorasMax) + " LoRAs; received " + std::to_string(p.loras.size()));
    }
    std::vector<LoraRequest> out;
    for (size_t i = 0; i < p.loras.size(); ++i) {
        const LoraRequest & l = p.loras[i];
        const std::string at = "loras[" + std::to_string(i) + "]";
        if (l.path.empty() || l.path.find('\0') != std::string::npos) throw_invalid(at + ".path must be a non-empty file path");
        number_in((at + ".weight").c_str(), l.weight, 1.0, kLoraWeightMin, kLoraWeightMax);
        if (l.weight != 0.0) out.push_back(l);
    }
    if (p.lora_apply) parse_lora_apply(*p.lora_apply);
    return out;
}

// The Align Your Steps table for the model's family (as the reference picks it); SD2.x has none.
AysModel ays_model(Arch arch) {
    if (arch == Arch::SD2) throw_invalid("the ays scheduler has noise levels for SD1.x and SDXL only, not SD2.x; choose another scheduler");
    return is_sdxl_family(arch) ? AysModel::Sdxl : AysModel::Sd1;
}

}  // namespace

ResolvedParams resolve_generate_params(const Model & model, const GenerateParams & p) {
    using namespace limits;
    ResolvedParams r;
    check_prompt("prompt", p.prompt);
    check_prompt("negativePrompt", p.negative_prompt);
    check_prompt_2(model, "prompt2", p.prompt_2);
    check_prompt_2(model, "negativePrompt2", p.negative_prompt_2);
    r.prompt = p.prompt;
    r.negative_prompt = p.negative_prompt;
    r.prompt_2 = p.prompt_2;
    r.negative_prompt_2 = p.negative_prompt_2;
    const UnetParams & u = model.info().unet;
    const int zc = model.info().vae.z_channels;
    const bool inpaint_unet = is_inpaint_unet(model), edit_unet = is_edit_unet(model);
    if (u.in_channels != zc && !inpaint_unet && !edit_unet) {
        throw Error(ErrorCode::UnsupportedModel,
                    "this UNet takes " + std::to_string(u.in_channels) + " input channels" + (u.variant.empty() ? "" : " (" + u.variant + ")") +
                        "; sdnode runs " + std::to_string(zc) + " (text-to-image), " + std::to_string(2 * zc + 1) +
                        " (inpainting) and " + std::to_string(2 * zc) + " (instruct-pix2pix)");
    }
    const int side = arch_defaults(model.arch()).image_side;
    const int multiple = model.unet().spatial_multiple() * model.vae().upscale();
    auto image_side = [&](const std::string & name, std::optional<int> v) {
        const int x = v.value_or(side);
        if (x < kImageSideMin || x > kImageSideMax || x % multiple != 0) {
            throw_invalid(name + " must be a multiple of " + std::to_string(multiple) + " from " + std::to_string(kImageSideMin) +
                          " to " + std::to_string(kImageSideMax) + "; received " + std::to_string(x));
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
    const Scheduler scheduler = p.scheduler ? parse_scheduler(*p.scheduler) : default_scheduler(sampler, model.schedule().kind());
    r.scheduler = scheduler_name(scheduler);
    const AysModel ays = scheduler == Scheduler::Ays ? ays_model(model.arch()) : AysModel::Sd1;
    r.eta = number_in("eta", p.eta, default_eta(sampler), kEtaMin, kEtaMax);
    r.lms_max_order = int_in("lmsMaxOrder", p.lms_max_order, SamplerParams{}.lms_max_order, kLmsMaxOrderMin, kLmsMaxOrderMax);
    int asked_steps = r.steps;  // what the schedule was asked for (img2img truncates from it, as the reference)
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
        r.steps = asked_steps = n;
    } else {
        r.sigmas = make_sigmas(scheduler, r.steps, model.schedule(), ays);
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
    r.codec = resolve_codec(model, p.codec);
    r.previews = p.previews;
    const bool taesd_decodes = model.taesd() && model.taesd()->can_decode();
    r.preview = p.preview ? parse_preview_mode(*p.preview) : taesd_decodes ? PreviewMode::Taesd : PreviewMode::Proj;
    if (r.preview == PreviewMode::Taesd && !model.taesd()) {
        throw_invalid("preview 'taesd' needs a TAESD: pass `taesd` (the file's path) to loadModel");
    }
    if (r.preview == PreviewMode::Taesd && !model.taesd()->can_decode()) {
        throw Error(ErrorCode::UnsupportedModel, "preview 'taesd': this TAESD file has no decoder (decoder.layers.*)");
    }
    if (r.preview == PreviewMode::Proj && !has_latent_rgb_projection(model.arch())) {
        throw Error(ErrorCode::UnsupportedModel, std::string("preview 'proj': no latent-to-RGB projection is known for ") + arch_name(model.arch()));
    }
    r.preview_interval = int_in("previewInterval", p.preview_interval, kDefaultPreviewInterval, kPreviewIntervalMin, kPreviewIntervalMax);
    r.loras = check_loras(p);
    r.lora_apply = resolve_lora_apply(model, p.lora_apply ? parse_lora_apply(*p.lora_apply) : LoraApply::Auto);

    // Image inputs and what they mean for this UNet.
    if (p.init_image) {
        check_image_bytes("initImage", *p.init_image, r.width, r.height, false);
        if (!model.vae().can_encode()) throw Error(ErrorCode::UnsupportedModel, "initImage needs a VAE encoder; this model's VAE has none");
    }
    if (p.mask) {
        if (!p.init_image) throw_invalid("mask needs an initImage (the image to inpaint)");
        if (edit_unet) throw_invalid("mask does not apply to instruct-pix2pix models");
        check_image_bytes("mask", *p.mask, r.width, r.height, true);
        r.has_mask = true;
    }
    if (p.strength) {
        if (!p.init_image) throw_invalid("strength needs an initImage");
        if (edit_unet) throw_invalid("strength does not apply to instruct-pix2pix models (sampling starts from noise; initImage is the image to edit)");
    }
    if (p.image_cfg_scale && !edit_unet) throw_invalid("imageCfgScale applies to instruct-pix2pix models only");
    const bool refiner = model.arch() == Arch::SDXLRefiner;
    r.size_conditioned = is_sdxl_family(model.arch());
    r.aesthetic_conditioned = refiner;
    for (const auto & [name, v] : {std::pair{"originalSize", &p.original_size}, std::pair{"cropTopLeft", &p.crop_top_left},
                                   std::pair{"targetSize", &p.target_size}}) {
        if (!*v) continue;
        if (!r.size_conditioned) throw_invalid(std::string(name) + " applies to SDXL models only (their UNet's size conditioning)");
        if (refiner && v == &p.target_size) throw_invalid("targetSize does not apply to the SDXL refiner (its UNet takes an aesthetic score instead)");
        for (int x : {(*v)->first, (*v)->second}) {
            if (x < kSizeConditioningMin || x > kSizeConditioningMax) {
                throw_invalid(std::string(name) + " values must be integers from " + std::to_string(kSizeConditioningMin) + " to " +
                              std::to_string(kSizeConditioningMax) + "; received " + std::to_string(x));
            }
        }
    }
    for (const auto & [name, v] : {std::pair{"aestheticScore", &p.aesthetic_score}, std::pair{"negativeAestheticScore", &p.negative_aesthetic_score}}) {
        if (*v && !refiner) throw_invalid(std::string(name) + " applies to the SDXL refiner only (its UNet's aesthetic-score conditioning)");
    }
    if (refiner) {
        r.aesthetic_score = number_in("aestheticScore", p.aesthetic_score, kDefaultAestheticScore, kAestheticScoreMin, kAestheticScoreMax);
        r.negative_aesthetic_score = number_in("negativeAestheticScore", p.negative_aesthetic_score, kDefaultNegativeAestheticScore,
                                               kAestheticScoreMin, kAestheticScoreMax);
    }
    if (r.size_conditioned) {
        r.original_size = p.original_size.value_or(std::pair{r.width, r.height});
        r.crop_top_left = p.crop_top_left.value_or(std::pair{0, 0});
        r.target_size = p.target_size.value_or(std::pair{r.width, r.height});
    }
    r.mode = edit_unet ? GenerateMode::Edit : r.has_mask ? GenerateMode::Inpaint : p.init_image ? GenerateMode::Img2Img : GenerateMode::Txt2Img;
    if (edit_unet) {
        r.image_cfg_scale = number_in("imageCfgScale", p.image_cfg_scale, kDefaultImageCfgScale, kImageCfgScaleMin, kImageCfgScaleMax);
    }
    if (p.init_image && !edit_unet) {
        r.strength = number_above("strength", p.strength, kDefaultStrength, kStrengthMin, kStrengthMax);
        if (r.strength < 1.0f) r.sigmas = truncate_schedule(r.sigmas, asked_steps, r.strength);
    }

    if (p.start_latent) {
        if (!p.sigmas) throw_invalid("startLatent needs the custom sigmas it was noised to (sigmas)");
        if (p.init_image || p.mask || p.hires || inpaint_unet || edit_unet) {
            throw_invalid("startLatent does not go with initImage, mask, hires or inpainting / instruct-pix2pix models");
        }
        const size_t per = static_cast<size_t>(model.info().vae.z_channels) * (r.width / model.vae().upscale()) * (r.height / model.vae().upscale());
        if (p.start_latent->size() != per * r.batch) {
            throw_invalid("startLatent must hold batchSize latents of " + std::to_string(per) + " values; received " +
                          std::to_string(p.start_latent->size()));
        }
    }
    if (p.denoise_end) {
        const double e = *p.denoise_end;
        if (!std::isfinite(e) || e <= kDenoiseEndMin || e >= kDenoiseEndMax) {
            throw_invalid("refiner.switchAt must be a number above 0 and below 1; received " + number_text(e));
        }
        if (p.hires) throw_invalid("a refiner hand-off does not go with hires");
        if (p.mask || edit_unet) throw_invalid("a refiner hand-off does not go with inpainting or instruct-pix2pix");
        const int n = static_cast<int>(r.sigmas.size()) - 1;
        if (n < 2) throw_invalid("a refiner hand-off needs at least 2 sampling steps; this schedule has " + std::to_string(n));
        r.denoise_end_steps = std::clamp(static_cast<int>(std::lround(n * e)), 1, n - 1);
    }

    if (p.hires) {
        const HiresParams & h = *p.hires;
        if (inpaint_unet || edit_unet) throw_invalid("hires is not supported with inpainting or instruct-pix2pix models");
        ResolvedHires & o = r.hires;
        o.enabled = true;
        o.upscaler = hires_upscaler_name(h.upscaler ? parse_hires_upscaler(*h.upscaler) : kDefaultHiresUpscaler);
        o.strength = number_above("hires.strength", h.strength, kDefaultHiresStrength, kStrengthMin, kStrengthMax);
        o.steps = int_in("hires.steps", h.steps, 0, kHiresStepsMin, kHiresStepsMax);
        if (h.scale && (h.width || h.height)) throw_invalid("hires takes a scale or a width and height, not both");
        if (h.width && h.height) {
            o.width = image_side("hires.width", h.width);
            o.height = image_side("hires.height", h.height);
        } else if (h.width || h.height) {
            // One side given: the other keeps the first pass's aspect ratio.
            const bool by_width = h.width.has_value();
            const int given = image_side(by_width ? "hires.width" : "hires.height", by_width ? h.width : h.height);
            const double other = static_cast<double>(by_width ? r.height : r.width) * given / (by_width ? r.width : r.height);
            const int derived = align_up(static_cast<int>(std::lround(other)), multiple);
            o.width = by_width ? given : derived;
            o.height = by_width ? derived : given;
        } else {
            const float scale = number_above("hires.scale", h.scale, kDefaultHiresScale, kHiresScaleMin, kHiresScaleMax);
            o.width = align_up(static_cast<int>(std::lround(r.width * static_cast<double>(scale))), multiple);
            o.height = align_up(static_cast<int>(std::lround(r.height * static_cast<double>(scale))), multiple);
        }
        for (const auto & [name, v] : {std::pair{"width", o.width}, std::pair{"height", o.height}}) {
            if (v < kImageSideMin || v > kImageSideMax) {
                throw_invalid(std::string("hires target ") + name + " must be from " + std::to_string(kImageSideMin) + " to " +
                              std::to_string(kImageSideMax) + "; the hires options give " + std::to_string(v));
            }
        }
        // sd-webui's schedule: enough steps that truncating by the strength leaves `steps`.
        const int steps = o.steps > 0 ? o.steps : static_cast<int>(r.sigmas.size()) - 1;
        // In float, as the reference divides (3 / 0.6f is 5.0f, not 4.99...).
        const float total = static_cast<float>(steps) / o.strength;
        if (!(total <= static_cast<float>(kHiresScheduleStepsMax))) {
            throw_invalid("hires.steps / hires.strength must be at most " + std::to_string(kHiresScheduleStepsMax) + "; received " +
                          std::to_string(steps) + " / " + number_text(o.strength));
        }
        const int scheduler_steps = std::max(1, static_cast<int>(total));
        const std::vector<float> full = make_sigmas(scheduler, scheduler_steps, model.schedule(), ays);
        r.hires_sigmas = truncate_schedule(full, scheduler_steps, o.strength);
    }

    // ControlNets: each must fit this UNet and run where the model runs.
    for (size_t i = 0; i < p.control_nets.size(); ++i) {
        const ControlNetUse & c = p.control_nets[i];
        const std::string name = "controlNets[" + std::to_string(i) + "]";
        if (!c.net) throw_invalid(name + ".model must be a loaded ControlNet (loadControlNet)");
        c.net->check_fits(u, name);
        if (c.net->hint_channels() != 3) {
            throw Error(ErrorCode::UnsupportedModel, name + " (" + c.net->path() + ") takes a " + std::to_string(c.net->hint_channels()) +
                                                         "-channel control image; sdnode gives ControlNets RGB images");
        }
        if (c.net->device() != model.device()) {
            throw_invalid(name + " was loaded on " + ggml_backend_dev_name(c.net->device()) + ", the model on " + model.device_name() +
                          "; load both with the same backend");
        }
        check_image_bytes(name + ".image", c.image, r.width, r.height, false);
        ResolvedControlNet rc;
        rc.path = c.net->path();
        number_in((name + ".strength").c_str(), c.strength, kDefaultControlStrength, kControlStrengthMin, kControlStrengthMax);
        number_in((name + ".start").c_str(), c.start, kDefaultControlStart, kControlWindowMin, kControlWindowMax);
        number_in((name + ".end").c_str(), c.end, kDefaultControlEnd, kControlWindowMin, kControlWindowMax);
        rc.strength = c.strength.value_or(kDefaultControlStrength);
        rc.start = c.start.value_or(kDefaultControlStart);
        rc.end = c.end.value_or(kDefaultControlEnd);
        if (!(rc.start < rc.end)) {
            throw_invalid(name + ".start must be below " + name + ".end; received " + number_text(rc.start) + " and " + number_text(rc.end));
        }
        if (c.canny) {
            rc.canny = true;
            rc.canny_params = *c.canny;
            const CannyParams & k = rc.canny_params;
            for (const auto & [field, v] : {std::pair{"highThreshold", k.high_threshold}, std::pair{"lowThreshold", k.low_threshold},
                                            std::pair{"weak", k.weak}, std::pair{"strong", k.strong}}) {
                number_in((name + ".preprocess." + field).c_str(), v, 0, kCannyValueMin, kCannyValueMax);
            }
        }
        r.control_nets.push_back(rc);
    }
    return r;
}

PromptEncoding encode_prompt(Session & session, const PromptRequest & request, const std::atomic<bool> * abort) {
    check_prompt("text", request.prompt);
    check_prompt_2(session.model(), "prompt2", request.prompt_2);
    const std::optional<int> & clip_skip = request.clip_skip;
    if (clip_skip) int_in("clipSkip", clip_skip, 0, limits::kClipSkipMin, limits::kClipSkipMax);
    GraphRunner & runner = session.runner();
    const ScopedAbort scoped(runner, abort);
    const Model & model = session.model();
    model.check_files_unchanged();
    GenerateParams lora_params;  // checked as generate() checks them
    lora_params.loras = request.loras;
    lora_params.lora_apply = request.lora_apply;
    const std::vector<LoraRequest> active = check_loras(lora_params);
    const std::optional<std::string> & lora_apply = request.lora_apply;
    const ScopedWeightAdapter scoped_adapter(runner);
    session.loras().activate(model, runner, active, resolve_lora_apply(model, lora_apply ? parse_lora_apply(*lora_apply) : LoraApply::Auto),
                             model.default_threads(), abort);
    PromptEmbeddings prompt_embeddings(model, list_embeddings(model.embeddings_dir(), request.embeddings));
    Conditioning c = encode_conditioning(model, runner, request.prompt, effective_clip_skip(model, clip_skip), &prompt_embeddings,
                                         request.prompt_2 ? &*request.prompt_2 : nullptr);
    return PromptEncoding{std::move(c.context), std::move(c.pooled), std::move(c.tokens)};
}

namespace {

HostTensor planes(int64_t w, int64_t h, int64_t c, float fill = 0.0f) {
    HostTensor t;
    t.ne[0] = w;
    t.ne[1] = h;
    t.ne[2] = c;
    t.ne[3] = 1;
    t.data.assign(static_cast<size_t>(w * h * c), fill);
    return t;
}

// Channels of a after those of b: [1, ca + cb, h, w].
HostTensor concat_channels(const HostTensor & a, const HostTensor & b) {
    HostTensor t = a;
    t.ne[2] = a.ne[2] + b.ne[2];
    t.data.insert(t.data.end(), b.data.begin(), b.data.end());
    return t;
}

// What the init image, the mask and the model make of a run, before any sampling.
struct ImageConditioning {
    std::vector<float> init_latent;  // empty: txt2img (and edit models: sampling starts from noise)
    HostTensor concat;               // the UNet's extra channels; empty for 4-channel UNets
    HostTensor img_uncond_concat;    // edit models' unconditional image channels
    HostTensor denoise_mask;         // [1, 1, h, w]; empty: no blending
};

ImageConditioning prepare_images(const Model & model, GraphRunner & runner, const GenerateParams & params, const ResolvedParams & p,
                                 int w, int h) {
    ImageConditioning out;
    const Vae & vae = model.vae();
    const int zc = model.info().vae.z_channels;
    // One generator seeded with the seed for every posterior sample, in the reference's order.
    std::unique_ptr<Rng> rng = make_rng(parse_rng_kind(p.rng), p.seed);
    HostTensor unit;  // the init image in [0, 1]
    if (params.init_image) unit = image_bytes_to_unit(*params.init_image);
    Codec vae_codec = p.codec;  // the VAE's own encodes (the TAESD encodes only img2img's init image)
    vae_codec.decoder = Decoder::Vae;
    auto encode_unit = [&](HostTensor image01) {
        unit_to_signed(image01);
        return vae.encode(runner, image01, rng.get(), encode_tiling(model, runner, vae_codec, image01.ne[0], image01.ne[1]));
    };

    // The latent-space mask: the rounded mask image, nearest-max downsampled to the latent.
    HostTensor latent_mask;
    HostTensor mask01;
    if (p.has_mask) {
        const ImageBytes & m = *params.mask;
        mask01 = planes(p.width, p.height, 1);
        for (size_t i = 0; i < mask01.data.size(); ++i) mask01.data[i] = std::round(float(m.pixels[i]) / 255.0f);
        latent_mask = interpolate_nearest_max(mask01, w, h);
    }

    if (p.mode == GenerateMode::Edit) {
        // The image to edit (black without one, as the reference's empty reference): the
        // posterior's mean, unscaled (the reference's pix2pix latent: no noise drawn, no scale factor).
        if (!params.init_image) unit = planes(p.width, p.height, 3);
        unit_to_signed(unit);
        HostTensor z = vae.encode(runner, unit, nullptr, encode_tiling(model, runner, vae_codec, unit.ne[0], unit.ne[1]));
        const float inv = 1.0f / model.info().vae.scale_factor;
        for (float & v : z.data) v *= inv;
        out.concat = std::move(z);
        out.img_uncond_concat = planes(w, h, zc);
        return out;
    }
    if (params.init_image) {
        if (p.codec.decoder == Decoder::Taesd) {
            // With TAESD, img2img encodes with it too (the reference's --taesd): its output as is.
            std::vector<uint8_t> rgb(static_cast<size_t>(p.width) * p.height * 3);
            const ImageBytes & im = *params.init_image;
            for (size_t i = 0; i < rgb.size() / 3; ++i)
                for (int c = 0; c < 3; ++c) rgb[i * 3 + c] = im.pixels[i * im.channels + (im.channels == 1 ? 0 : c)];
            out.init_latent = encode_rgb8(model, runner, rgb, p.width, p.height, rng.get(), p.codec).data;
        } else {
            out.init_latent = encode_unit(unit).data;
        }
    }
    if (is_inpaint_unet(model)) {
        if (!p.has_mask) {
            mask01 = planes(p.width, p.height, 1, 1.0f);
            latent_mask = planes(w, h, 1, 1.0f);
        }
        HostTensor masked;
        if (params.init_image) {
            // Pixels under the mask set to gray: (1 - m) * (x - 0.5) + 0.5.
            HostTensor image = unit;
            const size_t n = mask01.data.size();
            for (size_t c = 0; c < 3; ++c) {
                for (size_t i = 0; i < n; ++i) {
                    float & v = image.data[c * n + i];
                    v = (1.0f - mask01.data[i]) * (v - 0.5f) + 0.5f;
                }
            }
            masked = encode_unit(std::move(image));
        } else {
            masked = planes(w, h, zc);
        }
        out.concat = concat_channels(latent_mask, masked);
        if (p.has_mask) out.denoise_mask = max_pool_3x3(latent_mask);  // dilated by a latent pixel
    } else if (p.has_mask) {
        out.denoise_mask = std::move(latent_mask);
    }
    return out;
}

// The decoded image's [-1, 1] tensor resized in [0, 1] and encoded again: the hires fix's
// image-space upscalers.
HostTensor upscale_in_pixels(const Model & model, GraphRunner & runner, const HostTensor & latent, int width, int height,
                             Interpolation mode, Rng & rng, const Codec & codec) {
    Codec vae_codec = codec;
    vae_codec.decoder = Decoder::Vae;
    HostTensor image = model.vae().decode(runner, latent, decode_tiling(model, runner, vae_codec, latent.ne[0], latent.ne[1]));
    for (float & v : image.data) v = std::clamp((v + 1.0f) * 0.5f, 0.0f, 1.0f);
    HostTensor resized = interpolate(image, width, height, mode);
    for (float & v : resized.data) v = std::clamp(v, 0.0f, 1.0f);
    unit_to_signed(resized);
    return model.vae().encode(runner, resized, &rng, encode_tiling(model, runner, vae_codec, width, height));
}

HostTensor upscale_latent(const Model & model, GraphRunner & runner, const HostTensor & latent, const ResolvedHires & hires, Rng & rng,
                          const Codec & codec) {
    const int up = model.vae().upscale();
    const int64_t w = hires.width / up, h = hires.height / up;
    switch (parse_hires_upscaler(hires.upscaler)) {
        case HiresUpscaler::Latent: return interpolate(latent, w, h, Interpolation::Bilinear);
        case HiresUpscaler::LatentNearest: return interpolate(latent, w, h, Interpolation::Nearest);
        case HiresUpscaler::LatentNearestExact: return interpolate(latent, w, h, Interpolation::NearestExact);
        case HiresUpscaler::LatentAntialiased: return interpolate(latent, w, h, Interpolation::Bilinear, true);
        case HiresUpscaler::LatentBicubic: return interpolate(latent, w, h, Interpolation::Bicubic);
        case HiresUpscaler::LatentBicubicAntialiased: return interpolate(latent, w, h, Interpolation::Bicubic, true);
        case HiresUpscaler::Lanczos: return upscale_in_pixels(model, runner, latent, hires.width, hires.height, Interpolation::Lanczos, rng, codec);
        case HiresUpscaler::Nearest: return upscale_in_pixels(model, runner, latent, hires.width, hires.height, Interpolation::Nearest, rng, codec);
    }
    throw Error(ErrorCode::Internal, "unknown hires upscaler");
}

}  // namespace

GenerateOutput generate(Session & session, const GenerateParams & params, const RunControl & control) {
    const Model & model = session.model();
    GenerateOutput out;
    out.params = resolve_generate_params(model, params);
    model.check_files_unchanged();
    for (const ControlNetUse & c : params.control_nets) c.net->check_files_unchanged();
    const ResolvedParams & p = out.params;
    const Clock::time_point t0 = Clock::now();
    GraphRunner & runner = session.runner();
    const ScopedAbort scoped(runner, control.abort);
    // The LoRAs' weights for this run only: the next job sees the model's own unless it asks again.
    const ScopedWeightAdapter scoped_adapter(runner);
    out.lora = session.loras().activate(model, runner, p.loras, p.lora_apply, model.default_threads(), control.abort);
    out.warnings.insert(out.warnings.end(), out.lora.warnings.begin(), out.lora.warnings.end());

    // Guidance as the reference resolves it: image guidance only for edit models; the
    // unconditional pass when the text guidance differs from the image's.
    const bool use_uncond = p.image_cfg_scale != p.cfg_scale;
    const bool use_img_uncond = p.mode == GenerateMode::Edit && params.init_image && p.image_cfg_scale != 1.0f;

    // Conditioning, once for the whole batch.
    const int clip_skip = effective_clip_skip(model, params.clip_skip);
    // Textual-inversion triggers: the folder listed again now, files read as the prompts use them.
    PromptEmbeddings embeddings(model, list_embeddings(model.embeddings_dir(), params.embeddings));
    Conditioning cond = encode_conditioning(model, runner, p.prompt, clip_skip, &embeddings, p.prompt_2 ? &*p.prompt_2 : nullptr);
    Conditioning uncond;
    if (use_uncond || use_img_uncond) {
        const std::string * negative_2 = p.negative_prompt_2 ? &*p.negative_prompt_2 : nullptr;
        uncond = encode_conditioning(model, runner, p.negative_prompt, clip_skip, &embeddings, negative_2);
        // SDXL without a negative prompt (for either encoder): zeros for the text (its pooled vector
        // stays), as the reference.
        if (is_sdxl_family(model.arch()) && p.negative_prompt.empty() && (!negative_2 || negative_2->empty())) {
            std::fill(uncond.context.data.begin(), uncond.context.data.end(), 0.0f);
        }
    }
    if (p.size_conditioned) {
        SizeConditioning size;
        size.original_width = p.original_size.first;
        size.original_height = p.original_size.second;
        size.crop_top = p.crop_top_left.first;
        size.crop_left = p.crop_top_left.second;
        size.target_width = p.target_size.first;
        size.target_height = p.target_size.second;
        if (p.aesthetic_conditioned) size.aesthetic_score = p.aesthetic_score;
        add_size_conditioning(cond, size);
        if (p.aesthetic_conditioned) size.aesthetic_score = p.negative_aesthetic_score;
        if (use_uncond || use_img_uncond) add_size_conditioning(uncond, size);
    }
    out.timings.text_encode_ms = ms_since(t0);
    check_abort(control.abort);

    const int C = model.info().vae.z_channels;
    const int up = model.vae().upscale();
    const int w = p.width / up, h = p.height / up;
    const Clock::time_point te = Clock::now();
    const ImageConditioning images = prepare_images(model, runner, params, p, w, h);
    out.timings.vae_encode_ms = ms_since(te);
    check_abort(control.abort);

    // ControlNets: each control image (made an edge map first with Canny) in [0, 1]; its guided
    // hint is computed once per pass size, the image resized to 8x the latent (the hint block's
    // three halvings) when that is not the image size (hires, VAEs of another factor).
    std::vector<HostTensor> control_units;
    for (size_t i = 0; i < params.control_nets.size(); ++i) {
        ImageBytes image = params.control_nets[i].image;
        if (p.control_nets[i].canny) preprocess_canny(image.pixels, image.width, image.height, image.channels, p.control_nets[i].canny_params);
        control_units.push_back(image_bytes_to_unit(image));
    }
    auto guided_hints = [&](int lw, int lh) {
        std::vector<HostTensor> out;
        for (size_t i = 0; i < control_units.size(); ++i) {
            const HostTensor & unit = control_units[i];
            if (unit.ne[0] == 8 * lw && unit.ne[1] == 8 * lh) {
                out.push_back(params.control_nets[i].net->hint(runner, unit));
            } else {
                out.push_back(params.control_nets[i].net->hint(runner, interpolate(unit, 8 * lw, 8 * lh, Interpolation::Bilinear)));
            }
            check_abort(control.abort);
        }
        return out;
    };
    // A ControlNet's window [start, end) of a pass's steps, as sigmas: sigma_low < sigma <= sigma_high.
    auto control_inputs = [&](const std::vector<HostTensor> & hints, const std::vector<float> & sigmas) {
        std::vector<DenoiserControl> out;
        const int steps = static_cast<int>(sigmas.size()) - 1;
        const float inf = std::numeric_limits<float>::infinity();
        for (size_t i = 0; i < hints.size(); ++i) {
            const ResolvedControlNet & rc = p.control_nets[i];
            if (rc.strength == 0.0) continue;  // adds exactly nothing
            const int a = static_cast<int>(std::lround(rc.start * steps)), e = static_cast<int>(std::lround(rc.end * steps));
            DenoiserControl dc;
            dc.net = params.control_nets[i].net.get();
            dc.guided_hint = &hints[i];
            dc.strength = static_cast<float>(rc.strength);
            dc.sigma_high = a <= 0 ? inf : a >= steps ? -inf : sigmas[static_cast<size_t>(a)];
            dc.sigma_low = e >= steps ? -inf : sigmas[static_cast<size_t>(e)];
            out.push_back(dc);
        }
        return out;
    };
    const std::vector<HostTensor> hints = guided_hints(w, h);
    std::vector<HostTensor> hires_hints;

    // The running pass's latest denoised prediction (x0), kept for previews.
    const bool previewing = p.previews && control.preview;
    std::vector<float> last_x0;
    auto make_denoise = [&](int lw, int lh, const HostTensor * mask, const std::vector<float> * init,
                            std::vector<DenoiserControl> controls) {
        DenoiserInputs di;
        di.unet = &model.unet();
        di.runner = &runner;
        di.prediction = model.info().unet.prediction;
        di.schedule = &model.schedule();
        di.cond = &cond;
        di.uncond = (use_uncond || use_img_uncond) ? &uncond : nullptr;
        di.use_uncond = use_uncond;
        di.use_img_uncond = use_img_uncond;
        di.cfg_scale = p.cfg_scale;
        di.image_cfg_scale = p.image_cfg_scale;
        di.concat = images.concat.data.empty() ? nullptr : &images.concat;
        di.img_uncond_concat = images.img_uncond_concat.data.empty() ? nullptr : &images.img_uncond_concat;
        di.controls = std::move(controls);
        auto denoiser = std::make_shared<Denoiser>(di, lw, lh, C);
        const size_t n = static_cast<size_t>(C) * lw * lh;
        std::vector<float> * keep = previewing ? &last_x0 : nullptr;
        return Denoise([denoiser, mask, init, n, keep](const float * x, float sigma, float * denoised, float * uncond_out) {
            (*denoiser)(x, sigma, denoised, uncond_out);
            if (mask) {
                // Keep what the mask keeps: the init latent where the mask is 0.
                const size_t plane = mask->data.size();
                for (size_t i = 0; i < n; ++i) {
                    const float m = mask->data[i % plane];
                    denoised[i] = denoised[i] * m + (*init)[i] * (1.0f - m);
                }
            }
            if (keep) keep->assign(denoised, denoised + n);
        });
    };
    const HostTensor * mask = images.denoise_mask.data.empty() ? nullptr : &images.denoise_mask;

    SamplingPlan plan;
    plan.sampler = parse_sampler(p.sampler);
    plan.sigmas = p.sigmas;
    // A hand-off: the first steps only, ending at a noise level above 0.
    if (p.denoise_end_steps > 0) plan.sigmas.resize(static_cast<size_t>(p.denoise_end_steps) + 1);
    plan.add_noise = !params.start_latent;
    plan.eta = p.eta;
    plan.params.lms_max_order = p.lms_max_order;
    const Denoise denoise = make_denoise(w, h, mask, &images.init_latent, control_inputs(hints, plan.sigmas));
    SamplingPlan hires_plan = plan;
    hires_plan.sigmas = p.hires_sigmas;
    const int hw = p.hires.enabled ? p.hires.width / up : w, hh = p.hires.enabled ? p.hires.height / up : h;
    out.latent_channels = C;
    out.latent_width = hw;
    out.latent_height = hh;
    out.image_width = hw * up;
    out.image_height = hh * up;
    const size_t n = static_cast<size_t>(C) * w * h;

    const RngKind rng_kind = parse_rng_kind(p.rng);
    const int steps1 = static_cast<int>(plan.sigmas.size()) - 1;
    const int steps2 = p.hires.enabled ? static_cast<int>(hires_plan.sigmas.size()) - 1 : 0;
    const int per_image = steps1 + steps2;
    // A hand-off counts the whole schedule: the next model reports the rest of the steps.
    const int total_steps = (p.denoise_end_steps > 0 ? static_cast<int>(p.sigmas.size()) - 1 : per_image) * p.batch;
    Codec final_codec = p.codec;
    for (int b = 0; b < p.batch; ++b) {
        const Clock::time_point ts = Clock::now();
        GeneratedImage img;
        img.seed = p.seed + static_cast<uint64_t>(b);
        std::unique_ptr<Rng> rng = make_rng(rng_kind, img.seed);
        std::unique_ptr<Rng> sampler_rng;
        if (!p.sampler_rng.empty() && p.sampler_rng != p.rng) sampler_rng = make_rng(parse_rng_kind(p.sampler_rng), img.seed);
        auto hook_from = [&](int offset, int lw, int lh) {
            return StepHook([&, offset, lw, lh](int step, int) {
                const int done = b * per_image + offset + step;
                if (previewing && (offset + step) % p.preview_interval == 0 && last_x0.size() == static_cast<size_t>(C) * lw * lh) {
                    HostTensor x0 = planes(lw, lh, C);
                    x0.data = last_x0;
                    StepPreview preview{done, total_steps, b, 0, 0, {}};
                    preview.rgb = preview_rgb8(model, runner, x0, p.preview, p.codec, preview.width, preview.height);
                    control.preview(std::move(preview));
                }
                if (control.progress) control.progress(StepProgress{done, total_steps, ms_since(t0)});
                return !(control.abort && control.abort->load());
            });
        };
        last_x0.clear();
        const std::vector<float> start = params.start_latent
                                             ? std::vector<float>(params.start_latent->begin() + static_cast<std::ptrdiff_t>(b * n),
                                                                  params.start_latent->begin() + static_cast<std::ptrdiff_t>((b + 1) * n))
                                             : images.init_latent;
        std::vector<float> x = sample_latent(plan, denoise, n, start, *rng, sampler_rng.get(), hook_from(0, w, h));
        HostTensor latent = planes(w, h, C);
        latent.data = std::move(x);

        if (p.hires.enabled) {
            check_abort(control.abort);
            // A fresh generator per image, as the first pass: the image upscalers' posterior
            // sample, then the second pass's noise.
            std::unique_ptr<Rng> hires_rng = make_rng(rng_kind, img.seed);
            std::unique_ptr<Rng> hires_sampler_rng;
            if (sampler_rng) hires_sampler_rng = make_rng(parse_rng_kind(p.sampler_rng), img.seed);
            const HostTensor upscaled = upscale_latent(model, runner, latent, p.hires, *hires_rng, p.codec);
            HostTensor hires_mask;
            if (mask) hires_mask = interpolate_nearest_max(*mask, hw, hh);
            if (hires_hints.empty() && !hints.empty()) hires_hints = guided_hints(hw, hh);
            const Denoise hires_denoise = make_denoise(hw, hh, mask ? &hires_mask : nullptr, &upscaled.data,
                                                       control_inputs(hires_hints, hires_plan.sigmas));
            latent.ne[0] = hw;
            latent.ne[1] = hh;
            last_x0.clear();
            latent.data = sample_latent(hires_plan, hires_denoise, upscaled.data.size(), upscaled.data, *hires_rng,
                                        hires_sampler_rng.get(), hook_from(steps1, hw, hh));
        }
        out.timings.sampling_ms += ms_since(ts);

        if (p.denoise_end_steps > 0) {
            // A hand-off: the still-noisy latent goes to the next model, not to the decoder.
            img.latent = std::move(latent.data);
            out.images.push_back(std::move(img));
            check_abort(control.abort);
            continue;
        }
        const Clock::time_point tv = Clock::now();
        // Tiled or not is decided once: every image of the batch has the same size.
        if (b == 0) {
            final_codec.tiling = decode_tiling(model, runner, p.codec, hw, hh);
            final_codec.auto_tiling = false;
            out.vae_tiled = final_codec.tiling.enabled;
        }
        img.rgb = decode_latent_rgb8(model, runner, latent, final_codec);
        if (p.return_latents) img.latent = std::move(latent.data);
        out.timings.vae_decode_ms += ms_since(tv);
        out.images.push_back(std::move(img));
        check_abort(control.abort);
    }
    out.timings.total_ms = ms_since(t0);
    return out;
}

}  // namespace sd
