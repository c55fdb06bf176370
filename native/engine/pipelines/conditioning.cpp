#include "pipelines/conditioning.h"

#include <algorithm>
#include <cmath>

#include "adapters/embeddings.h"
#include "core/errors.h"
#include "model/model.h"
#include "model/options.h"

namespace sd {

int effective_clip_skip(const Model & model, std::optional<int> clip_skip) {
    const TextEncoderParams & te = model.text_encoder().params();
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

namespace {

// [chunks, 77, wa] and [chunks, 77, wb] -> [chunks, 77, wa + wb], token by token.
HostTensor concat_features(const HostTensor & a, const HostTensor & b) {
    const int64_t wa = a.ne[0], wb = b.ne[0], rows = a.ne[1] * a.ne[2];
    if (b.ne[1] * b.ne[2] != rows) throw Error(ErrorCode::Internal, "the two text encoders' token counts differ");
    HostTensor out = a;
    out.ne[0] = wa + wb;
    out.data.resize(static_cast<size_t>((wa + wb) * rows));
    for (int64_t r = 0; r < rows; ++r) {
        std::copy_n(a.data.data() + r * wa, wa, out.data.data() + r * (wa + wb));
        std::copy_n(b.data.data() + r * wb, wb, out.data.data() + r * (wa + wb) + wa);
    }
    return out;
}

}  // namespace

namespace {

// bigG's part of an SDXL conditioning: per chunk the hidden states of the chunk cut after its end
// token (zeros), and the pooled output from the first chunk's end token. Unweighted.
struct BigGOutput {
    HostTensor hidden, pooled;
};
BigGOutput encode_big_g(const TextEncoder & big, GraphRunner & runner, const std::vector<int32_t> & tokens, int clip_skip,
                        const CustomTokens * custom) {
    std::vector<int32_t> cut = tokens;
    int first_eos = kClipChunkLength - 1;
    for (size_t chunk = 0; chunk < cut.size() / kClipChunkLength; ++chunk) {
        int32_t * t = cut.data() + chunk * kClipChunkLength;
        const int32_t * eos = std::find(t, t + kClipChunkLength, kClipEosToken);
        const int at = static_cast<int>(eos - t);
        if (chunk == 0) first_eos = std::min(at, kClipChunkLength - 1);
        if (at < kClipChunkLength) std::fill(t + at + 1, t + kClipChunkLength, 0);
    }
    BigGOutput out;
    out.hidden = big.encode(runner, cut, clip_skip, custom);
    out.pooled = big.encode_pooled(runner, std::vector<int32_t>(cut.begin(), cut.begin() + kClipChunkLength), first_eos, custom);
    return out;
}

// Appends chunks of `pad` (an empty prompt) until `t` has `chunks` of them.
void pad_chunks(WeightedTokens & t, const WeightedTokens & pad, int chunks) {
    while (t.chunks() < chunks) {
        t.tokens.insert(t.tokens.end(), pad.tokens.begin(), pad.tokens.end());
        t.weights.insert(t.weights.end(), pad.weights.begin(), pad.weights.end());
    }
}

void flatten_chunks(HostTensor & hidden) {
    hidden.ne[1] *= hidden.ne[2];  // [1, chunks * 77, width]
    hidden.ne[2] = 1;
}

}  // namespace

Conditioning encode_conditioning(const Model & model, GraphRunner & runner, const std::string & prompt, int clip_skip,
                                 PromptEmbeddings * embeddings, const std::string * prompt_2) {
    Conditioning c;
    const SpecialWords * words = embeddings ? embeddings->special_words() : nullptr;
    // Each encoder's custom rows (text_encoder() = 0, text_encoder_2() = 1), once tokenizing met the triggers.
    const auto custom = [&](const TextEncoder * e) -> const CustomTokens * {
        if (!embeddings) return nullptr;
        return embeddings->custom(e == model.text_encoder_2() ? 1 : 0);
    };
    const TextEncoder * big = model.pooled_encoder();
    const TextEncoder * clip_l = model.text_encoder_2() ? &model.text_encoder() : nullptr;  // SDXL base; the refiner has bigG alone
    if (prompt_2 && *prompt_2 == prompt) prompt_2 = nullptr;  // the same text: the one-prompt path, same numbers
    if (!clip_l) {
        // SD1.x/SD2.x (one encoder), or the refiner (bigG alone: it reads prompt_2 when given).
        const WeightedTokens tokens = model.tokenizer().tokenize(big && prompt_2 ? *prompt_2 : prompt, words);
        c.tokens = tokens.tokens;
        if (!big) {
            c.context = encode_prompt(runner, model.text_encoder(), tokens, clip_skip, custom(&model.text_encoder()));
            return c;
        }
        BigGOutput g = encode_big_g(*big, runner, tokens.tokens, clip_skip, custom(big));
        apply_token_weights(g.hidden, tokens.weights);
        flatten_chunks(g.hidden);
        c.context = std::move(g.hidden);
        c.pooled = std::move(g.pooled);
        return c;
    }
    if (!prompt_2) {
        // As stable-diffusion.cpp: one tokenization for both encoders, CLIP-L and bigG side by side
        // (768 + 1280), the prompt weights applied across both.
        const WeightedTokens tokens = model.tokenizer().tokenize(prompt, words);
        c.tokens = tokens.tokens;
        BigGOutput g = encode_big_g(*big, runner, tokens.tokens, clip_skip, custom(big));
        HostTensor hidden = concat_features(clip_l->encode(runner, tokens.tokens, clip_skip, custom(clip_l)), g.hidden);
        apply_token_weights(hidden, tokens.weights);
        flatten_chunks(hidden);
        c.context = std::move(hidden);
        c.pooled = std::move(g.pooled);
        return c;
    }
    // Separate texts (ComfyUI's text_l / text_g): each tokenized and weighted on its own, the one
    // with fewer chunks padded with empty-prompt chunks (as ComfyUI pads), then side by side.
    WeightedTokens tokens_l = model.tokenizer().tokenize(prompt, words);
    WeightedTokens tokens_g = model.tokenizer().tokenize(*prompt_2, words);
    const int chunks = std::max(tokens_l.chunks(), tokens_g.chunks());
    if (tokens_l.chunks() != tokens_g.chunks()) {
        const WeightedTokens empty = model.tokenizer().tokenize("", nullptr);
        pad_chunks(tokens_l, empty, chunks);
        pad_chunks(tokens_g, empty, chunks);
    }
    c.tokens = tokens_l.tokens;
    HostTensor hidden_l = clip_l->encode(runner, tokens_l.tokens, clip_skip, custom(clip_l));
    apply_token_weights(hidden_l, tokens_l.weights);
    BigGOutput g = encode_big_g(*big, runner, tokens_g.tokens, clip_skip, custom(big));
    apply_token_weights(g.hidden, tokens_g.weights);
    HostTensor hidden = concat_features(hidden_l, g.hidden);
    flatten_chunks(hidden);
    c.context = std::move(hidden);
    c.pooled = std::move(g.pooled);
    return c;
}

void add_size_conditioning(Conditioning & c, const SizeConditioning & size) {
    std::vector<float> values = {float(size.original_height), float(size.original_width), float(size.crop_top), float(size.crop_left)};
    if (size.aesthetic_score) {
        values.push_back(*size.aesthetic_score);
    } else {
        values.push_back(float(size.target_height));
        values.push_back(float(size.target_width));
    }
    add_vector_embeddings(c, values);
}

void add_vector_embeddings(Conditioning & c, const std::vector<float> & values) {
    if (!c.has_pooled()) throw Error(ErrorCode::Internal, "size conditioning needs the pooled text embedding");
    constexpr int kDim = 256, kHalf = kDim / 2;
    std::vector<float> & y = c.vector.data;
    y = c.pooled.data;
    for (float v : values) {
        const size_t at = y.size();
        y.resize(at + kDim);
        for (int i = 0; i < kHalf; ++i) {
            const float freq = std::exp(-std::log(10000.0f) * static_cast<float>(i) / static_cast<float>(kHalf));
            const float arg = v * freq;
            y[at + i] = std::cos(arg);
            y[at + kHalf + i] = std::sin(arg);
        }
    }
    c.vector.ne[0] = static_cast<int64_t>(y.size());
    c.vector.ne[1] = c.vector.ne[2] = c.vector.ne[3] = 1;
}

}  // namespace sd
