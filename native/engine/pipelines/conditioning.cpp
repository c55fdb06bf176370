#include "pipelines/conditioning.h"

#include <algorithm>

#include "core/errors.h"
#include "model/model.h"
#include "model/options.h"

namespace sd {

int effective_clip_skip(const Model & model, std::optional<int> clip_skip) {
    const TextEncoderParams & te = model.info().text_encoder;
    int skip = clip_skip ? *clip_skip : arch_defaults(model.arch()).clip_skip;
    // diffusers' SD2.x text encoders ship 23 of OpenCLIP-H's 24 layers (SD2 never uses the last
    // one): their output is already one layer from the end.
    if (te.kind == "openclip-vit-h-14" && te.layers == 23) skip = std::max(1, skip - 1);
    if (skip > te.layers) {
        if (clip_skip) {
            throw_invalid("clipSkip must be from 1 to " + std::to_string(te.layers) + " for this text encoder; received " +
                          std::to_string(*clip_skip));
        }
        skip = te.layers;  // the default never asks for more layers than there are
    }
    return skip;
}

Conditioning encode_conditioning(const Model & model, GraphRunner & runner, const std::string & prompt, int clip_skip) {
    Conditioning c;
    c.context = encode_prompt(runner, model.text_encoder(), model.tokenizer().tokenize(prompt), clip_skip);
    return c;
}

}  // namespace sd
