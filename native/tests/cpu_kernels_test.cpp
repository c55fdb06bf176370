// cpu-kernels.h against ggml's own ops: the same graph computes ggml_conv_2d / ggml_mul_mat and
// cpu_conv2d_f16 / cpu_linear_f16 on the same random tensors, and every output float must be
// bit-identical, over shapes that exercise every edge (K below, at and past multiples of 64,
// rows and columns that do not fill a register tile, strides, padding, batches, several row
// blocks and panel groups, strided inputs) and 1 to 3 threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "kernels/cpu-kernels.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

namespace {

struct Ctx {
    ggml_context * ctx;
    explicit Ctx(size_t bytes) {
        ggml_init_params p{bytes, nullptr, false};
        ctx = ggml_init(p);
    }
    ~Ctx() { ggml_free(ctx); }
};

void fill(ggml_tensor * t, uint32_t seed, float scale) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, scale);
    const int64_t n = ggml_nelements(t);
    if (t->type == GGML_TYPE_F16) {
        auto * d = static_cast<ggml_fp16_t *>(t->data);
        for (int64_t i = 0; i < n; ++i) d[i] = ggml_fp32_to_fp16(dist(rng));
    } else {
        auto * d = static_cast<float *>(t->data);
        for (int64_t i = 0; i < n; ++i) d[i] = dist(rng);
    }
}

// Compares two f32 tensors of the same shape bit for bit; prints the first difference.
bool identical(const ggml_tensor * a, const ggml_tensor * b, const std::string & what) {
    if (!ggml_are_same_shape(a, b)) {
        std::fprintf(stderr, "%s: shapes differ\n", what.c_str());
        return false;
    }
    std::vector<float> av(ggml_nelements(a)), bv(ggml_nelements(b));
    // ggml_conv_2d's result is a contiguous copy; ours is contiguous: compare flat.
    std::memcpy(av.data(), a->data, av.size() * sizeof(float));
    std::memcpy(bv.data(), b->data, bv.size() * sizeof(float));
    for (size_t i = 0; i < av.size(); ++i) {
        if (std::memcmp(&av[i], &bv[i], sizeof(float)) != 0) {
            std::fprintf(stderr, "%s: element %zu: ggml %.9g, ours %.9g\n", what.c_str(), i, av[i], bv[i]);
            return false;
        }
    }
    return true;
}

// The f16 conv and linear cases run twice: bit for bit with the AVX-512 kernels, then, where the
// CPU has AMX, within float rounding (cpu_close) with the AMX kernel.
bool g_exact = true;
double g_worst_l2 = 0;  // the AMX kernel's largest relative L2 error seen

bool matches(const ggml_tensor * a, const ggml_tensor * b, const std::string & what) {
    if (g_exact) return identical(a, b, what);
    if (!ggml_are_same_shape(a, b)) {
        std::fprintf(stderr, "%s: shapes differ\n", what.c_str());
        return false;
    }
    const auto * x = static_cast<const float *>(a->data);
    const auto * y = static_cast<const float *>(b->data);
    const size_t n = static_cast<size_t>(ggml_nelements(a));
    double d2 = 0, r2 = 0;
    for (size_t i = 0; i < n; ++i) {
        d2 += (double(y[i]) - x[i]) * (double(y[i]) - x[i]);
        r2 += double(x[i]) * x[i];
    }
    const double l2 = r2 > 0 ? std::sqrt(d2 / r2) : std::sqrt(d2);
    g_worst_l2 = std::max(g_worst_l2, l2);
    if (sd::cpu_close(y, x, n)) return true;
    std::fprintf(stderr, "%s (AMX): relative L2 error %.3g\n", what.c_str(), l2);
    return false;
}

// The f32 kernel against ggml's f32 products: bit for bit where the self-check says this CPU's
// ggml sums as the kernel does, else within float rounding (cpu_close).
bool g_f32_exact = true;
bool f32_matches(const ggml_tensor * a, const ggml_tensor * b, const std::string & what) {
    if (g_f32_exact) return identical(a, b, what);
    if (!ggml_are_same_shape(a, b)) return false;
    const auto * x = static_cast<const float *>(a->data);
    const auto * y = static_cast<const float *>(b->data);
    if (sd::cpu_close(y, x, static_cast<size_t>(ggml_nelements(a)))) return true;
    std::fprintf(stderr, "%s: not within float rounding of ggml's\n", what.c_str());
    return false;
}

void compute(ggml_context * ctx, ggml_tensor * out_a, ggml_tensor * out_b, int threads) {
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out_a);
    ggml_build_forward_expand(gf, out_b);
    ggml_graph_compute_with_ctx(ctx, gf, threads);
}

void conv_case(int64_t W, int64_t H, int64_t IC, int64_t OC, int64_t N, int k, int stride, int pad, int threads) {
    Ctx c(512u << 20);
    ggml_tensor * w = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F16, k, k, IC, OC);
    ggml_tensor * x = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, W, H, IC, N);
    fill(w, 1 + static_cast<uint32_t>(IC * 7 + OC), 0.05f);
    fill(x, 2 + static_cast<uint32_t>(W * 3 + H), 1.0f);
    ggml_tensor * ref = ggml_conv_2d(c.ctx, w, x, stride, stride, pad, pad, 1, 1);
    ggml_tensor * ours = sd::cpu_conv2d_f16(c.ctx, w, x, stride, pad, nullptr, nullptr, false, !g_exact);
    // With a bias: the same as ggml_add after ggml_conv_2d.
    ggml_tensor * bias = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, OC);
    fill(bias, 3, 0.5f);
    ggml_tensor * ref_b = ggml_add(c.ctx, ref, ggml_reshape_4d(c.ctx, bias, 1, 1, OC, 1));
    ggml_tensor * ours_b = sd::cpu_conv2d_f16(c.ctx, w, x, stride, pad, bias, nullptr, false, !g_exact);
    // Then a residual, as the ggml_add it replaces: residual + (conv + bias), and without a bias.
    ggml_tensor * residual = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, ref->ne[0], ref->ne[1], OC, N);
    fill(residual, 6, 1.0f);
    ggml_tensor * ref_e = ggml_add(c.ctx, residual, ref_b);
    ggml_tensor * ours_e = sd::cpu_conv2d_f16(c.ctx, w, x, stride, pad, bias, residual, false, !g_exact);
    ggml_tensor * ref_r = ggml_add(c.ctx, residual, ref);
    ggml_tensor * ours_r = sd::cpu_conv2d_f16(c.ctx, w, x, stride, pad, nullptr, residual, false, !g_exact);
    compute(c.ctx, ref_b, ours_b, threads);
    compute(c.ctx, ref, ours, threads);
    compute(c.ctx, ref_e, ours_e, threads);
    compute(c.ctx, ref_r, ours_r, threads);
    char what[160];
    std::snprintf(what, sizeof what, "conv %lldx%lld ic %lld oc %lld n %lld k %d s %d p %d threads %d", (long long)W,
                  (long long)H, (long long)IC, (long long)OC, (long long)N, k, stride, pad, threads);
    CHECK(matches(ref, ours, what));
    CHECK(matches(ref_b, ours_b, std::string(what) + " + bias"));
    CHECK(matches(ref_e, ours_e, std::string(what) + " + bias + residual"));
    CHECK(matches(ref_r, ours_r, std::string(what) + " + residual"));
}

void linear_case(int64_t K, int64_t M, int64_t L, int64_t B, bool strided, int threads) {
    Ctx c(256u << 20);
    ggml_tensor * w = ggml_new_tensor_2d(c.ctx, GGML_TYPE_F16, K, M);
    fill(w, static_cast<uint32_t>(K + M), 0.05f);
    ggml_tensor * x;
    if (strided) {
        // Rows of a wider tensor: unit element stride, row stride K + 5.
        ggml_tensor * wide = ggml_new_tensor_3d(c.ctx, GGML_TYPE_F32, K + 5, L, B);
        fill(wide, static_cast<uint32_t>(L), 1.0f);
        x = ggml_view_3d(c.ctx, wide, K, L, B, wide->nb[1], wide->nb[2], 3 * sizeof(float));
    } else {
        x = ggml_new_tensor_3d(c.ctx, GGML_TYPE_F32, K, L, B);
        fill(x, static_cast<uint32_t>(L), 1.0f);
    }
    ggml_tensor * ref = ggml_mul_mat(c.ctx, w, x);
    ggml_tensor * ours = sd::cpu_linear_f16(c.ctx, w, x, nullptr, nullptr, 0, 0, !g_exact);
    ggml_tensor * bias = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, M);
    fill(bias, 4, 0.5f);
    ggml_tensor * ref_b = ggml_add(c.ctx, ref, bias);
    ggml_tensor * ours_b = sd::cpu_linear_f16(c.ctx, w, x, bias, nullptr, 0, 0, !g_exact);
    ggml_tensor * residual = ggml_new_tensor_3d(c.ctx, GGML_TYPE_F32, M, L, B);
    fill(residual, 7, 1.0f);
    ggml_tensor * ref_r = ggml_add(c.ctx, residual, ref_b);
    ggml_tensor * ours_r = sd::cpu_linear_f16(c.ctx, w, x, bias, residual, 0, 0, !g_exact);
    compute(c.ctx, ref, ours, threads);
    compute(c.ctx, ref_b, ours_b, threads);
    compute(c.ctx, ref_r, ours_r, threads);
    char what[160];
    std::snprintf(what, sizeof what, "linear k %lld m %lld l %lld b %lld%s threads %d", (long long)K, (long long)M,
                  (long long)L, (long long)B, strided ? " strided" : "", threads);
    CHECK(matches(ref, ours, what));
    CHECK(matches(ref_b, ours_b, std::string(what) + " + bias"));
    CHECK(matches(ref_r, ours_r, std::string(what) + " + bias + residual"));
}

// The transformer's 1x1 projections without layout copies: a convolution writing tokens
// (against ggml_conv_2d + bias, then permuted to [N, H*W, C] and made contiguous), and a linear
// layer on those tokens writing an image plus a residual (against ggml_mul_mat + bias, permuted
// back, + residual).
void layout_case(int64_t W, int64_t H, int64_t C, int64_t M, int64_t N, int threads) {
    Ctx c(256u << 20);
    ggml_tensor * w1 = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F16, 1, 1, C, M);
    ggml_tensor * x = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, W, H, C, N);
    ggml_tensor * b1 = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, M);
    fill(w1, 51, 0.05f);
    fill(x, 52, 1.0f);
    fill(b1, 53, 0.5f);
    ggml_tensor * img = ggml_add(c.ctx, ggml_conv_2d(c.ctx, w1, x, 1, 1, 0, 0, 1, 1), ggml_reshape_4d(c.ctx, b1, 1, 1, M, 1));
    ggml_tensor * ref_t = ggml_cont(c.ctx, ggml_permute(c.ctx, ggml_reshape_3d(c.ctx, img, W * H, M, N), 1, 0, 2, 3));
    ggml_tensor * ours_t = sd::cpu_conv2d_f16(c.ctx, w1, x, 1, 0, b1, nullptr, true, !g_exact);
    compute(c.ctx, ref_t, ours_t, threads);
    const std::string what = std::to_string(W) + "x" + std::to_string(H) + "x" + std::to_string(C) + "->" + std::to_string(M) +
                             " n " + std::to_string(N) + " threads " + std::to_string(threads);
    CHECK(matches(ref_t, ours_t, "conv to tokens " + what));

    ggml_tensor * w2 = ggml_new_tensor_2d(c.ctx, GGML_TYPE_F16, M, C);
    ggml_tensor * b2 = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, C);
    ggml_tensor * residual = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, W, H, C, N);
    fill(w2, 54, 0.05f);
    fill(b2, 55, 0.5f);
    fill(residual, 56, 1.0f);
    ggml_tensor * rows = ggml_add(c.ctx, ggml_mul_mat(c.ctx, w2, ours_t), b2);  // [N, H*W, C]
    ggml_tensor * back = ggml_cont(c.ctx, ggml_permute(c.ctx, rows, 1, 0, 2, 3));
    ggml_tensor * ref_i = ggml_add(c.ctx, residual, ggml_reshape_4d(c.ctx, back, W, H, C, N));
    ggml_tensor * ours_i = sd::cpu_linear_f16(c.ctx, w2, ours_t, b2, residual, W, H, !g_exact);
    compute(c.ctx, ref_i, ours_i, threads);
    CHECK(matches(ref_i, ours_i, "linear to image " + what));
}

// ggml picks its CPU code per machine (its builds for Intel Xeons with AVX512-BF16 sum f32 in
// another order): where the self-check finds a difference the engine keeps ggml's op, and the
// f32 kernel is held to float rounding instead (f32_matches).

// Attention's products: a [K, M, B] rows against b [K, N, B] -> [M, N, B] in f32.
void matmul_f32_case(int64_t K, int64_t M, int64_t N, int64_t B, int threads) {
    Ctx c(256u << 20);
    ggml_tensor * a = ggml_new_tensor_3d(c.ctx, GGML_TYPE_F32, K, M, B);
    ggml_tensor * b = ggml_new_tensor_3d(c.ctx, GGML_TYPE_F32, K, N, B);
    fill(a, static_cast<uint32_t>(K * 5 + M), 1.0f);
    fill(b, static_cast<uint32_t>(N), 1.0f);
    ggml_tensor * ref = ggml_mul_mat(c.ctx, a, b);
    ggml_tensor * ours = sd::cpu_matmul_f32(c.ctx, a, b);
    compute(c.ctx, ref, ours, threads);
    char what[160];
    std::snprintf(what, sizeof what, "matmul f32 k %lld m %lld n %lld b %lld threads %d", (long long)K, (long long)M,
                  (long long)N, (long long)B, threads);
    CHECK(f32_matches(ref, ours, what));
}

// cpu_attention_f32 against ggml's chain on per-head copies: mul_mat(K, Q), soft_max(scale(.)),
// mul_mat(V^T, probs), heads back side by side. q, k, v: [n, L, heads*d].
void attention_case(int64_t d, int64_t heads, int64_t lq, int64_t lk, int64_t n, int threads) {
    Ctx c(512u << 20);
    ggml_context * ctx = c.ctx;
    ggml_tensor * q = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, d * heads, lq, n);
    ggml_tensor * k = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, d * heads, lk, n);
    ggml_tensor * v = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, d * heads, lk, n);
    fill(q, static_cast<uint32_t>(d + lq), 1.0f);
    fill(k, static_cast<uint32_t>(heads + lk), 1.0f);
    fill(v, static_cast<uint32_t>(7 * lk), 1.0f);
    const auto per_head = [&](ggml_tensor * t, int64_t l) {  // [n*heads, l, d]
        return ggml_reshape_3d(ctx, ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_4d(ctx, t, d, heads, l, n), 0, 2, 1, 3)), d, l,
                               heads * n);
    };
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    ggml_tensor * vt = ggml_reshape_3d(
        ctx, ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_4d(ctx, v, d, heads, lk, n), 1, 2, 0, 3)), lk, d, heads * n);
    ggml_tensor * probs = ggml_soft_max(ctx, ggml_scale(ctx, ggml_mul_mat(ctx, per_head(k, lk), per_head(q, lq)), scale));
    ggml_tensor * o = ggml_mul_mat(ctx, vt, probs);  // [n*heads, lq, d]
    o = ggml_permute(ctx, ggml_reshape_4d(ctx, o, d, lq, heads, n), 0, 2, 1, 3);
    ggml_tensor * ref = ggml_reshape_3d(ctx, ggml_cont(ctx, o), d * heads, lq, n);
    ggml_tensor * ours = sd::cpu_attention_f32(ctx, q, k, v, static_cast<int>(heads), scale);
    compute(ctx, ref, ours, threads);
    char what[160];
    std::snprintf(what, sizeof what, "attention d %lld heads %lld lq %lld lk %lld n %lld threads %d", (long long)d,
                  (long long)heads, (long long)lq, (long long)lk, (long long)n, threads);
    CHECK(f32_matches(ref, ours, what));
}

// q8_0 / q4_0 linear layers: ggml_mul_mat (+ ggml_add bias) against cpu_linear_q.
// cpu_group_norm against ggml_group_norm + ggml_mul + ggml_add (+ ggml_silu). offset shifts the
// input (a mean far from 0), weight_scale makes SiLU's inputs large (its exp saturates).
void group_norm_case(int64_t W, int64_t H, int64_t C, int64_t N, float offset, float weight_scale, int threads) {
    Ctx c(256u << 20);
    ggml_tensor * x = ggml_new_tensor_4d(c.ctx, GGML_TYPE_F32, W, H, C, N);
    ggml_tensor * w = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, C);
    ggml_tensor * b = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, C);
    fill(x, 11 + static_cast<uint32_t>(W * H + C), 1.0f);
    for (int64_t i = 0; i < ggml_nelements(x); ++i) static_cast<float *>(x->data)[i] += offset;
    fill(w, 12, weight_scale);
    fill(b, 13, 0.5f);
    ggml_tensor * ref = ggml_group_norm(c.ctx, x, 32, 1e-6f);
    ref = ggml_mul(c.ctx, ref, ggml_reshape_4d(c.ctx, w, 1, 1, C, 1));
    ref = ggml_add(c.ctx, ref, ggml_reshape_4d(c.ctx, b, 1, 1, C, 1));
    for (bool silu : {false, true}) {
        ggml_tensor * theirs = silu ? ggml_silu(c.ctx, ref) : ref;
        ggml_tensor * ours = sd::cpu_group_norm(c.ctx, x, w, b, 32, 1e-6f, silu);
        compute(c.ctx, theirs, ours, threads);
        CHECK(identical(theirs, ours, "group_norm " + std::to_string(W) + "x" + std::to_string(H) + "x" + std::to_string(C) +
                                          "x" + std::to_string(N) + (silu ? " silu" : "") + " threads " + std::to_string(threads)));
    }
    // With a per-image, per-channel addend (the UNet's time embedding) added first.
    ggml_tensor * e = ggml_new_tensor_2d(c.ctx, GGML_TYPE_F32, C, N);
    fill(e, 14, 2.0f);
    ggml_tensor * theirs = ggml_group_norm(c.ctx, ggml_add(c.ctx, x, ggml_reshape_4d(c.ctx, e, 1, 1, C, N)), 32, 1e-6f);
    theirs = ggml_mul(c.ctx, theirs, ggml_reshape_4d(c.ctx, w, 1, 1, C, 1));
    theirs = ggml_silu(c.ctx, ggml_add(c.ctx, theirs, ggml_reshape_4d(c.ctx, b, 1, 1, C, 1)));
    ggml_tensor * ours = sd::cpu_group_norm(c.ctx, x, w, b, 32, 1e-6f, true, e);
    compute(c.ctx, theirs, ours, threads);
    CHECK(identical(theirs, ours, "group_norm + addend " + std::to_string(W) + "x" + std::to_string(H) + "x" +
                                      std::to_string(C) + " threads " + std::to_string(threads)));
}

// cpu_layer_norm against ggml_norm + ggml_mul (+ ggml_add).
void layer_norm_case(int64_t cols, int64_t rows, int64_t batch, float offset, int threads) {
    Ctx c(256u << 20);
    ggml_tensor * x = ggml_new_tensor_3d(c.ctx, GGML_TYPE_F32, cols, rows, batch);
    ggml_tensor * w = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, cols);
    ggml_tensor * b = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, cols);
    fill(x, 41 + static_cast<uint32_t>(cols), 1.0f);
    for (int64_t i = 0; i < ggml_nelements(x); ++i) static_cast<float *>(x->data)[i] += offset;
    fill(w, 42, 1.0f);
    fill(b, 43, 0.5f);
    ggml_tensor * ref = ggml_mul(c.ctx, ggml_norm(c.ctx, x, 1e-5f), w);
    for (bool bias : {false, true}) {
        ggml_tensor * theirs = bias ? ggml_add(c.ctx, ref, b) : ref;
        ggml_tensor * ours = sd::cpu_layer_norm(c.ctx, x, w, bias ? b : nullptr, 1e-5f);
        compute(c.ctx, theirs, ours, threads);
        CHECK(identical(theirs, ours, "layer_norm " + std::to_string(cols) + "x" + std::to_string(rows) + (bias ? " bias" : "") +
                                          " threads " + std::to_string(threads)));
    }
}

// cpu_soft_max against ggml_soft_max(ggml_scale(x)).
void soft_max_case(int64_t cols, int64_t rows, int64_t batch, float input_scale, int threads) {
    Ctx c(256u << 20);
    ggml_tensor * x = ggml_new_tensor_3d(c.ctx, GGML_TYPE_F32, cols, rows, batch);
    fill(x, 21 + static_cast<uint32_t>(cols), input_scale);
    const float scale = 1.0f / std::sqrt(40.0f);
    ggml_tensor * theirs = ggml_soft_max(c.ctx, ggml_scale(c.ctx, x, scale));
    ggml_tensor * ours = sd::cpu_soft_max(c.ctx, x, scale);
    compute(c.ctx, theirs, ours, threads);
    CHECK(identical(theirs, ours, "soft_max " + std::to_string(cols) + "x" + std::to_string(rows) + " scale " +
                                      std::to_string(input_scale) + " threads " + std::to_string(threads)));
}

// cpu_geglu against ggml_mul(cont(value half), ggml_gelu(cont(gate half))).
void geglu_case(int64_t inner, int64_t rows, int64_t batch, float input_scale, int threads) {
    Ctx c(256u << 20);
    ggml_tensor * h = ggml_new_tensor_3d(c.ctx, GGML_TYPE_F32, 2 * inner, rows, batch);
    fill(h, 31 + static_cast<uint32_t>(inner), input_scale);
    ggml_tensor * value = ggml_cont(c.ctx, ggml_view_3d(c.ctx, h, inner, rows, batch, h->nb[1], h->nb[2], 0));
    ggml_tensor * gate = ggml_cont(c.ctx, ggml_view_3d(c.ctx, h, inner, rows, batch, h->nb[1], h->nb[2], inner * sizeof(float)));
    ggml_tensor * theirs = ggml_mul(c.ctx, value, ggml_gelu(c.ctx, gate));
    ggml_tensor * ours = sd::cpu_geglu(c.ctx, h);
    compute(c.ctx, theirs, ours, threads);
    CHECK(identical(theirs, ours, "geglu " + std::to_string(inner) + "x" + std::to_string(rows) + " scale " +
                                      std::to_string(input_scale) + " threads " + std::to_string(threads)));
}

void linear_q_case(ggml_type type, int64_t K, int64_t M, int64_t L, int64_t B, int threads) {
    Ctx c(256u << 20);
    ggml_tensor * wf = ggml_new_tensor_2d(c.ctx, GGML_TYPE_F32, K, M);
    fill(wf, static_cast<uint32_t>(K * 3 + M), 0.05f);
    ggml_tensor * w = ggml_new_tensor_2d(c.ctx, type, K, M);
    ggml_quantize_chunk(type, static_cast<const float *>(wf->data), w->data, 0, M, K, nullptr);
    ggml_tensor * x = ggml_new_tensor_3d(c.ctx, GGML_TYPE_F32, K, L, B);
    fill(x, static_cast<uint32_t>(L + 1), 1.0f);
    ggml_tensor * bias = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, M);
    fill(bias, 5, 0.5f);
    ggml_tensor * ref = ggml_mul_mat(c.ctx, w, x);
    ggml_tensor * ours = sd::cpu_linear_q(c.ctx, w, x);
    ggml_tensor * ref_b = ggml_add(c.ctx, ggml_mul_mat(c.ctx, w, x), bias);
    ggml_tensor * ours_b = sd::cpu_linear_q(c.ctx, w, x, bias);
    compute(c.ctx, ref, ours, threads);
    compute(c.ctx, ref_b, ours_b, threads);
    char what[160];
    std::snprintf(what, sizeof what, "linear %s k %lld m %lld l %lld b %lld threads %d", ggml_type_name(type), (long long)K,
                  (long long)M, (long long)L, (long long)B, threads);
    CHECK(identical(ref, ours, what));
    CHECK(identical(ref_b, ours_b, std::string(what) + " + bias"));
}

// Every f16 convolution and linear case: K below, at and past multiples of 64 and of AMX's 16
// and 128, partial tiles in rows and columns, strides and padding, both layouts, 1-3 threads.
void f16_cases() {
    for (int threads : {1, 2, 3}) {
        conv_case(9, 7, 64, 8, 2, 3, 1, 1, threads);      // K = 576: whole 64-groups
        conv_case(8, 8, 20, 5, 1, 3, 1, 1, threads);      // K = 180: 2 groups + 52 leftovers
        conv_case(5, 6, 4, 3, 1, 3, 1, 1, threads);       // K = 36: leftovers only (conv_in)
        conv_case(16, 15, 32, 13, 2, 3, 2, 1, threads);   // stride 2, odd sizes
        conv_case(7, 5, 128, 17, 2, 1, 1, 0, threads);    // 1x1
        conv_case(3, 3, 64, 6, 1, 3, 1, 0, threads);      // no padding, a single output pixel
    }
    conv_case(4, 4, 1280, 42, 2, 3, 1, 1, 2);             // K = 11520: several row blocks
    conv_case(64, 48, 16, 8, 1, 3, 1, 1, 2);              // many panels, several panel groups
    conv_case(24, 24, 128, 128, 1, 3, 1, 1, 2);           // a VAE-like layer
    // The slice kernel (K a multiple of 64 and >= 512, >= 256 output pixels, >= 16 rows):
    for (int threads : {1, 2, 3}) {
        conv_case(20, 13, 64, 23, 2, 3, 1, 1, threads);   // 260-pixel images: vectors straddle them; 23 rows
        conv_case(33, 31, 64, 17, 1, 3, 2, 1, threads);   // stride 2: gathered windows
    }
    conv_case(16, 16, 704, 40, 1, 3, 1, 1, 2);            // K = 6336: chunked slices, 1-panel groups, 2 blocks
    conv_case(20, 20, 512, 24, 1, 1, 1, 0, 2);            // 1x1, K = 512
    conv_case(18, 18, 64, 16, 1, 5, 1, 2, 3);             // 5x5, padding 2
    conv_case(128, 100, 64, 16, 1, 3, 1, 1, 2);          // 200 panels: more than fit at once, each thread's half does
    for (int threads : {1, 2, 3}) {
        linear_case(320, 77, 50, 3, false, threads);
        linear_case(77, 20, 9, 1, false, threads);        // K = 77: 1 group + 13 leftovers
        linear_case(40, 7, 5, 2, true, threads);          // leftovers only, strided rows
        linear_case(768, 64, 2, 1, true, threads);        // few columns: rows split across threads
    }
    linear_case(1280, 2560, 128, 2, false, 2);            // GEGLU-sized
    // The slice kernel (K a multiple of 64 and >= 256, >= 128 rows, >= 16 outputs):
    for (int threads : {1, 2, 3}) {
        linear_case(320, 77, 300, 1, false, threads);     // a part-filled panel, 77 outputs
        linear_case(256, 40, 130, 2, true, threads);      // strided rows over two batches
        linear_case(512, 30, 150, 1, false, threads);     // 3 panels: split by weight tiles
        linear_case(320, 300, 260, 1, false, threads);    // >= 256 outputs and rows: weight rows are the vectors
        linear_case(256, 320, 140, 2, true, threads);     // ... with strided rows over two batches
        conv_case(12, 11, 64, 30, 1, 3, 1, 1, threads);   // 132 pixels: 3 panels
    }

    for (int threads : {1, 2, 3}) {
        layout_case(32, 32, 320, 320, 2, threads);  // SD1 proj_in / proj_out at 32x32 (slice kernel)
        layout_case(8, 8, 256, 192, 2, threads);    // 128 pixels
        layout_case(4, 4, 320, 70, 2, threads);     // 32 pixels: the dot-product kernel
        layout_case(5, 3, 128, 64, 1, threads);     // partial panels and tiles
    }

}

}  // namespace

int main() {
    ggml_cpu_init();
    if (!sd::cpu_kernels_available()) {
        // Nothing to compare: the graphs use ggml's own ops on this CPU / build.
        std::printf("cpu_kernels_test: the kernels do not run on this CPU or build; ggml's ops are used instead\n");
        return sdtest::finish("cpu_kernels_test");
    }
    // The self-check decides whether the f32 kernel runs (see g_f32_exact).
    ggml_backend_t cpu = ggml_backend_cpu_init();
    const sd::CpuKernels k = sd::cpu_kernels_for(cpu);
    ggml_backend_free(cpu);
    g_f32_exact = k.f32;
    if (!k.f32) std::printf("note: ggml's f32 products differ in rounding on this CPU; f32 kernel checked within float rounding\n");
    // Exact first: ggml's numbers bit for bit.
    f16_cases();
    // The f16 kernels must pass their self-check (a failure means a kernel no longer matches
    // ggml's op on this build).
    CHECK(k.f16);
    // AMX: the same cases within float rounding, plus SD1's own shapes (the UNet's and text
    // encoder's layers, whose sums run over up to 11520 products).
    if (k.amx) {
        g_exact = false;
        f16_cases();
        conv_case(32, 32, 320, 320, 2, 3, 1, 1, 2);
        conv_case(8, 8, 1280, 64, 2, 3, 1, 1, 2);
        conv_case(4, 4, 1280, 96, 2, 3, 1, 1, 2);
        linear_case(768, 768, 77, 2, false, 2);
        linear_case(3072, 768, 77, 1, false, 2);
        linear_case(320, 2560, 256, 1, false, 2);
        std::printf("cpu_kernels_test: AMX kernel, largest relative L2 error against ggml %.3g\n", g_worst_l2);
        g_exact = true;
    } else {
        std::printf("cpu_kernels_test: no AMX here (or not allowed by the OS); f16 products use the AVX-512 kernels\n");
    }
    for (int threads : {1, 2, 3}) {
        // Head widths 40/80/160 (SD1 UNet), 64 (CLIP), 512 (VAE); Lk 1024/256/64/16 and 77 (P V).
        for (int64_t K : {40, 80, 160, 64, 512, 77, 16, 13, 24, 1024}) {
            matmul_f32_case(K, 37, 29, 3, threads);
        }
    }
    matmul_f32_case(40, 1024, 300, 2, 2);       // a 32x32 latent's self-attention, 2 heads
    // Permuted views (attention's per-head rows read in place): [N, L, heads, d] as [N, heads, L, d].
    for (int threads : {1, 2, 3}) {
        for (int64_t L : {int64_t{77}, int64_t{300}}) {
            Ctx c(256u << 20);
            const int64_t d = 40, heads = 3, n = 2;
            ggml_tensor * q = ggml_new_tensor_3d(c.ctx, GGML_TYPE_F32, d * heads, L, n);
            ggml_tensor * k = ggml_new_tensor_3d(c.ctx, GGML_TYPE_F32, d * heads, 150, n);
            fill(q, 61, 1.0f);
            fill(k, 62, 1.0f);
            ggml_tensor * qv = ggml_permute(c.ctx, ggml_reshape_4d(c.ctx, q, d, heads, L, n), 0, 2, 1, 3);
            ggml_tensor * kv = ggml_permute(c.ctx, ggml_reshape_4d(c.ctx, k, d, heads, 150, n), 0, 2, 1, 3);
            ggml_tensor * theirs = ggml_mul_mat(c.ctx, kv, qv);
            ggml_tensor * ours = sd::cpu_matmul_f32(c.ctx, kv, qv);
            compute(c.ctx, theirs, ours, threads);
            CHECK(f32_matches(theirs, ours, "matmul_f32 on permuted views L " + std::to_string(L) + " threads " + std::to_string(threads)));
        }
    }
    // The slice kernel (>= 128 columns, >= 16 rows): every leftover shape, partial tiles and panels.
    for (int threads : {1, 2, 3}) {
        for (int64_t K : {40, 80, 160, 64, 77, 16, 13, 24, 1024, 64 + 24}) {
            matmul_f32_case(K, 40, 150, 2, threads);
            matmul_f32_case(K, 300, 260, 1, threads);  // rows of `a` as the vectors
        }
    }

    // Fused attention (needs the activation kernels' softmax too): SD1's heads (d 40/80/160 at
    // 32x32/16x16/8x8 latents, the 4x4 middle block, cross-attention's 77 keys), blocks of
    // queries with a partial last one, slices not a multiple of the threads.
    if (k.activations) {
        for (int threads : {1, 2, 3}) {
            attention_case(40, 2, 1024, 1024, 1, threads);
            attention_case(40, 3, 300, 77, 2, threads);
            attention_case(80, 2, 256, 256, 1, threads);
            attention_case(160, 1, 64, 64, 2, threads);
            attention_case(160, 2, 16, 16, 1, threads);
            attention_case(24, 3, 200, 600, 1, threads);
        }
        attention_case(40, 8, 1024, 1024, 2, 2);  // SD1's 32x32 self-attention, whole
    }

    const bool vnni = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
    if (!vnni) std::printf("cpu_kernels_test: no AVX-512 VNNI here; q8_0/q4_0 layers use ggml's op\n");
    CHECK(k.quant == vnni);
    for (int threads : {1, 2, 3}) {
        for (ggml_type type : {GGML_TYPE_Q8_0, GGML_TYPE_Q4_0}) {
            if (!vnni) continue;
            linear_q_case(type, 320, 77, 50, 2, threads);       // UNet attention projection
            linear_q_case(type, 64, 5, 3, 1, threads);          // partial tiles, odd columns
            linear_q_case(type, 768, 9, 1, 1, threads);         // one column: rows split over threads
        }
    }
    if (vnni) linear_q_case(GGML_TYPE_Q4_0, 1280, 2560, 128, 1, 2);   // GEGLU-sized

    // Activation kernels (AVX-512 DQ, as ggml-cpu's vector exp): SD1's shapes and the edges
    // where ggml's arithmetic changes (rows shorter than or not a multiple of 16 lanes).
    const bool dq = __builtin_cpu_supports("avx512dq");
    CHECK(k.activations == dq);
    if (dq) {
        for (int threads : {1, 2, 3}) {
            group_norm_case(32, 32, 320, 2, 0.0f, 1.0f, threads);   // UNet 32x32
            group_norm_case(8, 8, 1280, 2, 3.0f, 1.0f, threads);    // 8-wide rows: SiLU through expf
            group_norm_case(4, 4, 64, 2, 0.0f, 80.0f, threads);     // 4-wide, saturating SiLU
            group_norm_case(20, 3, 96, 1, -2.0f, 100.0f, threads);  // a block and 4 more per row
            group_norm_case(64, 64, 128, 1, 0.5f, 1.0f, threads);   // VAE-like
            group_norm_case(16, 12, 64, 1, 1.0f, 1.0f, threads);    // 24 rows a group: 16 + 8 in double lanes
            layer_norm_case(320, 1024, 2, 0.0f, threads);           // SD1 transformer at 32x32
            layer_norm_case(1280, 21, 2, 2.0f, threads);            // 16-row groups, then 8, then single rows
            layer_norm_case(768, 77, 1, 0.0f, threads);             // CLIP
            layer_norm_case(77, 13, 1, -1.0f, threads);             // rows not a multiple of 8 or 16 floats
            soft_max_case(1024, 40, 2, 1.0f, threads);              // 32x32 self-attention
            soft_max_case(77, 30, 3, 3.0f, threads);                // cross-attention: 4 blocks + 13
            soft_max_case(16, 9, 2, 1.0f, threads);
            soft_max_case(13, 9, 2, 1.0f, threads);                 // no whole block
            soft_max_case(256, 8, 2, 500.0f, threads);              // exp saturating to 0
            geglu_case(1280, 30, 2, 1.0f, threads);                 // SD1 32x32
            geglu_case(40, 7, 2, 12.0f, threads);                   // gates past +-10, a partial block
            geglu_case(13, 5, 1, 4.0f, threads);
        }
    }
    return sdtest::finish("cpu_kernels_test");
}
