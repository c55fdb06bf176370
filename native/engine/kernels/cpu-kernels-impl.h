// Between cpu-kernels.cpp (graph ops, dispatch) and cpu-kernels-avx512.cpp (the kernel, built
// with AVX-512 flags and called only after a CPU check). Plain data only: no templates or
// inline functions are shared with the AVX-512 unit, so none of its code can be picked by the
// linker for callers on CPUs without AVX-512.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace sd::cpu {

// out[m, n] = dot(w[m, :], column n), with column n of x described below:
// - conv (kernel_w > 0): n = (b*out_h + oy)*out_w + ox; element k = (c*kernel_h + ky)*kernel_w + kx
//   is x[b, c, oy*stride - pad + ky, ox*stride - pad + kx] (0 outside).
// - linear (kernel_w == 0): n = (i3*ne2 + i2)*ne1 + i1; column n is the row x[i3, i2, i1, :].
// out is [b, m, p] (an image's layout: n = b*out_plane + p) when out_plane > 0, else [n, m] (rows of
// tokens): a convolution can write tokens and a linear layer an image, without a copy after.
// Whether an abort flag (may be null) is raised; read without ordering (a hint polled per block).
inline bool stop_requested(const std::atomic<bool> * abort) { return abort && abort->load(std::memory_order_relaxed); }

struct Gemm {
    // F16: ggml_vec_dot_f16's arithmetic (f16 weights `w`, activations rounded to f16).
    // F32: ggml_vec_dot_f32's (f32 rows `a`, activations as they are).
    enum class Kind { F16, F32 } kind = Kind::F16;
    const uint16_t * w;  // F16: weights, row m at w + m*K
    const float * a;     // F32: rows, row m at a + m*a_stride
    int64_t a_stride = 0;  // F32: floats between rows of a (>= K)
    int64_t M, K, N;
    const char * x;      // f32 activations, unit element stride
    size_t nb1, nb2, nb3;
    int kernel_w, kernel_h, stride, pad;
    int64_t in_w, in_h, out_w, out_h;
    int64_t ne1, ne2;
    int64_t out_plane = 0;
    const float * bias;  // added to out[m, n] as bias[m] (ggml_add after the product), or null
    // Then + residual[i] at out's own index (same shape, contiguous): the ggml_add it replaces.
    const float * residual = nullptr;
    float * out;
    // A counter, 0 before any thread starts, from which the threads take units of work one at a
    // time (the AMX kernel), or null: each thread then takes a fixed share.
    int32_t * next_unit = nullptr;
    // Raised: the threads stop at their next block of work (the output is then incomplete).
    const std::atomic<bool> * abort = nullptr;
};

// The same products on AMX tiles (cpu-kernels-amx.cpp; F16 kind only): exact products summed
// in f32 in another order than ggml's, so equal to ggml's up to float rounding, not bit for bit.
// Needs AMX-BF16 with the OS's permission for tile data, and AVX-512 F/BW/DQ.
size_t gemm_amx_scratch_bytes(const Gemm & g);
void gemm_amx(const Gemm & g, int ith, int nth, void * scratch);

// out[m, n] = ggml's q8_0 dot product of weight row m (q8_0 or q4_0 blocks) with row n of x
// (f32, quantized to q8_0 as ggml-cpu does); out is [n, m]; bias as in Gemm.
struct QGemm {
    const void * w;      // row m at (const char *) w + m*row_bytes
    size_t row_bytes;
    bool q4;             // q4_0 blocks, else q8_0
    int64_t M, K, N;
    const char * x;      // row n at x + n*nb1, K contiguous floats
    size_t nb1;
    const float * bias;
    float * out;
    const std::atomic<bool> * abort = nullptr;  // as in Gemm
};

size_t qgemm_scratch_bytes(const QGemm & g);
// Needs AVX-512 F/BW/VL/DQ and VNNI.
void qgemm_avx512vnni(const QGemm & g, int ith, int nth, void * scratch);

// Floats of scratch one thread needs for `g`.
size_t gemm_scratch_floats(const Gemm & g);
// Thread `ith` of `nth` computes its share of `g`.
void gemm_avx512(const Gemm & g, int ith, int nth, float * scratch);

// ---- Activation kernels (cpu-kernels-activations-avx512.cpp, AVX-512F + DQ): each computes what
// a chain of ggml ops computes, float for float, in one pass over memory.

// ggml_group_norm(x, groups, eps), then * weight[c] (ggml_mul), + bias[c] (ggml_add), then, with
// `silu`, ggml_silu. x and out: contiguous [N, C, H, W]; C a multiple of groups. With `add`
// ([N, C]), the norm is of x + add[n, c] (a broadcast ggml_add before it).
struct GroupNorm {
    const float * x;
    const float * add;
    float * out;
    int64_t W, H, C, N;
    int64_t groups;
    float eps;
    const float * weight;
    const float * bias;
    bool silu;
};
void group_norm_avx512(const GroupNorm & g, int ith, int nth);

// ggml_norm(x, eps) over rows of `cols` contiguous floats, then * weight[i] (ggml_mul) and, if
// given, + bias[i] (ggml_add), i the position in the row.
struct LayerNorm {
    const float * x;
    float * out;
    int64_t cols, rows;
    float eps;
    const float * weight;
    const float * bias;
};
void layer_norm_avx512(const LayerNorm & l, int ith, int nth);

// ggml_soft_max(ggml_scale(x, scale)) over rows of `cols` contiguous floats.
struct SoftMax {
    const float * x;
    float * out;
    int64_t cols, rows;
    float scale;
};
void soft_max_avx512(const SoftMax & s, int ith, int nth);

// GEGLU: rows of 2*inner floats [value | gate] -> value * ggml_gelu(gate), rows of inner floats.
// gelu_table[h]: ggml_gelu of f16 value h (ggml computes gelu through an f16 table).
struct Geglu {
    const float * h;
    float * out;
    int64_t inner, rows;
    const float * gelu_table;
};
void geglu_avx512(const Geglu & g, int ith, int nth);

}  // namespace sd::cpu
