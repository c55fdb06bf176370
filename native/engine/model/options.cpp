#include "model/options.h"
#include "core/errors.h"

#include "diffusion/rng.h"
#include "diffusion/samplers.h"
#include "diffusion/schedule.h"
#include "model/weights.h"

namespace sd {

namespace {

// stable-diffusion.cpp's values: 768 pixels for SD2.x (768-v), 1024 for SDXL; clip skip 2 for
// the OpenCLIP encoders (SD2.x, SDXL); the SDXL VAE's scale 0.13025.
constexpr ArchDefaults kArchDefaults[] = {
    {Arch::SD1, 512, 1, Prediction::Eps, 0.18215f},
    {Arch::SD2, 768, 2, Prediction::Eps, 0.18215f},
    {Arch::SDXL, 1024, 2, Prediction::Eps, 0.13025f},
    {Arch::SDXLRefiner, 512, 2, Prediction::Eps, 0.13025f},
    {Arch::Unknown, 512, 1, Prediction::Eps, 0.18215f},
};

}  // namespace

const ArchDefaults & arch_defaults(Arch arch) {
    for (const auto & d : kArchDefaults)
        if (d.arch == arch) return d;
    return kArchDefaults[sizeof(kArchDefaults) / sizeof(kArchDefaults[0]) - 1];
}

size_t utf16_length(const std::string & utf8) {
    size_t n = 0;
    for (size_t i = 0; i < utf8.size(); ++i) {
        const unsigned char c = static_cast<unsigned char>(utf8[i]);
        if ((c & 0xC0) == 0x80) continue;  // continuation byte
        n += c >= 0xF0 ? 2 : 1;            // 4-byte sequences are surrogate pairs
    }
    return n;
}

const std::vector<HiresUpscaler> & all_hires_upscalers() {
    static const std::vector<HiresUpscaler> all = {
        HiresUpscaler::Latent,        HiresUpscaler::LatentNearest,           HiresUpscaler::LatentNearestExact,
        HiresUpscaler::LatentAntialiased, HiresUpscaler::LatentBicubic, HiresUpscaler::LatentBicubicAntialiased,
        HiresUpscaler::Lanczos,       HiresUpscaler::Nearest,
    };
    return all;
}

const char * hires_upscaler_name(HiresUpscaler u) {
    switch (u) {
        case HiresUpscaler::Latent: return "latent";
        case HiresUpscaler::LatentNearest: return "latent-nearest";
        case HiresUpscaler::LatentNearestExact: return "latent-nearest-exact";
        case HiresUpscaler::LatentAntialiased: return "latent-antialiased";
        case HiresUpscaler::LatentBicubic: return "latent-bicubic";
        case HiresUpscaler::LatentBicubicAntialiased: return "latent-bicubic-antialiased";
        case HiresUpscaler::Lanczos: return "lanczos";
        case HiresUpscaler::Nearest: return "nearest";
    }
    return "latent";
}

HiresUpscaler parse_hires_upscaler(const std::string & name) {
    std::string list;
    for (HiresUpscaler u : all_hires_upscalers()) {
        if (name == hires_upscaler_name(u)) return u;
        list += (list.empty() ? "" : ", ") + std::string(hires_upscaler_name(u));
    }
    throw_invalid("hires.upscaler must be one of " + list + "; received \"" + name + "\"");
}

const std::vector<PreviewMode> & all_preview_modes() {
    static const std::vector<PreviewMode> all = {PreviewMode::Proj, PreviewMode::Taesd, PreviewMode::Vae};
    return all;
}

const char * preview_mode_name(PreviewMode m) {
    switch (m) {
        case PreviewMode::Proj: return "proj";
        case PreviewMode::Taesd: return "taesd";
        case PreviewMode::Vae: return "vae";
    }
    return "proj";
}

PreviewMode parse_preview_mode(const std::string & name) {
    std::string list;
    for (PreviewMode m : all_preview_modes()) {
        if (name == preview_mode_name(m)) return m;
        list += (list.empty() ? "" : ", ") + std::string(preview_mode_name(m));
    }
    throw_invalid("preview must be one of " + list + "; received \"" + name + "\"");
}

OptionTables option_tables() {
    using namespace limits;
    OptionTables t;
    for (Sampler s : all_samplers()) {
        t.samplers.push_back(sampler_name(s));
        t.sampler_default_schedulers.push_back(scheduler_name(default_scheduler(s)));
        t.sampler_default_etas.push_back(default_eta(s));
    }
    for (Scheduler s : all_schedulers()) t.schedulers.push_back(scheduler_name(s));
    t.scheduler_aliases.emplace_back(kSchedulerAliasNormal, scheduler_name(parse_scheduler(kSchedulerAliasNormal)));
    for (RngKind r : all_rng_kinds()) t.rngs.push_back(rng_kind_name(r));
    t.weight_types = weight_type_names();
    for (Arch a : {Arch::SD1, Arch::SD2, Arch::SDXL, Arch::SDXLRefiner, Arch::Unknown}) t.architectures.push_back(arch_name(a));
    t.limits = {
        {"width", kImageSideMin, kImageSideMax, true},   {"height", kImageSideMin, kImageSideMax, true},
        {"steps", kStepsMin, kStepsMax, true},           {"batchSize", kBatchMin, kBatchMax, true},
        {"cfgScale", kCfgScaleMin, kCfgScaleMax, false}, {"eta", kEtaMin, kEtaMax, false},
        {"clipSkip", kClipSkipMin, kClipSkipMax, true},  {"threads", kThreadsMin, kThreadsMax, true},
        {"seed", 0, kSeedMax, true},                     {"count", 0, kRandnCountMax, true},
        {"sigma", kSigmaMin, kSigmaMax, false},          {"lmsMaxOrder", kLmsMaxOrderMin, kLmsMaxOrderMax, true},
        {"strength", kStrengthMin, kStrengthMax, false, true},
        {"imageCfgScale", kImageCfgScaleMin, kImageCfgScaleMax, false},
        {"hiresScale", kHiresScaleMin, kHiresScaleMax, false, true},
        {"hiresSteps", kHiresStepsMin, kHiresStepsMax, true},
        {"vaeTiling.tileSize", kVaeTileSizeMin, kVaeTileSizeMax, true},
        {"vaeTiling.overlap", kVaeTileOverlapMin, kVaeTileOverlapMax, false},
        {"vaeMemoryBudget", kVaeMemoryBudgetMin, kVaeMemoryBudgetMax, true},
        {"previewInterval", kPreviewIntervalMin, kPreviewIntervalMax, true},
        {"sizeConditioning", kSizeConditioningMin, kSizeConditioningMax, true},
        {"aestheticScore", kAestheticScoreMin, kAestheticScoreMax, false},
        {"loras", 0, kLorasMax, true},
        {"loraWeight", kLoraWeightMin, kLoraWeightMax, false},
    };
    for (const char * n : kLoraApplyNames) t.lora_apply_modes.push_back(n);
    for (PreviewMode m : all_preview_modes()) t.preview_modes.push_back(preview_mode_name(m));
    t.default_vae_memory_budget = kDefaultVaeMemoryBudget;
    t.default_preview_interval = kDefaultPreviewInterval;
    t.default_aesthetic_score = kDefaultAestheticScore;
    t.default_negative_aesthetic_score = kDefaultNegativeAestheticScore;
    for (HiresUpscaler u : all_hires_upscalers()) t.hires_upscalers.push_back(hires_upscaler_name(u));
    t.default_strength = kDefaultStrength;
    t.default_image_cfg_scale = kDefaultImageCfgScale;
    t.default_hires_scale = kDefaultHiresScale;
    t.default_hires_strength = kDefaultHiresStrength;
    // ControlNet
    t.limits.push_back({"controlNets.strength", kControlStrengthMin, kControlStrengthMax, false});
    t.limits.push_back({"controlNets.window", kControlWindowMin, kControlWindowMax, false});
    t.limits.push_back({"canny", kCannyValueMin, kCannyValueMax, false});
    t.default_hires_upscaler = hires_upscaler_name(kDefaultHiresUpscaler);
    for (const char * d : kDecoderNames) t.decoders.push_back(d);
    t.predictions = prediction_names();
    t.image_side_multiple = kImageSideMultiple;
    t.prompt_max_length = kPromptMaxLength;
    t.default_steps = kDefaultSteps;
    t.default_cfg_scale = kDefaultCfgScale;
    t.default_sampler = sampler_name(kDefaultSampler);
    t.default_rng = kDefaultRng;
    for (Arch a : {Arch::SD1, Arch::SD2, Arch::SDXL, Arch::SDXLRefiner}) t.arch_defaults.push_back(arch_defaults(a));
    return t;
}

}  // namespace sd
