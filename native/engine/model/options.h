// The one owner of every generation option's limits and defaults. The engine checks requests
// against these values; lib/engine-tables.ts is generated from option_tables() (npm run
// gen:tables) and a test checks that it is current, so TypeScript validates against the same
// numbers and names and the two sides cannot disagree.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "diffusion/prediction.h"
#include "model/arch.h"

namespace sd {

// Limits of the options, inclusive.
namespace limits {
constexpr int kImageSideMin = 64;
constexpr int kImageSideMax = 4096;
constexpr int kImageSideMultiple = 8;  // the VAE's factor; a model may need more (spatial multiple)
constexpr int kStepsMin = 1, kStepsMax = 1000;
constexpr int kBatchMin = 1, kBatchMax = 64;
constexpr double kCfgScaleMin = 0, kCfgScaleMax = 100;
constexpr double kEtaMin = 0, kEtaMax = 100;
// A custom schedule's sigmas (SD's own run from 14.6 down to 0.029, CosXL's EDM from 120, a
// zero-terminal-SNR table's from ~4096 with diffusers' 2^-24 floor; room above for lower floors).
constexpr double kSigmaMin = 0, kSigmaMax = 100000;
// lms's history length; the reference warns that orders above 12 can give NaNs.
constexpr int kLmsMaxOrderMin = 1, kLmsMaxOrderMax = 12;
constexpr int kClipSkipMin = 1, kClipSkipMax = 48;
// Denoising strength of img2img and of the hires fix: above 0 (min exclusive), at most 1.
constexpr double kStrengthMin = 0, kStrengthMax = 1;
constexpr double kImageCfgScaleMin = 0, kImageCfgScaleMax = 100;
// The hires fix's scale (targets past kImageSideMax are refused anyway) and step count (0 = the
// first pass's).
constexpr double kHiresScaleMin = 0, kHiresScaleMax = 8;  // min exclusive
constexpr int kHiresStepsMin = 0, kHiresStepsMax = 1000;
constexpr int kThreadsMin = 1, kThreadsMax = 1024;
constexpr int kPromptMaxLength = 100000;              // UTF-16 code units, as JavaScript counts
// The largest emphasis weight a prompt's text may get, explicit ("(a:2)") or the product of its
// brackets ("((a))" = 1.1^2): past it the hidden states overflow to infinity (a black image).
// 1.1^144 is 9.1e5: 144 nested parentheses.
constexpr double kPromptWeightMax = 1e6;
constexpr double kSeedMax = 9007199254740991.0;        // Number.MAX_SAFE_INTEGER
constexpr double kRandnCountMax = 100000000;
// Tiled VAE / TAESD (decodeLatents, encodeImage): the tile side in latent pixels (the reference's
// smallest tile is 4; 512 latent pixels are the largest image side, 4096) and the overlap as a
// fraction of the tile (the reference clamps it to [0, 0.5]).
constexpr int kVaeTileSizeMin = 4, kVaeTileSizeMax = kImageSideMax / kImageSideMultiple;
constexpr double kVaeTileOverlapMin = 0, kVaeTileOverlapMax = 0.5;
// Automatic VAE tiling: the compute-buffer bytes an untiled decode (or encode) may need before it
// is tiled instead; 0 always tiles. At most 1 PiB (any real budget).
constexpr double kVaeMemoryBudgetMin = 0, kVaeMemoryBudgetMax = 1125899906842624.0;
// SDXL's size conditioning (originalSize, cropTopLeft, targetSize), in pixels.
constexpr int kSizeConditioningMin = 0, kSizeConditioningMax = 16384;
// The base model's share of a refiner hand-off (exclusive at both ends).
constexpr double kDenoiseEndMin = 0, kDenoiseEndMax = 1;
// The SDXL refiner's aesthetic-score conditioning (LAION's aesthetic scale is 1 to 10).
constexpr double kAestheticScoreMin = 0, kAestheticScoreMax = 100;
// LoRAs per generation and the weight of each (A1111 allows any; past +-100 nothing is sensible).
constexpr int kLorasMax = 64;
constexpr double kLoraWeightMin = -100, kLoraWeightMax = 100;
// Previews every N sampling steps.
constexpr int kPreviewIntervalMin = 1, kPreviewIntervalMax = kStepsMax;
// ControlNet: strength (0 = off), the start and end of its window as fractions of the steps,
// the Canny preprocessor's thresholds (fractions of the strongest edge) and its weak / strong values.
constexpr double kControlStrengthMin = 0, kControlStrengthMax = 10;
constexpr double kControlWindowMin = 0, kControlWindowMax = 1;
constexpr double kCannyValueMin = 0, kCannyValueMax = 1;
}  // namespace limits

// How LoRAs are applied (adapters/lora.h): merged into copies of float weights, added at run time,
// or chosen by the model's weight types.
constexpr const char * kLoraApplyNames[] = {"auto", "merge", "runtime"};

// The decoders a model may have for latents <-> images: its VAE, and a TAESD loaded with it.
constexpr const char * kDecoderNames[] = {"vae", "taesd"};

// Defaults that do not depend on the model (stable-diffusion.cpp's).
// The automatic tiling budget: the SD VAE's untiled decode needs 704 MiB at 512x512 and 2.75 GiB
// at 1024x1024 (SDXL's size), so both run whole (the reference's numbers); past that images
// tile, and a 2048x2048 decode needs one 256-pixel tile's ~180 MiB instead of 11 GiB
// (build-tests/vae_memory measures them; docs/performance.md).
constexpr double kDefaultVaeMemoryBudget = 3.0 * 1024 * 1024 * 1024;
constexpr int kDefaultPreviewInterval = 1;
// The SDXL refiner's aesthetic scores for the prompt and the negative prompt (SGM's and diffusers').
constexpr double kDefaultAestheticScore = 6.0, kDefaultNegativeAestheticScore = 2.5;
constexpr int kDefaultSteps = 20;
constexpr float kDefaultCfgScale = 7.0f;
constexpr const char * kDefaultRng = "cuda";
constexpr double kDefaultStrength = 0.75;
constexpr double kDefaultImageCfgScale = 1.0;  // the reference's: no image guidance unless asked
constexpr double kDefaultHiresScale = 2.0;
constexpr double kDefaultHiresStrength = 0.7;
// ControlNet: the reference's --control-strength default, and its --canny settings (examples/cli:
// preprocess_canny(image, 0.08, 0.08, 0.8, 1.0, false): high, low, weak, strong, inverse).
constexpr double kDefaultControlStrength = 0.9;
constexpr double kDefaultControlStart = 0, kDefaultControlEnd = 1;
constexpr double kDefaultCannyHighThreshold = 0.08, kDefaultCannyLowThreshold = 0.08;
constexpr double kDefaultCannyWeak = 0.8, kDefaultCannyStrong = 1.0;

// Previews while sampling (pipelines/preview.h): the linear latent-to-RGB projection, the TAESD
// decoder, or the VAE decoder. The default is taesd when a TAESD is loaded, else proj.
enum class PreviewMode { Proj, Taesd, Vae };
const std::vector<PreviewMode> & all_preview_modes();
const char * preview_mode_name(PreviewMode m);
PreviewMode parse_preview_mode(const std::string & name);  // throws InvalidArgument listing the names

// The hires fix's upscalers, stable-diffusion.cpp's set: latent-space interpolations, or the
// decoded image resized and encoded again.
enum class HiresUpscaler { Latent, LatentNearest, LatentNearestExact, LatentAntialiased, LatentBicubic, LatentBicubicAntialiased, Lanczos, Nearest };
constexpr HiresUpscaler kDefaultHiresUpscaler = HiresUpscaler::Latent;
const std::vector<HiresUpscaler> & all_hires_upscalers();
const char * hires_upscaler_name(HiresUpscaler u);
HiresUpscaler parse_hires_upscaler(const std::string & name);  // throws InvalidArgument listing the names
// The sampler's own defaults (scheduler, eta) live with the samplers: diffusion/samplers.h.

// Defaults per architecture (stable-diffusion.cpp's), used where a request or the file is silent.
struct ArchDefaults {
    Arch arch;
    int image_side;          // width and height
    int clip_skip;           // text-encoder layers skipped from the end
    Prediction prediction;   // when the file's metadata does not say
    float vae_scale_factor;  // latent scale, when the file's metadata does not say
};
const ArchDefaults & arch_defaults(Arch arch);

// UTF-16 code units of a UTF-8 string (what JavaScript's String.length counts).
size_t utf16_length(const std::string & utf8);

// Every table above as data, for the addon (lib/engine-tables.ts is generated from it).
struct NumericLimit {
    std::string option;  // the option's API name, e.g. "width"
    double min, max;
    bool integer;
    bool min_exclusive = false;
};
struct OptionTables {
    std::vector<std::string> samplers, schedulers, rngs, weight_types, architectures, hires_upscalers, decoders, preview_modes, predictions;
    std::vector<std::string> lora_apply_modes;
    std::vector<std::pair<std::string, std::string>> scheduler_aliases;  // alias -> scheduler
    std::vector<NumericLimit> limits;
    int image_side_multiple;
    int prompt_max_length;
    int default_steps;
    float default_cfg_scale;
    std::string default_sampler, default_rng;
    double default_strength, default_image_cfg_scale, default_hires_scale, default_hires_strength;
    std::string default_hires_upscaler;
    double default_vae_memory_budget;
    double default_aesthetic_score, default_negative_aesthetic_score;
    int default_preview_interval;
    std::vector<ArchDefaults> arch_defaults;       // one per runnable architecture
    std::vector<std::string> sampler_default_schedulers;  // per sampler, in `samplers` order
    std::vector<float> sampler_default_etas;               // per sampler, in `samplers` order
};
OptionTables option_tables();

}  // namespace sd
