// The one name table: every accepted spelling of a Stable Diffusion tensor name (original LDM
// checkpoints, diffusers folders and single files, stable-diffusion.cpp GGUF files, standalone
// VAE and text-encoder files) maps to one canonical set, per component.
//
// Canonical names (the engine's graphs only ever see these):
//   unet:           LDM names without prefix      "input_blocks.1.0.in_layers.0.weight"
//   vae:            LDM names without prefix      "decoder.up.0.block.0.conv1.weight"
//   text_encoder:   HF CLIP names without prefix  "text_model.encoder.layers.0.self_attn.q_proj.weight"
//   text_encoder_2: same HF CLIP naming (SDXL's OpenCLIP bigG, converted)
//   taesd:          diffusers AutoencoderTiny names without prefix "decoder.layers.2.conv.0.weight"
//                   (a TAESD file: stored as is, or under stable-diffusion.cpp's "tae." / "taesd.")
//   controlnet:     a ControlNet file (canonicalize_controlnet): the UNet's canonical names for its
//                   encoder copy (time_embed, label_emb, input_blocks, middle_block) plus
//                   "input_hint_block.<0..14>.*", "zero_convs.<i>.0.*", "middle_block_out.0.*"
// OpenCLIP tensors (SD2.x, SDXL) are renamed to the HF CLIP spelling; a fused in_proj is split
// into q/k/v views (rows are outermost, so each third is a contiguous byte range).
//
// Decisions the graphs rely on:
// - UNet block indices are always the standard LDM arithmetic, contiguous, whatever the source:
//   input_blocks: 0 = conv_in, then per level `num_res_blocks[level]` blocks (.0 resnet, .1
//   attention if the level has one) and, except on the last level, one downsampler (.0.op);
//   output_blocks: deepest level first, per level `num_res_blocks_out[level]` blocks, the
//   upsampler in the level's last block as .1.conv (no attention) or .2.conv. Converters that
//   leave gaps for distilled UNets (fixed 3*i+j arithmetic) are renumbered.
// - VAE mid attention q/k/v/proj_out are [c, c, 1, 1] (LDM conv); diffusers' linear [c, c] are
//   reshaped views of the same bytes.
// - "text_projection.weight" has the HF Linear orientation [proj, width] (y = x W^T, i.e. a plain
//   ggml_mul_mat). OpenCLIP stores [width, proj] (y = x P): its view is marked `transpose` and
//   carries the canonical shape [proj, width]; the loader transposes those bytes on upload.
//   stable-diffusion.cpp GGUF files name it "...text_model.text_projection" and keep the OpenCLIP
//   orientation, so that spelling is marked `transpose` too.
// - A model whose only text encoder is OpenCLIP bigG (width 1280: SDXL refiner) stores it as
//   text_encoder_2, matching SDXL's second encoder.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/model-file.h"

namespace sd {

enum class Component { Unet, Vae, TextEncoder, TextEncoder2, Taesd, ControlNet };
const char * component_name(Component c);  // "unet", "vae", "text_encoder", "text_encoder_2", "taesd", "controlnet"

// A canonical tensor: a view of (part of) a stored tensor.
struct CanonicalTensor {
    Component component;
    std::string name;             // canonical, without component prefix
    const TensorRecord * source;  // the stored tensor (owned by the ModelFile)
    std::vector<int64_t> shape;   // canonical shape, outermost first (may differ from source only by reshape/slice)
    uint64_t offset = 0;          // byte offset inside source's bytes (non-zero for split q/k/v)
    uint64_t nbytes = 0;          // bytes of this view
    bool transpose = false;       // 2-D source bytes hold the transpose of `shape` (OpenCLIP text_projection)
};

struct CanonicalModel {
    std::vector<CanonicalTensor> tensors;
    std::vector<std::string> ignored;  // stored names deliberately skipped (EMA copies, optimizer state, position_ids, ...)
    std::vector<std::string> unknown;  // stored names the table does not know (reported, not fatal)

    const CanonicalTensor * find(Component c, const std::string & name) const;
    bool has(Component c) const;
};

// Normalizes every tensor of `file`. Throws ModelFormat on contradictions (two stored tensors
// mapping to one canonical name, a fused qkv whose rows do not split in three).
CanonicalModel canonicalize(const ModelFile & file);

// A ControlNet file, every tensor as Component::ControlNet: lllyasviel's LDM names (under
// "control_model." or bare) or diffusers ControlNetModel names (conv_in, down_blocks.*,
// mid_block.*, controlnet_cond_embedding.*, controlnet_down_blocks.N, controlnet_mid_block).
// Throws ModelFormat as canonicalize() does.
CanonicalModel canonicalize_controlnet(const ModelFile & file);

}  // namespace sd
