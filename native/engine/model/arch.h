// Architecture detection and hyperparameters. Everything a shape can tell comes from the
// shapes; what shapes cannot tell (attention heads, prediction type, VAE scale) comes from file
// metadata, else from the standard value for the detected architecture.
#pragma once
#include "diffusion/prediction.h"
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/names.h"

namespace sd {

enum class Arch { Unknown, SD1, SD2, SDXL, SDXLRefiner };
const char * arch_name(Arch a);  // "unknown", "sd1", "sd2", "sdxl", "sdxl-refiner"
// SDXL base and refiner: bigG's pooled output, the y vector, the SDXL VAE.
inline bool is_sdxl_family(Arch a) { return a == Arch::SDXL || a == Arch::SDXLRefiner; }


struct UnetParams {
    bool present = false;
    int in_channels = 4;   // 4 standard, 9 inpainting, 8 instruct-pix2pix
    int out_channels = 4;
    int model_channels = 320;
    std::vector<int> channel_mult;         // per level, e.g. {1, 2, 4, 4}
    std::vector<int> num_res_blocks;       // per level (input side), e.g. {2, 2, 2, 2}
    std::vector<int> num_res_blocks_out;   // per level (output side), standard num_res_blocks + 1
    std::vector<int> transformer_depth;    // per level (input side), 0 = no attention at that level
    std::vector<int> transformer_depth_out;  // per level (output side); differs only in distilled UNets
    int transformer_depth_middle = 1;      // 0 = middle block has no attention
    bool has_middle_block = true;          // false for some distilled (tiny) UNets
    int context_dim = 768;
    int num_heads = 8;                     // -1 when head_dim is fixed instead
    int num_head_channels = -1;            // -1 when num_heads is fixed instead
    bool use_linear_projection = false;    // proj_in/out as linear (SD2, SDXL) vs 1x1 conv (SD1)
    int adm_in_channels = 0;               // SDXL label embedding input, 0 = none
    int time_embed_dim = 1280;
    Prediction prediction = Prediction::Eps;
    // "", "inpaint", "instruct-pix2pix" (by in_channels), else for distilled UNets (fewer res blocks
    // or levels than the architecture's standard): "tiny" without a middle block, "small" with one.
    std::string variant;
};

struct VaeParams {
    bool present = false;
    bool has_encoder = false;
    bool has_decoder = false;
    int ch = 128;
    std::vector<int> channel_mult;  // {1, 2, 4, 4}
    int num_res_blocks = 2;
    int z_channels = 4;
    int in_channels = 3;
    float scale_factor = 0.18215f;  // the architecture's (model/options.h) unless metadata says
};

// TAESD (diffusers AutoencoderTiny, madebyollin/taesd): 3x3 convolutions of `channels` width,
// Blocks of three, x8 down/up; latents used as the sampler has them (no scale factor).
struct TaesdParams {
    bool present = false;
    bool has_encoder = false;  // encoder.layers.*
    bool has_decoder = false;  // decoder.layers.*
    int channels = 64;
    int z_channels = 4;
    int image_channels = 3;
};

struct TextEncoderParams {
    bool present = false;
    std::string kind;              // "clip-vit-l-14", "openclip-vit-h-14", "openclip-vit-bigg-14"
    int width = 768;
    int layers = 12;
    int heads = 12;
    int intermediate = 3072;
    int vocab = 49408;
    int max_positions = 77;
    int projection_dim = 0;        // 0 = no text projection stored
    std::string activation;        // "quick_gelu" (CLIP) or "gelu" (OpenCLIP)
};

struct ParameterCounts {
    int64_t unet = 0, vae = 0, text_encoder = 0, text_encoder_2 = 0, taesd = 0;
};

struct ModelInfo {
    Arch arch = Arch::Unknown;
    UnetParams unet;
    VaeParams vae;
    TextEncoderParams text_encoder;
    TextEncoderParams text_encoder_2;
    TaesdParams taesd;  // a TAESD file (loaded as ModelLoadOptions::taesd_path)
    ParameterCounts parameters;
    std::map<std::string, int64_t> dtypes;  // stored dtype name -> tensor count (canonical tensors only)
    std::vector<std::string> warnings;      // e.g. "prediction type not in metadata; assumed eps"
};

// Detects the architecture of a canonicalized model. Throws UnsupportedModel when the tensors
// are recognizably not a Stable Diffusion model we run (naming what was found), ModelFormat when
// required tensors of a present component are missing or have inconsistent shapes.
ModelInfo detect_architecture(const ModelFile & file, const CanonicalModel & model);

}  // namespace sd
