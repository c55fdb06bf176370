#include "nn/ops.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/errors.h"
#include "nn/blocks.h"

namespace sd::ops {

namespace {

ggml_tensor * name_as(ggml_tensor * t, const std::string & name) {
    ggml_format_name(t, "%s", name.c_str());
    return t;
}

// sdnode's f16 kernels take f16 weights and f32 activations with unit element stride...
bool f16_product(const CpuKernels & cpu, const ggml_tensor * w, const ggml_tensor * x) {
    return cpu.f16 && w->type == GGML_TYPE_F16 && x->type == GGML_TYPE_F32 && x->nb[0] == sizeof(float);
}

// ...and its quantized kernel q8_0 / q4_0 weights against contiguous f32 rows.
bool quant_product(const CpuKernels & cpu, const ggml_tensor * w, const ggml_tensor * x) {
    return cpu.quant && (w->type == GGML_TYPE_Q8_0 || w->type == GGML_TYPE_Q4_0) && x->type == GGML_TYPE_F32 &&
           ggml_is_contiguous(x);
}

// Whether `t` can be added inside sdnode's kernel: contiguous f32 of exactly this shape.
bool fusable(const ggml_tensor * t, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    return t && t->type == GGML_TYPE_F32 && ggml_is_contiguous(t) && t->ne[0] == ne0 && t->ne[1] == ne1 &&
           t->ne[2] == ne2 && t->ne[3] == ne3;
}

// The bias along dimension `channel_dim` (0: rows of a linear layer, 2: channels of an image).
ggml_tensor * add_bias(ggml_context * ctx, ggml_tensor * y, ggml_tensor * bias, int channel_dim) {
    if (!bias) return y;
    if (channel_dim == 2) bias = ggml_reshape_4d(ctx, bias, 1, 1, ggml_nelements(bias), 1);
    return ggml_add(ctx, y, bias);
}

ggml_tensor * add_residual(ggml_context * ctx, ggml_tensor * y, ggml_tensor * residual, ggml_tensor * fused) {
    return residual && !fused ? ggml_add(ctx, residual, y) : y;
}

}  // namespace

CpuKernels graph_kernels(ggml_backend_t backend, const TensorSource & weights, uint16_t abort_slot) {
    CpuKernels k = cpu_kernels_for(backend);
    k.abort_slot = abort_slot;
    const char * env = std::getenv("SDNODE_CPU_AMX");
    const bool all = env && std::strcmp(env, "all") == 0;  // speed over agreement, for every model
    if (k.amx && !all && weights.quantized()) k.amx = false;
    return k;
}

ggml_tensor * linear(ggml_context * ctx, const CpuKernels & cpu, ggml_tensor * w, ggml_tensor * x, ggml_tensor * bias,
                     ggml_tensor * residual) {
    const bool f16 = f16_product(cpu, w, x);
    ggml_tensor * fused = f16 && fusable(residual, w->ne[1], x->ne[1], x->ne[2], x->ne[3]) ? residual : nullptr;
    ggml_tensor * y = f16                      ? cpu_linear_f16(ctx, w, x, bias, fused, 0, 0, cpu.amx, cpu.abort_slot)
                      : quant_product(cpu, w, x) ? cpu_linear_q(ctx, w, x, bias, cpu.abort_slot)
                                               : add_bias(ctx, ggml_mul_mat(ctx, w, x), bias, 0);
    return add_residual(ctx, y, residual, fused);
}

ggml_tensor * linear_to_image(ggml_context * ctx, const CpuKernels & cpu, ggml_tensor * w, ggml_tensor * x,
                              ggml_tensor * bias, ggml_tensor * residual, int64_t width, int64_t height) {
    // sdnode's linear kernel writes the image itself (the same dot products as the convolution).
    if (ggml_is_contiguous(w) && x->ne[3] == 1) {
        ggml_tensor * w2 = ggml_reshape_2d(ctx, w, w->ne[0] * w->ne[1] * w->ne[2], w->ne[3]);
        if (f16_product(cpu, w2, x) && fusable(residual, width, height, w->ne[3], x->ne[2])) {
            return cpu_linear_f16(ctx, w2, x, bias, residual, width, height, cpu.amx, cpu.abort_slot);
        }
    }
    return conv2d(ctx, cpu, w, tokens_to_image(ctx, x, width, height), 1, 0, bias, residual);
}

ggml_tensor * conv2d(ggml_context * ctx, const CpuKernels & cpu, ggml_tensor * w, ggml_tensor * x, int stride, int padding,
                     ggml_tensor * bias, ggml_tensor * residual) {
    const int64_t out_w = (x->ne[0] + 2 * padding - w->ne[0]) / stride + 1;
    const int64_t out_h = (x->ne[1] + 2 * padding - w->ne[1]) / stride + 1;
    const bool f16 = f16_product(cpu, w, x);
    ggml_tensor * fused = f16 && fusable(residual, out_w, out_h, w->ne[3], x->ne[3]) ? residual : nullptr;
    // cpu_conv2d_f16 computes ggml_conv_2d's numbers (bias included) without the im2col buffer.
    ggml_tensor * y = f16 ? cpu_conv2d_f16(ctx, w, x, stride, padding, bias, fused, false, cpu.amx, cpu.abort_slot)
                          : add_bias(ctx, ggml_conv_2d(ctx, w, x, stride, stride, padding, padding, 1, 1), bias, 2);
    return add_residual(ctx, y, residual, fused);
}

ggml_tensor * conv1x1_to_tokens(ggml_context * ctx, const CpuKernels & cpu, ggml_tensor * w, ggml_tensor * x,
                                ggml_tensor * bias) {
    // sdnode's kernel writes the tokens itself (no layout copy after).
    if (f16_product(cpu, w, x) && ggml_is_contiguous(w)) return cpu_conv2d_f16(ctx, w, x, 1, 0, bias, nullptr, true, cpu.amx, cpu.abort_slot);
    return image_to_tokens(ctx, conv2d(ctx, cpu, w, x, 1, 0, bias, nullptr));
}

ggml_tensor * group_norm(ggml_context * ctx, const CpuKernels & cpu, ggml_tensor * x, ggml_tensor * weight,
                         ggml_tensor * bias, int groups, float eps, bool silu, ggml_tensor * add) {
    // One pass instead of six where sdnode's kernel runs (same floats).
    if (cpu.activations && x->type == GGML_TYPE_F32 && ggml_is_contiguous(x) && ggml_is_contiguous(weight) &&
        ggml_is_contiguous(bias) && (!add || ggml_is_contiguous(add))) {
        return cpu_group_norm(ctx, x, weight, bias, groups, eps, silu, add);
    }
    const int64_t channels = x->ne[2];
    if (add) x = ggml_add(ctx, x, ggml_reshape_4d(ctx, add, 1, 1, channels, x->ne[3]));
    ggml_tensor * y = ggml_group_norm(ctx, x, groups, eps);
    y = ggml_mul(ctx, y, ggml_reshape_4d(ctx, weight, 1, 1, channels, 1));
    y = ggml_add(ctx, y, ggml_reshape_4d(ctx, bias, 1, 1, channels, 1));
    return silu ? ggml_silu(ctx, y) : y;
}

ggml_tensor * layer_norm(ggml_context * ctx, const CpuKernels & cpu, ggml_tensor * x, ggml_tensor * weight,
                         ggml_tensor * bias, float eps) {
    // One pass instead of three where sdnode's kernel runs (same floats).
    if (cpu.activations && x->type == GGML_TYPE_F32 && ggml_is_contiguous(x) && ggml_is_contiguous(weight) &&
        (!bias || ggml_is_contiguous(bias))) {
        return cpu_layer_norm(ctx, x, weight, bias, eps);
    }
    ggml_tensor * y = ggml_mul(ctx, ggml_norm(ctx, x, eps), weight);
    return bias ? ggml_add(ctx, y, bias) : y;
}

ggml_tensor * geglu(ggml_context * ctx, const CpuKernels & cpu, ggml_tensor * h) {
    // value * gelu(gate) straight from the halves of each row where sdnode's kernel runs (same
    // floats, no copies).
    if (cpu.activations && h->type == GGML_TYPE_F32 && ggml_is_contiguous(h) && h->ne[0] % 2 == 0) return cpu_geglu(ctx, h);
    const int64_t inner = h->ne[0] / 2;
    ggml_tensor * value = ggml_cont(ctx, ggml_view_3d(ctx, h, inner, h->ne[1], h->ne[2], h->nb[1], h->nb[2], 0));
    ggml_tensor * gate =
        ggml_cont(ctx, ggml_view_3d(ctx, h, inner, h->ne[1], h->ne[2], h->nb[1], h->nb[2], inner * ggml_element_size(h)));
    return ggml_mul(ctx, value, ggml_gelu(ctx, gate));
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
        return name_as(cpu_attention_f32(ctx, q, k, v, heads, scale, cpu.abort_slot), name);
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
    // 1 GiB): past max_scores_bytes, heads run in groups whose scores the allocator reuses, and
    // past it for one head (SD1 at 1024x1024: 1 GiB per head), blocks of queries. Every op here
    // works per head and query row, so the numbers are the same either way.
    const int64_t groups = (slices + group - 1) / group;
    const int64_t wanted_blocks = (per_slice + max_scores_bytes - 1) / max_scores_bytes;  // > 1 only when group == 1
    const int64_t blocks = std::max<int64_t>(1, std::min(wanted_blocks, kMaxAttentionBlocks / groups));
    const int64_t rows = (lq + blocks - 1) / blocks;
    // Blocks side by side, pairwise: each row is copied log2(blocks) times, not blocks/2.
    const auto concat_all = [&](std::vector<ggml_tensor *> parts, int dim) {
        while (parts.size() > 1) {
            std::vector<ggml_tensor *> next;
            for (size_t i = 0; i + 1 < parts.size(); i += 2) next.push_back(ggml_concat(ctx, parts[i], parts[i + 1], dim));
            if (parts.size() % 2) next.push_back(parts.back());
            parts.swap(next);
        }
        return parts.front();
    };
    std::vector<ggml_tensor *> head_groups;
    for (int64_t s0 = 0; s0 < slices; s0 += group) {
        const int64_t sn = std::min(group, slices - s0);
        ggml_tensor * ks = group == slices ? k : ggml_view_3d(ctx, k, d, lk, sn, k->nb[1], k->nb[2], s0 * k->nb[2]);
        ggml_tensor * vs = group == slices ? v : ggml_view_3d(ctx, v, lk, d, sn, v->nb[1], v->nb[2], s0 * v->nb[2]);
        std::vector<ggml_tensor *> query_blocks;
        for (int64_t r0 = 0; r0 < lq; r0 += rows) {
            const int64_t rn = std::min(rows, lq - r0);
            ggml_tensor * qs = group == slices && rn == lq
                                   ? q
                                   : ggml_view_3d(ctx, q, d, rn, sn, q->nb[1], q->nb[2], s0 * q->nb[2] + r0 * q->nb[1]);
            // A block's queries contiguous, as a whole head's are: ggml's product then takes the
            // same kernel (its tiled path needs contiguous rows), so the same floats.
            if (rn != lq) qs = ggml_cont(ctx, qs);
            ggml_tensor * kq = cpu.f32 ? cpu_matmul_f32(ctx, ks, qs, cpu.abort_slot) : ggml_mul_mat(ctx, ks, qs);  // [heads, rows, Lk]
            if (!cpu.f32) ggml_prec_set_acc(kq, GGML_PREC_F32);
            if (views) kq = ggml_reshape_3d(ctx, kq, lk, lq, slices);
            if (cpu.activations && !causal) {
                kq = cpu_soft_max(ctx, kq, scale);  // scale and softmax in one pass, same floats
            } else {
                kq = ggml_scale(ctx, kq, scale);
                if (causal) kq = ggml_diag_mask_inf(ctx, kq, static_cast<int>(r0));  // row i is query r0 + i
                kq = ggml_soft_max(ctx, kq);
            }
            std::string probs = name + ".probs";
            if (group != slices) probs += "." + std::to_string(s0 / group);
            if (blocks > 1) probs += ".q" + std::to_string(r0 / rows);
            kq = name_as(kq, probs);
            query_blocks.push_back(cpu.f32 ? cpu_matmul_f32(ctx, vs, kq, cpu.abort_slot) : ggml_mul_mat(ctx, vs, kq));  // [heads, rows, d]
        }
        head_groups.push_back(concat_all(std::move(query_blocks), 1));
    }
    ggml_tensor * out = concat_all(std::move(head_groups), 2);
    out = ggml_permute(ctx, ggml_reshape_4d(ctx, out, d, lq, heads, n), 0, 2, 1, 3);  // [N, Lq, heads, d]
    out = ggml_reshape_3d(ctx, ggml_cont(ctx, out), width, lq, n);
    return name_as(out, name);
}

}  // namespace sd::ops
