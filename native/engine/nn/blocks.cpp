#include "nn/blocks.h"

#include "core/errors.h"
#include "io/model-file.h"
#include "model/weights.h"
#include "nn/ops.h"
#include "runtime/graph-runner.h"

namespace sd {

std::string shape_text(const ggml_tensor * t) {
    std::string s = "[";
    for (int d = ggml_n_dims(t) - 1; d >= 0; --d) s += std::to_string(t->ne[d]) + (d ? ", " : "]");
    return s;
}

namespace {

[[noreturn]] void bad_weight(const ggml_tensor * w, const std::string & what) {
    throw Error(ErrorCode::ModelFormat, std::string("tensor '") + w->name + "' has shape " + shape_text(w) + "; " + what);
}

// ggml wants f32 for element-wise operands; norms and biases are f32 already, but a model may
// store e.g. an f16 position embedding.
ggml_tensor * as_f32(ggml_context * ctx, ggml_tensor * t) {
    return t->type == GGML_TYPE_F32 ? t : ggml_cast(ctx, t, GGML_TYPE_F32);
}

// "<prefix>.bias" as f32 after checking its size, or nullptr when the model has none.
ggml_tensor * find_bias(Graph & g, const std::string & prefix, int64_t channels) {
    ggml_tensor * bias = g.w.find(prefix + ".bias");
    if (!bias) return nullptr;
    if (ggml_nelements(bias) != channels) bad_weight(bias, "expected " + std::to_string(channels) + " elements");
    return as_f32(g.ctx, bias);
}

}  // namespace

ggml_tensor * TensorSource::get(const std::string & name) const {
    ggml_tensor * t = find(name);
    if (!t) throw Error(ErrorCode::ModelFormat, "the model has no tensor '" + name + "'");
    return t;
}

ggml_tensor * ComponentTensors::find(const std::string & name) const { return weights_.find(name); }

const MappedRange * ComponentTensors::mapped_range(const ggml_tensor * t) const { return weights_.mapped_range(t); }

bool ComponentTensors::quantized() const { return weights_.quantized(); }

namespace {

void release_pages_op(ggml_tensor *, int ith, int, void * userdata) {
    if (ith != 0) return;
    const auto * r = static_cast<const MappedRange *>(userdata);
    r->file->drop_pages(r->offset, r->size);
}

}  // namespace

ggml_tensor * release_after_use(Graph & g, ggml_tensor * y, ggml_tensor * w) {
    // A reshaped weight is a view: its pages are the viewed tensor's. Only CPU models map
    // weights, so this never adds a node to another backend's graph.
    const ggml_tensor * base = w->view_src ? w->view_src : w;
    const MappedRange * range = g.w.mapped_range(base);
    if (!range) return y;
    return ggml_custom_inplace(g.ctx, y, &w, 1, release_pages_op, 1, const_cast<MappedRange *>(range));
}

ggml_tensor * named(ggml_tensor * t, const std::string & name) {
    ggml_format_name(t, "%s", name.c_str());
    return t;
}

Graph component_graph(GraphBuilder & b, const TensorSource & weights, GraphRunner & runner) {
    const WeightAdapter * adapter = runner.weight_adapter();
    const TensorSource & w = adapter ? adapter->weights(weights) : weights;
    Graph g{b.ctx(), w, ops::graph_kernels(runner.backend(), w, runner.abort_slot())};
    if (adapter) g.patches = adapter->runtime(weights);
    return g;
}

namespace {

const std::vector<RuntimeTerm> * patch_terms(const Graph & g, const std::string & weight) {
    if (!g.patches) return nullptr;
    auto it = g.patches->find(weight);
    return it == g.patches->end() ? nullptr : &it->second;
}

// One term on tokens x ne {in, L, N}: ne {out, L, N}. Factors of linear and 1x1 weights are 2-D
// (adapters/lora.cpp stores them so).
ggml_tensor * term_on_tokens(Graph & g, const RuntimeTerm & t, ggml_tensor * x) {
    ggml_tensor * d;
    if (t.dense) {
        d = ggml_mul_mat(g.ctx, t.dense, x);
    } else {
        ggml_tensor * h = ggml_mul_mat(g.ctx, t.down, x);
        if (t.mid) h = ggml_mul_mat(g.ctx, t.mid, h);
        d = ggml_mul_mat(g.ctx, t.up, h);
    }
    return t.scale != 1.0f ? ggml_scale(g.ctx, d, t.scale) : d;
}

ggml_tensor * add_term(Graph & g, ggml_tensor * sum, ggml_tensor * d) { return sum ? ggml_add(g.ctx, sum, d) : d; }

// The run-time terms of a linear (or 1x1) weight on tokens x: ne {out, L, N}, or null.
ggml_tensor * token_patch(Graph & g, const std::string & weight, ggml_tensor * x) {
    const std::vector<RuntimeTerm> * terms = patch_terms(g, weight);
    if (!terms) return nullptr;
    ggml_tensor * sum = nullptr;
    for (const RuntimeTerm & t : *terms) sum = add_term(g, sum, term_on_tokens(g, t, x));
    return sum;
}

// One term of a k x k kernel on an image x ne {W, H, C, N}: ne {W', H', out, N}. Its factors
// are 4-D f16 kernels.
ggml_tensor * term_on_image(Graph & g, const RuntimeTerm & t, ggml_tensor * x, int stride, int padding) {
    ggml_tensor * d;
    if (t.dense) {
        d = ops::conv2d(g.ctx, g.cpu, t.dense, x, stride, padding, nullptr, nullptr);
    } else if (t.mid) {  // Tucker: 1x1 down, the spatial core, 1x1 up
        ggml_tensor * h = ops::conv2d(g.ctx, g.cpu, t.down, x, 1, 0, nullptr, nullptr);
        h = ops::conv2d(g.ctx, g.cpu, t.mid, h, stride, padding, nullptr, nullptr);
        d = ops::conv2d(g.ctx, g.cpu, t.up, h, 1, 0, nullptr, nullptr);
    } else {
        ggml_tensor * h = ops::conv2d(g.ctx, g.cpu, t.down, x, stride, padding, nullptr, nullptr);
        d = ops::conv2d(g.ctx, g.cpu, t.up, h, 1, 0, nullptr, nullptr);
    }
    return t.scale != 1.0f ? ggml_scale(g.ctx, d, t.scale) : d;
}

// The run-time terms of a convolution kernel on an image x: ne {W', H', out, N}, or null.
ggml_tensor * image_patch(Graph & g, const std::string & weight, ggml_tensor * x, int stride, int padding) {
    const std::vector<RuntimeTerm> * terms = patch_terms(g, weight);
    if (!terms) return nullptr;
    ggml_tensor * sum = nullptr;
    for (const RuntimeTerm & t : *terms) {
        const bool one_by_one = ggml_n_dims(t.dense ? t.dense : t.down) <= 2;  // a product over channels
        sum = add_term(g, sum, one_by_one ? ops::tokens_to_image(g.ctx, term_on_tokens(g, t, ops::image_to_tokens(g.ctx, x)), x->ne[0], x->ne[1])
                                          : term_on_image(g, t, x, stride, padding));
    }
    return sum;
}

ggml_tensor * add_patch(Graph & g, ggml_tensor * y, ggml_tensor * patch) { return patch ? ggml_add(g.ctx, y, patch) : y; }

}  // namespace

namespace {

// "<prefix>.weight" as a convolution kernel over x's channels (a 2-D [out, in] as 1x1).
ggml_tensor * conv_weight(Graph & g, ggml_tensor * x, const std::string & prefix, int padding) {
    ggml_tensor * w = g.w.get(prefix + ".weight");
    if (ggml_n_dims(w) == 2) w = ggml_reshape_4d(g.ctx, w, 1, 1, w->ne[0], w->ne[1]);  // linear-stored 1x1
    if (w->ne[2] != x->ne[2]) {
        bad_weight(w, "expected " + std::to_string(x->ne[2]) + " input channels for a convolution on " + shape_text(x));
    }
    if (x->ne[0] + 2 * padding < w->ne[0] || x->ne[1] + 2 * padding < w->ne[1]) {
        throw Error(ErrorCode::InvalidArgument, "input " + shape_text(x) + " is smaller than the kernel of '" + prefix + "'");
    }
    return w;
}

// A residual must have the layer's output shape (ggml_add would abort on anything else).
void check_residual(const ggml_tensor * w, const ggml_tensor * residual, const int64_t (&ne)[4]) {
    if (!residual) return;
    for (int d = 0; d < 4; ++d) {
        if (residual->ne[d] != ne[d]) {
            bad_weight(w, "its output does not have the shape " + shape_text(residual) + " of the residual it is added to");
        }
    }
}

}  // namespace

ggml_tensor * linear(Graph & g, ggml_tensor * x, const std::string & prefix, ggml_tensor * residual) {
    ggml_tensor * w = g.w.get(prefix + ".weight");
    if (ggml_n_dims(w) != 2 || w->ne[0] != x->ne[0]) {
        bad_weight(w, "expected [out, " + std::to_string(x->ne[0]) + "] for a linear layer on " + shape_text(x));
    }
    const int64_t out[4] = {w->ne[1], x->ne[1], x->ne[2], x->ne[3]};
    check_residual(w, residual, out);
    ggml_tensor * y = ops::linear(g.ctx, g.cpu, w, x, find_bias(g, prefix, w->ne[1]), residual);
    y = release_after_use(g, y, w);
    return named(add_patch(g, y, token_patch(g, prefix + ".weight", x)), prefix);
}

ggml_tensor * conv2d(Graph & g, ggml_tensor * x, const std::string & prefix, int stride, int padding,
                     ggml_tensor * residual) {
    ggml_tensor * w = conv_weight(g, x, prefix, padding);
    const int64_t out[4] = {(x->ne[0] + 2 * padding - w->ne[0]) / stride + 1, (x->ne[1] + 2 * padding - w->ne[1]) / stride + 1,
                            w->ne[3], x->ne[3]};
    check_residual(w, residual, out);
    ggml_tensor * bias = find_bias(g, prefix, w->ne[3]);
    if (g.conv_scale != 1.0f) {
        ggml_tensor * y = ops::conv2d(g.ctx, g.cpu, w, ggml_scale(g.ctx, x, g.conv_scale), stride, padding, nullptr, nullptr);
        y = ggml_scale(g.ctx, release_after_use(g, y, w), 1.0f / g.conv_scale);
        if (bias) y = ggml_add(g.ctx, y, ggml_reshape_4d(g.ctx, bias, 1, 1, bias->ne[0], 1));
        if (residual) y = ggml_add(g.ctx, y, residual);
        return named(add_patch(g, y, image_patch(g, prefix + ".weight", x, stride, padding)), prefix);
    }
    ggml_tensor * y = ops::conv2d(g.ctx, g.cpu, w, x, stride, padding, bias, residual);
    y = release_after_use(g, y, w);
    return named(add_patch(g, y, image_patch(g, prefix + ".weight", x, stride, padding)), prefix);
}

ggml_tensor * group_norm(Graph & g, ggml_tensor * x, const std::string & prefix, bool silu, ggml_tensor * add) {
    constexpr int kGroups = 32;
    const int64_t channels = x->ne[2];
    ggml_tensor * w = g.w.get(prefix + ".weight");
    ggml_tensor * b = g.w.get(prefix + ".bias");
    if (ggml_nelements(w) != channels || ggml_nelements(b) != channels) {
        bad_weight(w, "expected " + std::to_string(channels) + " elements (group norm on " + shape_text(x) + ")");
    }
    if (channels % kGroups != 0) bad_weight(w, "group norm needs a channel count divisible by 32");
    if (add && (add->type != GGML_TYPE_F32 || ggml_nelements(add) != channels * x->ne[3])) {
        throw Error(ErrorCode::Internal, "group norm '" + prefix + "': the addend must be f32 [N, C]");
    }
    return named(ops::group_norm(g.ctx, g.cpu, x, as_f32(g.ctx, w), as_f32(g.ctx, b), kGroups, 1e-6f, silu, add), prefix);
}

ggml_tensor * layer_norm(Graph & g, ggml_tensor * x, const std::string & prefix, float eps) {
    ggml_tensor * w = g.w.get(prefix + ".weight");
    ggml_tensor * b = g.w.find(prefix + ".bias");
    if (ggml_nelements(w) != x->ne[0]) {
        bad_weight(w, "expected " + std::to_string(x->ne[0]) + " elements (layer norm on " + shape_text(x) + ")");
    }
    if (b && ggml_nelements(b) != x->ne[0]) bad_weight(b, "expected " + std::to_string(x->ne[0]) + " elements");
    return named(ops::layer_norm(g.ctx, g.cpu, x, as_f32(g.ctx, w), b ? as_f32(g.ctx, b) : nullptr, eps), prefix);
}

ggml_tensor * timestep_embedding(ggml_context * ctx, ggml_tensor * timesteps, int dim, int max_period) {
    return named(ggml_timestep_embedding(ctx, timesteps, dim, max_period), "timestep_embedding");
}

// ---------------------------------------------------------------- UNet

ggml_tensor * unet_resblock(Graph & g, ggml_tensor * x, ggml_tensor * emb, const std::string & prefix) {
    ggml_tensor * h = conv2d(g, group_norm(g, x, prefix + ".in_layers.0", true), prefix + ".in_layers.2", 1, 1);
    const int64_t channels = h->ne[2];

    ggml_tensor * e = linear(g, ggml_silu(g.ctx, emb), prefix + ".emb_layers.1");  // [N, channels]
    if (e->ne[0] != channels) bad_weight(g.w.get(prefix + ".emb_layers.1.weight"), "expected " + std::to_string(channels) + " outputs");

    ggml_tensor * skip = x;
    if (g.w.find(prefix + ".skip_connection.weight")) {
        skip = conv2d(g, x, prefix + ".skip_connection", 1, 0);
    } else if (x->ne[2] != channels) {
        throw Error(ErrorCode::ModelFormat, "the model has no tensor '" + prefix + ".skip_connection.weight' although '" +
                                                prefix + "' changes " + std::to_string(x->ne[2]) + " channels to " +
                                                std::to_string(channels));
    }
    // out_layers.0 normalizes h + e (the time embedding per image and channel, added in the norm's
    // kernel); skip + out_layers.3(...), the addition inside the convolution.
    h = group_norm(g, h, prefix + ".out_layers.0", true, e);
    return named(conv2d(g, h, prefix + ".out_layers.3", 1, 1, skip), prefix);
}

namespace {

// GEGLU feed-forward: proj to 2*inner, value * gelu(gate), proj back.
ggml_tensor * geglu_ff(Graph & g, ggml_tensor * x, const std::string & prefix, ggml_tensor * residual) {
    ggml_tensor * h = linear(g, x, prefix + ".net.0.proj");  // [N, L, 2*inner]
    if (h->ne[0] % 2 != 0) bad_weight(g.w.get(prefix + ".net.0.proj.weight"), "expected an even number of outputs (GEGLU)");
    return linear(g, named(ops::geglu(g.ctx, g.cpu, h), prefix + ".geglu"), prefix + ".net.2", residual);
}

// q from x, k/v from context (or x): to_q/to_k/to_v without bias, to_out.0 with bias.
ggml_tensor * cross_attention(Graph & g, ggml_tensor * x, ggml_tensor * context, const std::string & prefix, int heads,
                              ggml_tensor * residual) {
    ggml_tensor * q = linear(g, x, prefix + ".to_q");
    ggml_tensor * k = linear(g, context, prefix + ".to_k");
    ggml_tensor * v = linear(g, context, prefix + ".to_v");
    ggml_tensor * a = ops::attention(g.ctx, q, k, v, heads, false, prefix + ".attn", g.cpu);
    return linear(g, a, prefix + ".to_out.0", residual);
}

// SD1's 1x1 proj_in: image -> tokens.
ggml_tensor * proj_to_tokens(Graph & g, ggml_tensor * x, const std::string & prefix) {
    ggml_tensor * w = conv_weight(g, x, prefix, 0);
    if (w->ne[0] != 1 || w->ne[1] != 1) bad_weight(w, "expected a 1x1 kernel");
    ggml_tensor * y = ops::conv1x1_to_tokens(g.ctx, g.cpu, w, x, find_bias(g, prefix, w->ne[3]));
    y = release_after_use(g, y, w);
    if (patch_terms(g, prefix + ".weight")) y = add_patch(g, y, token_patch(g, prefix + ".weight", ops::image_to_tokens(g.ctx, x)));
    return named(y, prefix);
}

// SD1's 1x1 proj_out: tokens -> image, + residual.
ggml_tensor * proj_to_image(Graph & g, ggml_tensor * x, const std::string & prefix, int64_t w_px, int64_t h_px,
                            ggml_tensor * residual) {
    ggml_tensor * w = g.w.get(prefix + ".weight");
    if (ggml_n_dims(w) == 2) w = ggml_reshape_4d(g.ctx, w, 1, 1, w->ne[0], w->ne[1]);
    if (w->ne[0] != 1 || w->ne[1] != 1 || w->ne[2] != x->ne[0]) {
        bad_weight(w, "expected a 1x1 kernel over " + std::to_string(x->ne[0]) + " channels");
    }
    if (residual->ne[0] != w_px || residual->ne[1] != h_px || residual->ne[2] != w->ne[3]) {
        bad_weight(w, "expected " + std::to_string(residual->ne[2]) + " output channels (the block's input)");
    }
    ggml_tensor * y = ops::linear_to_image(g.ctx, g.cpu, w, x, find_bias(g, prefix, w->ne[3]), residual, w_px, h_px);
    y = release_after_use(g, y, w);
    if (ggml_tensor * p = token_patch(g, prefix + ".weight", x)) y = ggml_add(g.ctx, y, ops::tokens_to_image(g.ctx, p, w_px, h_px));
    return named(y, prefix);
}

}  // namespace

ggml_tensor * spatial_transformer(Graph & g, ggml_tensor * x, ggml_tensor * context, const std::string & prefix,
                                  int heads, int depth) {
    const int64_t w = x->ne[0], h = x->ne[1];
    ggml_tensor * in = x;
    x = group_norm(g, x, prefix + ".norm");
    // SD1 projects with 1x1 convolutions, SD2/SDXL with linear layers.
    const bool conv_proj = ggml_n_dims(g.w.get(prefix + ".proj_in.weight")) == 4;
    if (conv_proj) {
        x = proj_to_tokens(g, x, prefix + ".proj_in");
    } else {
        x = linear(g, ops::image_to_tokens(g.ctx, x), prefix + ".proj_in");
    }
    for (int i = 0; i < depth; ++i) {
        const std::string b = prefix + ".transformer_blocks." + std::to_string(i);
        // Each residual (x + ...) is added by the block's last linear layer.
        ggml_tensor * n1 = layer_norm(g, x, b + ".norm1");
        x = cross_attention(g, n1, n1, b + ".attn1", heads, x);
        x = cross_attention(g, layer_norm(g, x, b + ".norm2"), context, b + ".attn2", heads, x);
        x = named(geglu_ff(g, layer_norm(g, x, b + ".norm3"), b + ".ff", x), b);
    }
    if (conv_proj) return named(proj_to_image(g, x, prefix + ".proj_out", w, h, in), prefix);
    x = ops::tokens_to_image(g.ctx, linear(g, x, prefix + ".proj_out"), w, h);
    return named(ggml_add(g.ctx, x, in), prefix);
}

ggml_tensor * unet_downsample(Graph & g, ggml_tensor * x, const std::string & prefix) {
    return named(conv2d(g, x, prefix + ".op", 2, 1), prefix);
}

ggml_tensor * upsample(Graph & g, ggml_tensor * x, const std::string & prefix) {
    x = ggml_upscale(g.ctx, x, 2, GGML_SCALE_MODE_NEAREST);
    return named(conv2d(g, x, prefix + ".conv", 1, 1), prefix);
}

// ---------------------------------------------------------------- VAE

ggml_tensor * vae_resblock(Graph & g, ggml_tensor * x, const std::string & prefix) {
    ggml_tensor * h = conv2d(g, group_norm(g, x, prefix + ".norm1", true), prefix + ".conv1", 1, 1);
    ggml_tensor * skip = x;
    if (g.w.find(prefix + ".nin_shortcut.weight")) {
        skip = conv2d(g, x, prefix + ".nin_shortcut", 1, 0);
    } else if (x->ne[2] != h->ne[2]) {
        throw Error(ErrorCode::ModelFormat, "the model has no tensor '" + prefix + ".nin_shortcut.weight' although '" +
                                                prefix + "' changes the channel count");
    }
    // skip + conv2(...), the addition inside the convolution.
    return named(conv2d(g, group_norm(g, h, prefix + ".norm2", true), prefix + ".conv2", 1, 1, skip), prefix);
}

ggml_tensor * vae_attention(Graph & g, ggml_tensor * x, const std::string & prefix) {
    const int64_t w = x->ne[0], h = x->ne[1];
    ggml_tensor * n = group_norm(g, x, prefix + ".norm");
    ggml_tensor * q = ops::image_to_tokens(g.ctx, conv2d(g, n, prefix + ".q", 1, 0));
    ggml_tensor * k = ops::image_to_tokens(g.ctx, conv2d(g, n, prefix + ".k", 1, 0));
    ggml_tensor * v = ops::image_to_tokens(g.ctx, conv2d(g, n, prefix + ".v", 1, 0));
    ggml_tensor * a = ops::tokens_to_image(g.ctx, ops::attention(g.ctx, q, k, v, 1, false, prefix + ".attn", g.cpu), w, h);
    return named(conv2d(g, a, prefix + ".proj_out", 1, 0, x), prefix);
}

}  // namespace sd
