// CLIP text encoders (HF CLIP names: "text_model.embeddings.*", "text_model.encoder.layers.N.*",
// "text_model.final_layer_norm.*"): OpenAI CLIP ViT-L/14 (SD1, quick_gelu) and OpenCLIP
// ViT-H/14 (SD2, gelu), converted to the same naming.
//
// As stable-diffusion.cpp: token + position embeddings, pre-norm layers with a causal mask,
// clip_skip counted from the end (1 = every layer, 2 = stop before the last), and the final
// layer norm applied to whatever layer the skip stops at. Chunks of 77 tokens are encoded
// independently (here as one batch), then the prompt weights are applied per chunk.
#pragma once
#include <cstdint>
#include <vector>

#include "model/arch.h"
#include "nn/blocks.h"
#include "runtime/graph-runner.h"
#include "text/tokenizer.h"

namespace sd {

class TextEncoder {
public:
    // `weights` must outlive the encoder. Throws InvalidArgument for unusable params.
    TextEncoder(const TensorSource & weights, TextEncoderParams params);

    const TextEncoderParams & params() const { return params_; }

    // ids: ne {77, chunks} (i32). Returns ne {width, 77, chunks}.
    ggml_tensor * build(Graph & g, ggml_tensor * ids, int clip_skip) const;

    // tokens: chunks * 77 ids. Returns the hidden states [chunks, 77, width] (no prompt weights).
    // Throws InvalidArgument for an empty or non-multiple-of-77 count, an id outside the
    // vocabulary, or clip_skip outside [1, layers].
    HostTensor encode(GraphRunner & runner, const std::vector<int32_t> & tokens, int clip_skip) const;

private:
    const TensorSource & weights_;
    TextEncoderParams params_;
};

// stable-diffusion.cpp's prompt weighting, per 77-token chunk: every token's hidden state is
// multiplied by its weight, then the chunk is rescaled so its mean equals the unweighted mean.
// hidden: [chunks, 77, width]; weights: chunks * 77.
void apply_token_weights(HostTensor & hidden, const std::vector<float> & weights);

// The conditioning for a tokenized prompt: encode + apply_token_weights, as
// [1, chunks * 77, width] (the UNet's context for one batch item).
HostTensor encode_prompt(GraphRunner & runner, const TextEncoder & encoder, const WeightedTokens & prompt,
                         int clip_skip);

}  // namespace sd
