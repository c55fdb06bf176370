#include "components/text-encoder.h"

#include <string>

#include "core/errors.h"

namespace sd {

TextEncoder::TextEncoder(const TensorSource & weights, TextEncoderParams params, bool final_layer_norm)
    : weights_(weights), params_(std::move(params)), final_layer_norm_(final_layer_norm) {
    if (params_.width <= 0 || params_.layers <= 0 || params_.heads <= 0 || params_.width % params_.heads != 0 ||
        params_.vocab <= 0 || params_.max_positions < kClipChunkLength) {
        throw_invalid("text encoder parameters out of range (width " + std::to_string(params_.width) + ", layers " +
                      std::to_string(params_.layers) + ", heads " + std::to_string(params_.heads) + ", positions " +
                      std::to_string(params_.max_positions) + ")");
    }
}

namespace {

// The host side of CustomTokenInputs: the ids with custom ones set to 0 (a valid row, masked
// out), the custom rows at their places, and the keep mask. Empty `rows` when no token is custom.
struct CustomHostInputs {
    std::vector<int32_t> ids;
    std::vector<float> rows, keep;
};

CustomHostInputs split_custom_tokens(const std::vector<int32_t> & tokens, const CustomTokens * custom) {
    CustomHostInputs in;
    in.ids = tokens;
    if (!custom) return in;
    bool any = false;
    for (int32_t id : tokens) any = any || id >= custom->first_id;
    if (!any) return in;
    const int64_t width = custom->width;
    in.rows.assign(tokens.size() * static_cast<size_t>(width), 0.0f);
    in.keep.assign(tokens.size(), 1.0f);
    for (size_t t = 0; t < tokens.size(); ++t) {
        if (tokens[t] < custom->first_id) continue;
        const int64_t k = tokens[t] - custom->first_id;  // checked against count() by check_tokens
        std::copy_n(custom->rows.data() + k * width, width, in.rows.data() + t * static_cast<size_t>(width));
        in.keep[t] = 0.0f;
        in.ids[t] = 0;
    }
    return in;
}

}  // namespace

ggml_tensor * TextEncoder::build_layers(Graph & g, ggml_tensor * ids, int last, const CustomTokenInputs * custom) const {
    const int64_t width = params_.width, tokens = ids->ne[0];
    ggml_tensor * tok = g.w.get("text_model.embeddings.token_embedding.weight");
    ggml_tensor * pos = g.w.get("text_model.embeddings.position_embedding.weight");
    if (tok->ne[0] != width || tok->ne[1] < params_.vocab) {
        throw Error(ErrorCode::ModelFormat, "token_embedding does not match width " + std::to_string(width) +
                                                " and vocabulary " + std::to_string(params_.vocab));
    }
    if (pos->ne[0] != width || pos->ne[1] < tokens) {
        throw Error(ErrorCode::ModelFormat, "position_embedding has fewer than " + std::to_string(tokens) + " positions");
    }
    const int64_t chunks = ids->ne[1];
    ggml_tensor * x = ggml_get_rows(g.ctx, tok, ggml_reshape_1d(g.ctx, ids, tokens * chunks));  // f32
    x = ggml_reshape_3d(g.ctx, x, width, tokens, chunks);
    if (custom) {
        if (custom->rows->ne[0] != width || custom->rows->ne[1] != tokens || custom->rows->ne[2] != chunks ||
            custom->keep->ne[0] != 1 || custom->keep->ne[1] != tokens || custom->keep->ne[2] != chunks) {
            throw Error(ErrorCode::Internal, "custom token inputs do not match the token ids");
        }
        // x * 1 + 0 and 0 * x + row are exact: base rows unchanged, custom rows as stored.
        x = ggml_add(g.ctx, ggml_mul(g.ctx, x, custom->keep), custom->rows);
    }
    ggml_tensor * positions = ggml_view_2d(g.ctx, pos, width, tokens, pos->nb[1], 0);
    if (positions->type != GGML_TYPE_F32) positions = ggml_cast(g.ctx, positions, GGML_TYPE_F32);
    x = named(ggml_add(g.ctx, x, positions), "text_model.embeddings");

    // OpenCLIP ViT-H/bigG use gelu, OpenAI CLIP quick_gelu (sd.cpp picks by width when unsaid).
    const bool gelu = params_.activation.empty() ? (width == 1024 || width == 1280) : params_.activation == "gelu";
    for (int i = 0; i <= last; ++i) {
        const std::string p = "text_model.encoder.layers." + std::to_string(i);
        ggml_tensor * h = layer_norm(g, x, p + ".layer_norm1");
        ggml_tensor * q = linear(g, h, p + ".self_attn.q_proj");
        ggml_tensor * k = linear(g, h, p + ".self_attn.k_proj");
        ggml_tensor * v = linear(g, h, p + ".self_attn.v_proj");
        h = ops::attention(g.ctx, q, k, v, params_.heads, true, p + ".self_attn", g.cpu);
        x = linear(g, h, p + ".self_attn.out_proj", x);  // x + out_proj(h)

        h = linear(g, layer_norm(g, x, p + ".layer_norm2"), p + ".mlp.fc1");
        h = gelu ? ggml_gelu(g.ctx, h) : ggml_gelu_quick(g.ctx, h);
        x = named(linear(g, h, p + ".mlp.fc2", x), p);
    }
    return x;
}

ggml_tensor * TextEncoder::build(Graph & g, ggml_tensor * ids, int clip_skip, const CustomTokenInputs * custom) const {
    ggml_tensor * x = build_layers(g, ids, params_.layers - clip_skip, custom);  // the last layer that runs
    return named(final_layer_norm_ ? layer_norm(g, x, "text_model.final_layer_norm") : x, "text_hidden");
}

ggml_tensor * TextEncoder::build_pooled(Graph & g, ggml_tensor * ids, ggml_tensor * eos_index,
                                        const CustomTokenInputs * custom) const {
    if (!g.w.find("text_projection.weight")) throw Error(ErrorCode::ModelFormat, "the text encoder has no text_projection for its pooled output");
    ggml_tensor * x = layer_norm(g, build_layers(g, ids, params_.layers - 1, custom), "text_model.final_layer_norm");
    x = ggml_reshape_2d(g.ctx, x, x->ne[0], x->ne[1]);         // [width, 77]
    ggml_tensor * eos = ggml_get_rows(g.ctx, x, eos_index);    // [width, 1]
    return named(linear(g, eos, "text_projection"), "text_pooled");
}

bool TextEncoder::check_tokens(const std::vector<int32_t> & tokens, const CustomTokens * custom) const {
    if (tokens.empty() || tokens.size() % kClipChunkLength != 0) {
        throw_invalid("text encoder input must be a positive multiple of 77 tokens; received " +
                      std::to_string(tokens.size()));
    }
    if (custom && (custom->first_id < params_.vocab || custom->width != params_.width ||
                   static_cast<int64_t>(custom->rows.size()) != custom->count() * custom->width)) {
        throw Error(ErrorCode::Internal, "custom token rows do not fit this text encoder (width " +
                                             std::to_string(params_.width) + ", vocabulary " + std::to_string(params_.vocab) + ")");
    }
    const int64_t custom_end = custom ? int64_t(custom->first_id) + custom->count() : 0;
    bool any_custom = false;
    for (int32_t id : tokens) {
        // An id outside the table would make get_rows read out of bounds.
        if (custom && id >= custom->first_id && id < custom_end) {
            any_custom = true;
            continue;
        }
        if (id < 0 || id >= params_.vocab) {
            throw_invalid("token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                          std::to_string(params_.vocab - 1) + ")" +
                          (custom ? " and the " + std::to_string(custom->count()) + " custom tokens" : std::string()));
        }
    }
    return any_custom;
}

HostTensor TextEncoder::encode(GraphRunner & runner, const std::vector<int32_t> & tokens, int clip_skip,
                               const CustomTokens * custom) const {
    const bool any_custom = check_tokens(tokens, custom);
    if (clip_skip < 1 || clip_skip > params_.layers) {
        throw_invalid("clipSkip must be between 1 and " + std::to_string(params_.layers) + "; received " +
                      std::to_string(clip_skip));
    }
    const int64_t chunks = static_cast<int64_t>(tokens.size()) / kClipChunkLength;
    const CustomHostInputs in = split_custom_tokens(tokens, any_custom ? custom : nullptr);
    // The custom-row inputs add two nodes: a graph of its own.
    const std::string key = "text:" + std::to_string(chunks) + ":" + std::to_string(clip_skip) + (any_custom ? ":custom" : "");
    return runner.run(key, [&](GraphBuilder & b) {
        Graph g = component_graph(b, weights_, runner);
        ggml_tensor * ids = b.input_i32("tokens", in.ids.data(), kClipChunkLength, chunks);
        if (!any_custom) return build(g, ids, clip_skip);
        const CustomTokenInputs ci{b.input_f32("custom_rows", in.rows.data(), params_.width, kClipChunkLength, chunks),
                                   b.input_f32("custom_keep", in.keep.data(), 1, kClipChunkLength, chunks)};
        return build(g, ids, clip_skip, &ci);
    });
}

HostTensor TextEncoder::encode_pooled(GraphRunner & runner, const std::vector<int32_t> & tokens, int eos_index,
                                      const CustomTokens * custom) const {
    const bool any_custom = check_tokens(tokens, custom);
    if (tokens.size() != static_cast<size_t>(kClipChunkLength)) throw_invalid("the pooled output takes one chunk of 77 tokens");
    if (eos_index < 0 || eos_index >= kClipChunkLength) throw_invalid("the end token's index must be within the chunk");
    const int32_t index = eos_index;
    const CustomHostInputs in = split_custom_tokens(tokens, any_custom ? custom : nullptr);
    return runner.run(any_custom ? "text-pooled:custom" : "text-pooled", [&](GraphBuilder & b) {
        Graph g = component_graph(b, weights_, runner);
        ggml_tensor * ids = b.input_i32("tokens", in.ids.data(), kClipChunkLength, 1);
        ggml_tensor * eos = b.input_i32("eos", &index, 1);
        if (!any_custom) return build_pooled(g, ids, eos);
        const CustomTokenInputs ci{b.input_f32("custom_rows", in.rows.data(), params_.width, kClipChunkLength, 1),
                                   b.input_f32("custom_keep", in.keep.data(), 1, kClipChunkLength, 1)};
        return build_pooled(g, ids, eos, &ci);
    });
}

void apply_token_weights(HostTensor & hidden, const std::vector<float> & weights) {
    const int64_t width = hidden.ne[0], tokens = hidden.ne[1] * hidden.ne[2] * hidden.ne[3];
    if (static_cast<int64_t>(weights.size()) != tokens || tokens % kClipChunkLength != 0 ||
        static_cast<int64_t>(hidden.data.size()) != width * tokens) {
        throw_invalid("prompt weights (" + std::to_string(weights.size()) + ") do not match the " +
                      std::to_string(tokens) + " encoded tokens");
    }
    const int64_t chunk_size = width * kClipChunkLength;
    for (int64_t c = 0; c < tokens / kClipChunkLength; ++c) {
        float * chunk = hidden.data.data() + c * chunk_size;
        double before = 0.0, after = 0.0;
        for (int64_t t = 0; t < kClipChunkLength; ++t) {
            const float wt = weights[static_cast<size_t>(c * kClipChunkLength + t)];
            for (int64_t i = 0; i < width; ++i) {
                float & v = chunk[t * width + i];
                before += v;
                v *= wt;
                after += v;
            }
        }
        const float original_mean = static_cast<float>(before / static_cast<double>(chunk_size));
        const float new_mean = static_cast<float>(after / static_cast<double>(chunk_size));
        if (new_mean == 0.0f) continue;  // nothing sensible to rescale by (all weights 0)
        const float scale = original_mean / new_mean;
        for (int64_t i = 0; i < chunk_size; ++i) chunk[i] *= scale;
    }
}

HostTensor encode_prompt(GraphRunner & runner, const TextEncoder & encoder, const WeightedTokens & prompt,
                         int clip_skip, const CustomTokens * custom) {
    HostTensor hidden = encoder.encode(runner, prompt.tokens, clip_skip, custom);
    apply_token_weights(hidden, prompt.weights);
    // [chunks, 77, width] -> [1, chunks*77, width]: the chunks follow each other in memory.
    hidden.ne[1] *= hidden.ne[2];
    hidden.ne[2] = 1;
    return hidden;
}

}  // namespace sd
