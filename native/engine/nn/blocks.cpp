#include "nn/blocks.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu-kernels.h"
#include "core/errors.h"
#include "io/model-file.h"
#include "model/weights.h"

namespace sd {

namespace {

std::string shape_text(const ggml_tensor * t) {
    std::string s = "[";
    for (int d = ggml_n_dims(t) - 1; d >= 0; --d) s += std::to_string(t->ne[d]) + (d ? ", " : "]");
    return s;
}

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

ggml_tensor * add_bias(Graph & g, ggml_tensor * x, ggml_tensor * bias, int64_t channels, int channel_dim) {
    if (!bias) return x;
    if (channel_dim == 2) bias = ggml_reshape_4d(g.ctx, bias, 1, 1, channels, 1);
    return ggml_add(g.ctx, x, bias);
}

// cpu-kernels.h takes f16 weights and f32 activations with unit element stride...
bool cpu_f16_product(const Graph & g, const ggml_tensor * w, const ggml_tensor * x) {
    return g.cpu.f16 && w->type == GGML_TYPE_F16 && x->type == GGML_TYPE_F32 && x->nb[0] == sizeof(float);
}

// ...and q8_0 / q4_0 weights against contiguous f32 rows.
bool cpu_quant_product(const Graph & g, const ggml_tensor * w, const ggml_tensor * x) {
    return g.cpu.quant && (w->type == GGML_TYPE_Q8_0 || w->type == GGML_TYPE_Q4_0) && x->type == GGML_TYPE_F32 &&
           ggml_is_contiguous(x);
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

CpuKernels graph_kernels(ggml_backend_t backend, const TensorSource & weights) {
    CpuKernels k = cpu_kernels_for(backend);
    const char * env = std::getenv("SDNODE_CPU_AMX");
    const bool all = env && std::strcmp(env, "all") == 0;  // speed over agreement, for every model
    if (k.amx && !all && weights.quantized()) k.amx = false;
    return k;
}

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

namespace {

// Whether `t` can be added inside sdnode's kernel: contiguous f32 of exactly this shape.
bool fusable(const ggml_tensor * t, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    return t && t->type == GGML_TYPE_F32 && ggml_is_contiguous(t) && t->ne[0] == ne0 && t->ne[1] == ne1 &&
           t->ne[2] == ne2 && t->ne[3] == ne3;
}

}  // namespace

ggml_tensor * linear(Graph & g, ggml_tensor * x, const std::string & prefix, ggml_tensor * residual) {
    ggml_tensor * w = g.w.get(prefix + ".weight");
    if (ggml_n_dims(w) != 2 || w->ne[0] != x->ne[0]) {
        bad_weight(w, "expected [out, " + std::to_string(x->ne[0]) + "] for a linear layer on " + shape_text(x));
    }
    ggml_tensor * bias = find_bias(g, prefix, w->ne[1]);
    const bool f16 = cpu_f16_product(g, w, x);
    ggml_tensor * fused = f16 && fusable(residual, w->ne[1], x->ne[1], x->ne[2], x->ne[3]) ? residual : nullptr;
    ggml_tensor * y = f16                          ? cpu_linear_f16(g.ctx, w, x, bias, fused, 0, 0, g.cpu.amx)
                      : cpu_quant_product(g, w, x) ? cpu_linear_q(g.ctx, w, x, bias)
                                                   : add_bias(g, ggml_mul_mat(g.ctx, w, x), bias, w->ne[1], 0);
    y = release_after_use(g, y, w);
    if (residual && !fused) y = ggml_add(g.ctx, residual, y);
    return named(y, prefix);
}

ggml_tensor * conv2d(Graph & g, ggml_tensor * x, const std::string & prefix, int stride, int padding,
                     ggml_tensor * residual) {
    ggml_tensor * w = g.w.get(prefix + ".weight");
    if (ggml_n_dims(w) == 2) w = ggml_reshape_4d(g.ctx, w, 1, 1, w->ne[0], w->ne[1]);  // linear-stored 1x1
    if (w->ne[2] != x->ne[2]) {
        bad_weight(w, "expected " + std::to_string(x->ne[2]) + " input channels for a convolution on " + shape_text(x));
    }
    if (x->ne[0] + 2 * padding < w->ne[0] || x->ne[1] + 2 * padding < w->ne[1]) {
        throw Error(ErrorCode::InvalidArgument, "input " + shape_text(x) + " is smaller than the kernel of '" + prefix + "'");
    }
    // ggml_conv_2d is im2col (in the kernel's type) + matmul, as stable-diffusion.cpp runs it;
    // cpu_conv2d_f16 computes the same numbers (bias included) without the im2col buffer.
    ggml_tensor * bias = find_bias(g, prefix, w->ne[3]);
    const int64_t out_w = (x->ne[0] + 2 * padding - w->ne[0]) / stride + 1, out_h = (x->ne[1] + 2 * padding - w->ne[1]) / stride + 1;
    const bool f16 = cpu_f16_product(g, w, x);
    ggml_tensor * fused = f16 && fusable(residual, out_w, out_h, w->ne[3], x->ne[3]) ? residual : nullptr;
    ggml_tensor * y =
        f16 ? cpu_conv2d_f16(g.ctx, w, x, stride, padding, bias, fused, false, g.cpu.amx)
            : add_bias(g, ggml_conv_2d(g.ctx, w, x, stride, stride, padding, padding, 1, 1), bias, w->ne[3], 2);
    y = release_after_use(g, y, w);
    if (residual && !fused) y = ggml_add(g.ctx, residual, y);
    return named(y, prefix);
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
    w = as_f32(g.ctx, w);
    b = as_f32(g.ctx, b);
    // One pass instead of six where sdnode's kernel runs (same floats).
    if (g.cpu.activations && x->type == GGML_TYPE_F32 && ggml_is_contiguous(x) && ggml_is_contiguous(w) &&
        ggml_is_contiguous(b) && (!add || ggml_is_contiguous(add))) {
        return named(cpu_group_norm(g.ctx, x, w, b, kGroups, 1e-6f, silu, add), prefix);
    }
    if (add) x = ggml_add(g.ctx, x, ggml_reshape_4d(g.ctx, add, 1, 1, channels, x->ne[3]));
    ggml_tensor * y = ggml_group_norm(g.ctx, x, kGroups, 1e-6f);
    y = ggml_mul(g.ctx, y, ggml_reshape_4d(g.ctx, w, 1, 1, channels, 1));
    y = ggml_add(g.ctx, y, ggml_reshape_4d(g.ctx, b, 1, 1, channels, 1));
    return named(silu ? ggml_silu(g.ctx, y) : y, prefix);
}

ggml_tensor * layer_norm(Graph & g, ggml_tensor * x, const std::string & prefix, float eps) {
    ggml_tensor * w = g.w.get(prefix + ".weight");
    ggml_tensor * b = g.w.find(prefix + ".bias");
    if (ggml_nelements(w) != x->ne[0]) {
        bad_weight(w, "expected " + std::to_string(x->ne[0]) + " elements (layer norm on " + shape_text(x) + ")");
    }
    if (b && ggml_nelements(b) != x->ne[0]) bad_weight(b, "expected " + std::to_string(x->ne[0]) + " elements");
    w = as_f32(g.ctx, w);
    if (b) b = as_f32(g.ctx, b);
    // One pass instead of three where sdnode's kernel runs (same floats).
    if (g.cpu.activations && x->type == GGML_TYPE_F32 && ggml_is_contiguous(x) && ggml_is_contiguous(w) &&
        (!b || ggml_is_contiguous(b))) {
        return named(cpu_layer_norm(g.ctx, x, w, b, eps), prefix);
    }
    ggml_tensor * y = ggml_mul(g.ctx, ggml_norm(g.ctx, x, eps), w);
    if (b) y = ggml_add(g.ctx, y, b);
    return named(y, prefix);
}

ggml_tensor * attention(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, int heads, bool causal,
                        const std::string & name, const CpuKernels & cpu, int64_t max_scores_bytes) {
    const int64_t width = q->ne[0], lq = q->ne[1], n = q->ne[2];
    const int64_t lk = k->ne[1];
    const int64_t d = width / heads;
    if (heads <= 0 || width % heads != 0 || k->ne[0] != width || v->ne[0] != width || v->ne[1] != lk ||
        k->ne[2] != n || v->ne[2] != n) {
        throw Error(ErrorCode::ModelFormat, "attention '" + name + "': q " + shape_text(q) + ", k " + shape_text(k) +
                                                ", v " + shape_text(v) + " do not fit " + std::to_string(heads) + " heads");
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    // sdnode's fused op: the same floats, a block of one head's scores at a time.
    const auto f32_rows = [](const ggml_tensor * t) {
        return t->type == GGML_TYPE_F32 && t->nb[0] == sizeof(float) && t->ne[3] == 1;
    };
    if (cpu.f32 && cpu.activations && !causal && f32_rows(q) && f32_rows(k) && f32_rows(v)) {
        return named(cpu_attention_f32(ctx, q, k, v, heads, scale), name);
    }
    const int64_t slices = heads * n;
    const int64_t per_slice = lq * lk * static_cast<int64_t>(sizeof(float));
    const int64_t group = std::max<int64_t>(1, std::min<int64_t>(slices, max_scores_bytes / std::max<int64_t>(1, per_slice)));
    // [N, L, heads, d] -> [N*heads, L, d]; sdnode's product reads the permuted rows in place
    // (heads in one group: the views below are 3-D).
    const bool views = cpu.f32 && group == slices;
    const auto per_head = [&](ggml_tensor * t, int64_t l) {
        ggml_tensor * p = ggml_permute(ctx, ggml_reshape_4d(ctx, t, d, heads, l, n), 0, 2, 1, 3);  // [N, heads, L, d]
        return views ? p : ggml_reshape_3d(ctx, ggml_cont(ctx, p), d, l, heads * n);
    };
    q = per_head(q, lq);
    k = per_head(k, lk);
    // v as [N*heads, d, Lk] so that the second matmul contracts over Lk.
    v = ggml_reshape_3d(ctx, ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_4d(ctx, v, d, heads, lk, n), 1, 2, 0, 3)),
                        lk, d, heads * n);

    // The scores of all heads at once can be large (SD1 at 512x512: 16 x 4096 x 4096 floats,
    // 1 GiB): past max_scores_bytes, heads run in groups whose scores the allocator reuses. Every
    // op here works per head, so the numbers are the same either way.
    ggml_tensor * out = nullptr;
    for (int64_t s0 = 0; s0 < slices; s0 += group) {
        const int64_t sn = std::min(group, slices - s0);
        ggml_tensor * qs = group == slices ? q : ggml_view_3d(ctx, q, d, lq, sn, q->nb[1], q->nb[2], s0 * q->nb[2]);
        ggml_tensor * ks = group == slices ? k : ggml_view_3d(ctx, k, d, lk, sn, k->nb[1], k->nb[2], s0 * k->nb[2]);
        ggml_tensor * vs = group == slices ? v : ggml_view_3d(ctx, v, lk, d, sn, v->nb[1], v->nb[2], s0 * v->nb[2]);
        ggml_tensor * kq = cpu.f32 ? cpu_matmul_f32(ctx, ks, qs) : ggml_mul_mat(ctx, ks, qs);  // [heads, Lq, Lk]
        if (!cpu.f32) ggml_prec_set_acc(kq, GGML_PREC_F32);
        if (views) kq = ggml_reshape_3d(ctx, kq, lk, lq, slices);
        if (cpu.activations && !causal) {
            kq = cpu_soft_max(ctx, kq, scale);  // scale and softmax in one pass, same floats
        } else {
            kq = ggml_scale(ctx, kq, scale);
            if (causal) kq = ggml_diag_mask_inf(ctx, kq, 0);
            kq = ggml_soft_max(ctx, kq);
        }
        kq = named(kq, group == slices ? name + ".probs" : name + ".probs." + std::to_string(s0 / group));
        ggml_tensor * o = cpu.f32 ? cpu_matmul_f32(ctx, vs, kq) : ggml_mul_mat(ctx, vs, kq);  // [heads, Lq, d]
        out = out ? ggml_concat(ctx, out, o, 2) : o;
    }
    out = ggml_permute(ctx, ggml_reshape_4d(ctx, out, d, lq, heads, n), 0, 2, 1, 3);  // [N, Lq, heads, d]
    out = ggml_reshape_3d(ctx, ggml_cont(ctx, out), width, lq, n);
    return named(out, name);
}

ggml_tensor * image_to_tokens(ggml_context * ctx, ggml_tensor * x) {
    // ne {W, H, C, N} -> {W*H, C, N} -> {C, W*H, N}
    x = ggml_reshape_3d(ctx, x, x->ne[0] * x->ne[1], x->ne[2], x->ne[3]);
    return ggml_cont(ctx, ggml_permute(ctx, x, 1, 0, 2, 3));
}

ggml_tensor * tokens_to_image(ggml_context * ctx, ggml_tensor * x, int64_t w, int64_t h) {
    // ne {C, W*H, N} -> {W*H, C, N} -> {W, H, C, N}
    const int64_t c = x->ne[0], n = x->ne[2];
    x = ggml_cont(ctx, ggml_permute(ctx, x, 1, 0, 2, 3));
    return ggml_reshape_4d(ctx, x, w, h, c, n);
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
    if (g.cpu.activations && h->type == GGML_TYPE_F32 && ggml_is_contiguous(h) && h->ne[0] % 2 == 0) {
        // value * gelu(gate) straight from the halves of each row (same floats, no copies)
        return linear(g, named(cpu_geglu(g.ctx, h), prefix + ".geglu"), prefix + ".net.2", residual);
    }
    const int64_t inner = h->ne[0] / 2;
    ggml_tensor * value = ggml_cont(g.ctx, ggml_view_3d(g.ctx, h, inner, h->ne[1], h->ne[2], h->nb[1], h->nb[2], 0));
    ggml_tensor * gate = ggml_cont(g.ctx, ggml_view_3d(g.ctx, h, inner, h->ne[1], h->ne[2], h->nb[1], h->nb[2],
                                                       inner * ggml_element_size(h)));
    h = named(ggml_mul(g.ctx, value, ggml_gelu(g.ctx, gate)), prefix + ".geglu");
    return linear(g, h, prefix + ".net.2", residual);
}

// q from x, k/v from context (or x): to_q/to_k/to_v without bias, to_out.0 with bias.
ggml_tensor * cross_attention(Graph & g, ggml_tensor * x, ggml_tensor * context, const std::string & prefix, int heads,
                              ggml_tensor * residual) {
    ggml_tensor * q = linear(g, x, prefix + ".to_q");
    ggml_tensor * k = linear(g, context, prefix + ".to_k");
    ggml_tensor * v = linear(g, context, prefix + ".to_v");
    ggml_tensor * a = attention(g.ctx, q, k, v, heads, false, prefix + ".attn", g.cpu);
    return linear(g, a, prefix + ".to_out.0", residual);
}

// SD1's 1x1 proj_in: image -> tokens. Where sdnode's kernel runs, it writes the tokens itself
// (same floats as the convolution, no layout copy after).
ggml_tensor * proj_to_tokens(Graph & g, ggml_tensor * x, const std::string & prefix) {
    ggml_tensor * w = g.w.get(prefix + ".weight");
    if (w->ne[0] == 1 && w->ne[1] == 1 && w->ne[2] == x->ne[2] && cpu_f16_product(g, w, x) && ggml_is_contiguous(w)) {
        ggml_tensor * y = cpu_conv2d_f16(g.ctx, w, x, 1, 0, find_bias(g, prefix, w->ne[3]), nullptr, true, g.cpu.amx);
        return named(release_after_use(g, y, w), prefix);
    }
    return image_to_tokens(g.ctx, conv2d(g, x, prefix, 1, 0));
}

// SD1's 1x1 proj_out: tokens -> image, + residual. Where sdnode's kernel runs, a linear layer on
// the tokens writes the image itself (the same dot products as the convolution).
ggml_tensor * proj_to_image(Graph & g, ggml_tensor * x, const std::string & prefix, int64_t w_px, int64_t h_px,
                            ggml_tensor * residual) {
    ggml_tensor * w = g.w.get(prefix + ".weight");
    if (w->ne[0] == 1 && w->ne[1] == 1 && w->ne[2] == x->ne[0] && ggml_is_contiguous(w) && x->ne[3] == 1) {
        ggml_tensor * w2 = ggml_reshape_2d(g.ctx, w, w->ne[2], w->ne[3]);
        if (cpu_f16_product(g, w2, x) && fusable(residual, w_px, h_px, w->ne[3], x->ne[2])) {
            ggml_tensor * y = cpu_linear_f16(g.ctx, w2, x, find_bias(g, prefix, w->ne[3]), residual, w_px, h_px, g.cpu.amx);
            return named(release_after_use(g, y, w), prefix);
        }
    }
    return conv2d(g, tokens_to_image(g.ctx, x, w_px, h_px), prefix, 1, 0, residual);
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
        x = linear(g, image_to_tokens(g.ctx, x), prefix + ".proj_in");
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
    x = tokens_to_image(g.ctx, linear(g, x, prefix + ".proj_out"), w, h);
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
    ggml_tensor * q = image_to_tokens(g.ctx, conv2d(g, n, prefix + ".q", 1, 0));
    ggml_tensor * k = image_to_tokens(g.ctx, conv2d(g, n, prefix + ".k", 1, 0));
    ggml_tensor * v = image_to_tokens(g.ctx, conv2d(g, n, prefix + ".v", 1, 0));
    ggml_tensor * a = tokens_to_image(g.ctx, attention(g.ctx, q, k, v, 1, false, prefix + ".attn", g.cpu), w, h);
    return named(conv2d(g, a, prefix + ".proj_out", 1, 0, x), prefix);
}

}  // namespace sd
