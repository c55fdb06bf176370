// sdnode's engine: the public API, the one header the addon includes. Pure C++17, no N-API.
//
//   inspect_model(path)                  what a file holds, without loading it
//   Model::load(path, options)           the immutable, shareable model (weights, components)
//   Session(model)                       per-run state and the thread a run's jobs use
//   generate(session, params, control)   text-to-image, on the session's thread
//   encode_prompt(session, text, ...)    the conditioning of a prompt
//   option_tables()                      every option's limits, defaults and names
//   system_info(), make_rng()            backends and devices; the noise a seed gives
//
// Everything throws sd::Error with an ErrorCode and a message for the user.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "adapters/lora.h"
#include "adapters/embeddings.h"
#include "components/controlnet.h"
#include "core/errors.h"
#include "diffusion/rng.h"
#include "kernels/cpu-kernels.h"
#include "model/arch.h"
#include "model/model.h"
#include "model/options.h"
#include "runtime/backend.h"
#include "runtime/session.h"

namespace sd {

// ------------------------------------------------------------------ inspection

struct ModelReport {
    std::string format;  // "safetensors", "gguf", "torch", "diffusers"
    ModelInfo info;
    size_t tensor_count = 0;
    std::vector<std::pair<std::string, std::string>> metadata;
    std::vector<std::string> unknown_tensors;  // stored names the name table does not know
    std::vector<std::string> unused_tensors;   // known names no component uses ("<component>.<name>")
    size_t ignored_tensors = 0;                // deliberately skipped (EMA copies, optimizer state, ...)
};

// Reads headers only. A component whose tensors do not fit together is reported in
// info.warnings. Throws Io, ModelFormat, UnsupportedModel.
ModelReport inspect_model(const std::string & path);

// ------------------------------------------------------------------ generation

// Which network turns latents into images and back, and whether it works in tiles. What the
// API's `decoder` / `vaeTiling` options say; resolve_codec() checks and fills it in.
struct VaeTilingParams {
    std::optional<int> tile_size;    // latent pixels per tile side when decoding (encoding: twice); unset = 32
    std::optional<double> overlap;   // fraction of a tile shared with its neighbour; unset = 0.5
};
struct CodecParams {
    std::optional<std::string> decoder;         // "vae" (default) or "taesd" (needs a TAESD loaded)
    // Tiling: automatic unless told. Set: always tiled as stable-diffusion.cpp's --vae-tiling, with
    // these tile settings; `vae_tiling_off`: never tiled; neither: tiled when the untiled graph
    // would need more compute memory than `memory_budget` bytes (default kDefaultVaeMemoryBudget).
    std::optional<VaeTilingParams> vae_tiling;
    bool vae_tiling_off = false;
    std::optional<double> memory_budget;
};
enum class Decoder { Vae, Taesd };
struct Codec {
    Decoder decoder = Decoder::Vae;
    VaeTiling tiling;  // components/tiling.h; enabled: always tiled
    // Not enabled: tiled anyway (with tiling's settings) when an untiled run would need more
    // compute-buffer bytes than memory_budget.
    bool auto_tiling = true;
    size_t memory_budget = static_cast<size_t>(kDefaultVaeMemoryBudget);
};

// An 8-bit image as the API hands it over: interleaved rows of `channels` bytes per pixel.
struct ImageBytes {
    std::vector<uint8_t> pixels;
    int width = 0, height = 0, channels = 0;
};

// The hires fix: after the first pass, upscale its latent (in latent space, or decoded, resized
// and encoded again) and run an img2img pass at the larger size, as stable-diffusion.cpp does.
struct HiresParams {
    std::optional<double> scale;          // target = round(size * scale), aligned up; default 2
    std::optional<int> width, height;     // an explicit target (one alone keeps the aspect ratio)
    std::optional<int> steps;             // 0 or unset: the first pass's step count
    std::optional<double> strength;       // the second pass's denoising strength; default 0.7
    std::optional<std::string> upscaler;  // hires_upscaler names (model/options.h); default "latent"
};

// One ControlNet of a generation (components/controlnet.h): its residuals, times `strength`
// (default kDefaultControlStrength, the reference's --control-strength), go into the UNet at the
// steps from `start` to `end` (fractions of the pass's sampling steps; defaults 0 and 1).
// `image`: the control image, width x height (the caller resizes), 1, 3 or 4 channels; with
// `canny` it is first made an edge map as the reference's --canny does. Several are summed.
struct ControlNetUse {
    std::shared_ptr<const ControlNet> net;
    ImageBytes image;
    std::optional<double> strength, start, end;
    std::optional<CannyParams> canny;
};
struct ResolvedControlNet {
    std::string path;
    double strength = 0, start = 0, end = 1;  // as given (the sampler uses them as floats)
    bool canny = false;
    CannyParams canny_params;
};

// What generate() is asked; every field but the prompts may be left out for its default
// (model/options.h, the sampler's own defaults in diffusion/samplers.h). Names are the API's
// ("euler_a", "karras", "cuda"); the engine parses and checks them.
struct GenerateParams {
    std::string prompt;
    std::string negative_prompt;
    // The texts for bigG (SDXL's second text encoder, the refiner's only one): unset = prompt /
    // negative_prompt. Refused on one-encoder SD1.x/SD2.x models.
    std::optional<std::string> prompt_2, negative_prompt_2;
    std::optional<int> width, height, steps, clip_skip, batch;
    std::optional<double> cfg_scale, eta;
    std::optional<std::string> sampler, scheduler, rng;
    // The generator of ancestral samplers' noise: unset continues the initial-noise generator
    // (stable-diffusion.cpp's default); another kind gets its own generator seeded with the seed.
    std::optional<std::string> sampler_rng;
    std::optional<uint64_t> seed;  // unset: a random seed, reported in the output
    // A custom schedule (the reference's --sigmas): steps + 1 values, the scheduler is then unused.
    std::optional<std::vector<double>> sigmas;
    std::optional<int> lms_max_order;  // lms only
    // Image to image: `init_image` (RGB or gray, width x height: the caller resizes) is encoded and
    // noised to the schedule truncated by `strength` (default 0.75). With an instruct-pix2pix UNet
    // it is instead the image to edit (its latent feeds the UNet; sampling starts from noise).
    std::optional<ImageBytes> init_image;
    std::optional<double> strength;
    // Inpainting: one channel, width x height, white = repaint (rounded to 0 / 1).
    std::optional<ImageBytes> mask;
    // instruct-pix2pix's image guidance (the reference's --img-cfg-scale); default 1 = none.
    std::optional<double> image_cfg_scale;
    std::optional<HiresParams> hires;
    CodecParams codec;  // the decoder (and img2img's encoder) and tiling
    bool return_latents = false;
    // SDXL's size conditioning, in pixels (the UNet's y): unset = the reference's, the
    // generation size and crop 0, 0. Refused for models without it.
    std::optional<std::pair<int, int>> original_size, crop_top_left, target_size;  // (width, height), (top, left)
    // The SDXL refiner's aesthetic scores (y), for the prompt and the negative prompt.
    std::optional<double> aesthetic_score, negative_aesthetic_score;
    // A hand-off between two models (lib's `refiner`): `denoise_end` in (0, 1) runs only the first
    // round(steps * denoise_end) steps of the schedule and returns the still-noisy latents, not
    // decoded; `start_latent` (one latent per image, [C][h][w] each, with custom `sigmas` that
    // continue such a schedule) is sampled from as it is, no noise added.
    std::optional<double> denoise_end;
    std::optional<std::vector<float>> start_latent;
    // Previews while sampling, sent to RunControl::preview: the mode (preview_mode_name: "proj",
    // "taesd", "vae"; default taesd when a TAESD is loaded, else proj) and every how many steps
    // (default kDefaultPreviewInterval). Checked even when `previews` is off.
    bool previews = false;
    std::optional<std::string> preview;
    std::optional<int> preview_interval;
    // LoRAs (adapters/lora.h): files and weights, in order (a weight of 0 is no LoRA), and how they
    // are applied ("auto" default: merged into float weights, at run time for quantized ones).
    std::vector<LoraRequest> loras;
    std::optional<std::string> lora_apply;
    // Textual-inversion embeddings for this generation, beside the model's embeddings folder
    // (ModelLoadOptions::embeddings_dir; an entry replaces a folder file of the same trigger).
    std::vector<EmbeddingRef> embeddings;
    // ControlNets, in order (their residuals are summed).
    std::vector<ControlNetUse> control_nets;
};

// What the UNet's extra input channels make of a run.
enum class GenerateMode { Txt2Img, Img2Img, Inpaint, Edit };
const char * generate_mode_name(GenerateMode mode);

struct ResolvedHires {
    bool enabled = false;
    int width = 0, height = 0, steps = 0;  // steps: as asked (0 = the first pass's)
    float strength = 0;
    std::string upscaler;
};

// What a generation used, every default filled in.
struct ResolvedParams {
    std::string prompt, negative_prompt;
    std::optional<std::string> prompt_2, negative_prompt_2;  // as asked (unset: prompt / negative_prompt)
    int width = 0, height = 0, steps = 0, clip_skip = 0, batch = 1;
    float cfg_scale = 0, eta = 0;
    std::string sampler, scheduler, rng, sampler_rng;  // sampler_rng "" = continues rng
    uint64_t seed = 0;
    std::vector<float> sigmas;  // the schedule used (steps + 1 values, last 0 unless given otherwise)
    int lms_max_order = 4;
    GenerateMode mode = GenerateMode::Txt2Img;
    float strength = 1;         // 1 without an init image
    float image_cfg_scale = 1;  // 1 but for instruct-pix2pix models
    bool has_mask = false;
    ResolvedHires hires;
    std::vector<float> hires_sigmas;  // the second pass's schedule (hires only)
    Codec codec;
    bool return_latents = false;
    bool size_conditioned = false;  // SDXL (and the refiner, without target_size): these went into y
    std::pair<int, int> original_size{0, 0}, crop_top_left{0, 0}, target_size{0, 0};
    bool aesthetic_conditioned = false;  // the SDXL refiner
    int denoise_end_steps = 0;           // > 0: only these steps ran (of sigmas), no decode
    float aesthetic_score = 0, negative_aesthetic_score = 0;
    bool previews = false;
    PreviewMode preview = PreviewMode::Proj;
    int preview_interval = kDefaultPreviewInterval;
    std::vector<LoraRequest> loras;        // the non-zero ones
    LoraApply lora_apply = LoraApply::Merge;  // as resolved for this model (with loras)
    std::vector<ResolvedControlNet> control_nets;
};

struct GeneratedImage {
    std::vector<uint8_t> rgb;   // height * width * 3
    uint64_t seed = 0;
    std::vector<float> latent;  // [C][h][w], only with return_latents
};

struct GenerateTimings {
    double text_encode_ms = 0, vae_encode_ms = 0, sampling_ms = 0, vae_decode_ms = 0, total_ms = 0;
};

struct GenerateOutput {
    std::vector<GeneratedImage> images;
    GenerateTimings timings;
    ResolvedParams params;
    int latent_channels = 4, latent_width = 0, latent_height = 0;
    int image_width = 0, image_height = 0;  // the images' size (the hires target with hires)
    bool vae_tiled = false;                 // whether the final decodes ran in tiles (asked or automatic)
    LoraActivation lora;                    // with loras: how they were applied
    std::vector<std::string> warnings;      // e.g. LoRA tensors that adapt nothing in this model
};

struct StepProgress {
    int step;    // 1-based, across the whole batch
    int steps;   // steps * batch
    double elapsed_ms;
};

// A preview: the sampler's denoised prediction after `step`, as an image (proj: the latent's size).
struct StepPreview {
    int step;   // as StepProgress's
    int steps;
    int image;  // index in the batch
    int width, height;
    std::vector<uint8_t> rgb;  // height * width * 3
};

// How a caller steers a run: `abort` is checked between steps and inside graph computation
// (the run then throws Aborted); `progress` is called once per sampling step, in order, on the
// session's thread; `preview`, with params.previews, every preview_interval steps, before that
// step's progress.
struct RunControl {
    const std::atomic<bool> * abort = nullptr;
    std::function<void(const StepProgress &)> progress;
    std::function<void(StepPreview &&)> preview;
};

// Checks every option against the limits and this model and fills in the defaults. Throws
// InvalidArgument naming the option, the value and what is allowed. Cheap: call it before
// queuing a job so that bad options fail at once.
ResolvedParams resolve_generate_params(const Model & model, const GenerateParams & params);

// Text-to-image, image-to-image, inpainting, edit and the hires fix: one sampling loop. Run it
// on the session's thread (inside Session::submit).
GenerateOutput generate(Session & session, const GenerateParams & params, const RunControl & control);

// The conditioning of one prompt as the UNet sees it: `hidden` [1, chunks * 77, dim] (ne {dim,
// tokens, 1}; SDXL: CLIP-L and bigG side by side, 2048), and SDXL's pooled bigG output (ne {1280},
// empty for one-encoder models). clip_skip unset: the architecture's default. On the session's thread.
struct PromptEncoding {
    HostTensor hidden;
    HostTensor pooled;
    std::vector<int32_t> tokens;  // the token ids encoded (chunks * 77; embedding vectors past the vocabulary)
};
// What encode_prompt() is asked: the text (prompt_2: bigG's, as generate()'s), clip skip (unset:
// the architecture's default), textual-inversion embeddings beside the model's folder, and LoRAs
// (their text-encoder modules change the encoding), as generate() takes them.
struct PromptRequest {
    std::string prompt;
    std::optional<std::string> prompt_2;
    std::optional<int> clip_skip;
    std::vector<EmbeddingRef> embeddings;
    std::vector<LoraRequest> loras;
    std::optional<std::string> lora_apply;
};
PromptEncoding encode_prompt(Session & session, const PromptRequest & request, const std::atomic<bool> * abort);

// ------------------------------------------------------------------ latents <-> images

// Checks `params` against the limits (model/options.h) and this model. Throws InvalidArgument
// naming the option: "decoder" (not "vae" / "taesd"; "taesd" without a TAESD loaded: pass
// `taesd` to loadModel), "vaeTiling.tileSize" (an integer from 4 to 512), "vaeTiling.overlap"
// (from 0 to 0.5), "vaeMemoryBudget" (bytes, an integer from 0 to 2^50).
Codec resolve_codec(const Model & model, const CodecParams & params);

// One latent [1, z, h, w] straight from the sampler to RGB bytes (8h x 8w x 3, interleaved), by
// the codec's decoder: the VAE (latent / scale factor, output (x + 1) / 2) or TAESD (the latent
// as is, output as is), tiled as decode_tiling() says, clamped to [0, 1] and made bytes as generate() does.
// What generate() calls per image. On the session's thread; the runner's abort flag is honoured
// between tiles and inside each graph (throws Aborted).
std::vector<uint8_t> decode_latent_rgb8(const Model & model, GraphRunner & runner, const HostTensor & latent,
                                        const Codec & codec);

// One RGB image (width * height * 3 interleaved bytes) to the latent the sampler starts from,
// [1, z, H/8, W/8]: the VAE's posterior sample times the scale factor (noise from `noise`, drawn
// first, or the mean when null), or TAESD's encoder output as is (`noise` unused). Tiled when
// asked (encode tiles are twice the decode tile, as the reference's).
HostTensor encode_rgb8(const Model & model, GraphRunner & runner, const std::vector<uint8_t> & rgb, int width, int height,
                       Rng * noise, const Codec & codec);

// Automatic tiling: the compute-buffer bytes an untiled decode of a w x h latent (one image)
// would need on the runner's backends with the decoder, measured by ggml's allocator on the real
// graph (ggml_backend_sched_reserve_size: nothing allocated or computed, only the graph built), so
// it is exact for this backend and build. It grows with the image pixels (full-resolution
// convolutions) and, for the VAE, quadratically with the latent pixels (its mid-block attention
// holds an (h*w) x (h*w) f32 score matrix). encode_compute_bytes: the same for a W x H image.
size_t decode_compute_bytes(const Model & model, GraphRunner & runner, Decoder decoder, int64_t w, int64_t h);
size_t encode_compute_bytes(const Model & model, GraphRunner & runner, Decoder decoder, int64_t width, int64_t height);
// The tiling a decode of a w x h latent (an encode of a W x H image) runs with: the codec's, with
// `enabled` set when tiling is automatic and the untiled run would pass the memory budget.
VaeTiling decode_tiling(const Model & model, GraphRunner & runner, const Codec & codec, int64_t w, int64_t h);
VaeTiling encode_tiling(const Model & model, GraphRunner & runner, const Codec & codec, int64_t width, int64_t height);

// An 8-bit image (interleaved, 1, 3 or 4 channels: gray, RGB, RGBA with alpha ignored) through the
// encoder of `codec` (resolve_codec): the latent [1, z_channels, H/8, W/8] as img2img starts from —
// with the VAE the posterior sample (mean + std * noise) times the scale factor, with the noise
// drawn first from the generator `rng` seeded with `seed` (as stable-diffusion.cpp's img2img does),
// or the mean without a seed; with TAESD its output as is (no seed used).
// Throws InvalidArgument for sizes the encoder cannot take or bad codec options, Unsupported
// without an encoder.
HostTensor encode_image(Session & session, const std::vector<uint8_t> & pixels, int width, int height, int channels,
                        std::optional<uint64_t> seed, const std::string & rng, const std::atomic<bool> * abort,
                        const CodecParams & codec = {});

// Latents [N, z_channels, h, w] as generate() returns them through the decoder of `codec`: N RGB
// images (h*8 x w*8, interleaved bytes), the same bytes generate() gives with the same options.
std::vector<std::vector<uint8_t>> decode_latents(Session & session, const HostTensor & latents,
                                                 const std::atomic<bool> * abort, const CodecParams & codec = {});

}  // namespace sd
