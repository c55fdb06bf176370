// Conditioning as data: what the text encoders make of a prompt, for the denoiser.
#pragma once
#include <optional>
#include <string>

#include "runtime/graph-runner.h"

namespace sd {

class Model;
class PromptEmbeddings;

struct Conditioning {
    HostTensor context;  // ne {dim, tokens, 1}: the UNet's cross-attention input
    HostTensor pooled;   // ne {dim}: the pooled text embedding (SDXL's bigG); empty when unused
    HostTensor vector;   // ne {adm_in_channels, 1}: the UNet's label input y (SDXL); empty when unused
    std::vector<int32_t> tokens;  // the token ids the prompt became (chunks * 77; custom ones past the vocabulary)
    bool has_pooled() const { return !pooled.data.empty(); }
};

// SDXL's size conditioning (the reference's defaults: original = target = the generation size,
// crop 0, 0), in pixels.
struct SizeConditioning {
    int original_width = 0, original_height = 0;
    int crop_top = 0, crop_left = 0;
    int target_width = 0, target_height = 0;
    std::optional<float> aesthetic_score;  // the refiner's: in place of the target size
};

// SDXL's y: the pooled embedding, then 256-wide sinusoidal embeddings (cos half, then sin half,
// periods up to 10000) of [original height, width], [crop top, left], [target height, width]:
// 1280 + 6 x 256 = 2816 values; the refiner's (SGM's sd_xl_refiner) ends with the aesthetic score
// instead of the target size: 1280 + 5 x 256 = 2560. Sets c.vector; throws Internal without a
// pooled embedding.
void add_size_conditioning(Conditioning & c, const SizeConditioning & size);
// The same for any list of scalars after the pooled embedding.
void add_vector_embeddings(Conditioning & c, const std::vector<float> & values);

// The text-encoder layer from the end that `clip_skip` (unset: the architecture's default)
// means for this model. Throws InvalidArgument when an explicit value exceeds the layer count.
int effective_clip_skip(const Model & model, std::optional<int> clip_skip);

// Tokenizes (emphasis, BREAK, chunks) and encodes `prompt` with the model's text encoder(s).
// clip_skip: as effective_clip_skip() returns it. SDXL, as stable-diffusion.cpp: per chunk the
// CLIP-L and bigG hidden states side by side (768 + 1280), bigG seeing the chunk with every token
// after the end token set to 0; the prompt weights on both; the pooled output from the first
// chunk's end token. `embeddings` (may be null): the generation's textual-inversion triggers,
// matched in the prompt and fed to each encoder as its own custom rows. `prompt_2` (may be null):
// the text for bigG (SDXL's second encoder, the refiner's only one; ComfyUI's text_g, diffusers'
// prompt_2) when it differs from `prompt`: on SDXL each text is then tokenized and weighted on
// its own, the shorter padded with empty-prompt chunks, the pooled output from prompt_2.
Conditioning encode_conditioning(const Model & model, GraphRunner & runner, const std::string & prompt, int clip_skip,
                                 PromptEmbeddings * embeddings = nullptr, const std::string * prompt_2 = nullptr);

}  // namespace sd
