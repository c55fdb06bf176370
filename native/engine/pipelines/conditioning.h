// Conditioning as data: what the text encoders make of a prompt, for the denoiser.
#pragma once
#include <optional>
#include <string>

#include "runtime/graph-runner.h"

namespace sd {

class Model;

struct Conditioning {
    HostTensor context;  // ne {dim, tokens, 1}: the UNet's cross-attention input
    HostTensor pooled;   // ne {dim}: the pooled text embedding (SDXL's y); empty when unused
    bool has_pooled() const { return !pooled.data.empty(); }
};

// The text-encoder layer from the end that `clip_skip` (unset: the architecture's default)
// means for this model. Throws InvalidArgument when an explicit value exceeds the layer count.
int effective_clip_skip(const Model & model, std::optional<int> clip_skip);

// Tokenizes (emphasis, BREAK, chunks) and encodes `prompt` with the model's text encoder(s).
// clip_skip: as effective_clip_skip() returns it.
Conditioning encode_conditioning(const Model & model, GraphRunner & runner, const std::string & prompt, int clip_skip);

}  // namespace sd
