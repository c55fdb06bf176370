// CLIP text encoders (HF CLIP names: "text_model.embeddings.*", "text_model.encoder.layers.N.*",
// "text_model.final_layer_norm.*"): OpenAI CLIP ViT-L/14 (SD1, quick_gelu) and OpenCLIP
// ViT-H/14 (SD2, gelu), converted to the same naming.
//
// As stable-diffusion.cpp: token + position embeddings, pre-norm layers with a causal mask,
// clip_skip counted from the end (1 = every layer, 2 = stop before the last), and the final
// layer norm applied to whatever layer the skip stops at (SD1/SD2; SDXL's two encoders give the
// skipped layer's output without it). Chunks of 77 tokens are encoded independently (here as one
// batch), then the prompt weights are applied per chunk.
//
// The pooled output (SDXL's bigG): every layer, the final layer norm, the hidden state at the end
// token, through text_projection: [projection_dim].
#pragma once
#include <cstdint>
#include <vector>

#include "model/arch.h"
#include "nn/blocks.h"
#include "runtime/graph-runner.h"
#include "text/tokenizer.h"

namespace sd {

// Token rows past the vocabulary (textual-inversion vectors): id first_id + k reads row k, as
// stored, in place of the token embedding. Passed per call; the model's weights stay as loaded.
struct CustomTokens {
    int32_t first_id = 0;     // the encoder's vocabulary size
    int64_t width = 0;        // the encoder's width
    std::vector<float> rows;  // count() rows of `width` floats
    int64_t count() const { return width > 0 ? static_cast<int64_t>(rows.size()) / width : 0; }
};

// The graph inputs that put custom rows in: `rows` ne {width, 77, chunks} holds the custom row
// at each custom token's place and zeros elsewhere, `keep` ne {1, 77, chunks} 1 at base tokens,
// 0 at custom ones, so the embedding lookup is lookup(ids) * keep + rows: the base rows
// unchanged, the custom ones exactly as given.
struct CustomTokenInputs {
    ggml_tensor * rows = nullptr;
    ggml_tensor * keep = nullptr;
};

class TextEncoder {
public:
    // `weights` must outlive the encoder. Throws InvalidArgument for unusable params.
    // final_layer_norm: whether encode()'s hidden states go through the final layer norm.
    TextEncoder(const TensorSource & weights, TextEncoderParams params, bool final_layer_norm = true);

    const TextEncoderParams & params() const { return params_; }

    // ids: ne {77, chunks} (i32). Returns ne {width, 77, chunks}.
    ggml_tensor * build(Graph & g, ggml_tensor * ids, int clip_skip, const CustomTokenInputs * custom = nullptr) const;
    // ids: ne {77, 1} (one chunk), eos_index: ne {1} (i32). Returns ne {projection_dim, 1}
    // (ModelFormat without text_projection).
    ggml_tensor * build_pooled(Graph & g, ggml_tensor * ids, ggml_tensor * eos_index,
                               const CustomTokenInputs * custom = nullptr) const;

    // tokens: chunks * 77 ids. Returns the hidden states [chunks, 77, width] (no prompt weights).
    // Throws InvalidArgument for an empty or non-multiple-of-77 count, an id outside the
    // vocabulary (and past it, outside `custom`'s rows), or clip_skip outside [1, layers].
    HostTensor encode(GraphRunner & runner, const std::vector<int32_t> & tokens, int clip_skip,
                      const CustomTokens * custom = nullptr) const;
    // tokens: one chunk of 77 ids; eos_index: where its end token is. Returns ne {projection_dim}.
    HostTensor encode_pooled(GraphRunner & runner, const std::vector<int32_t> & tokens, int eos_index,
                             const CustomTokens * custom = nullptr) const;

private:
    // Embeddings and layers 0..last: ne {width, 77, chunks}.
    ggml_tensor * build_layers(Graph & g, ggml_tensor * ids, int last, const CustomTokenInputs * custom) const;
    // Whether any token is a custom one; throws for ids outside the vocabulary and `custom`.
    bool check_tokens(const std::vector<int32_t> & tokens, const CustomTokens * custom) const;

    const TensorSource & weights_;
    TextEncoderParams params_;
    bool final_layer_norm_;
};

// stable-diffusion.cpp's prompt weighting, per 77-token chunk: every token's hidden state is
// multiplied by its weight, then the chunk is rescaled so its mean equals the unweighted mean.
// hidden: [chunks, 77, width]; weights: chunks * 77.
void apply_token_weights(HostTensor & hidden, const std::vector<float> & weights);

// The conditioning for a tokenized prompt: encode + apply_token_weights, as
// [1, chunks * 77, width] (the UNet's context for one batch item).
HostTensor encode_prompt(GraphRunner & runner, const TextEncoder & encoder, const WeightedTokens & prompt,
                         int clip_skip, const CustomTokens * custom = nullptr);

}  // namespace sd
