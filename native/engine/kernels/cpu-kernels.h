// Faster CPU kernels for the two products that dominate Stable Diffusion: convolutions and
// linear layers with f16 weights. They compute the same numbers as ggml's own ops bit for bit,
// so stable-diffusion.cpp's reference outputs are matched exactly as before, only sooner.
//
// Why ggml's ops are slow here: ggml_conv_2d writes a full im2col copy of the input in f16
// (K x pixels, tens to hundreds of MB for a VAE decode), and its f16 dot product converts both
// operands from f16 for every multiply-add, so each vector FMA costs two conversions.
//
// What "same numbers" means: ggml's AVX-512 f16 dot product (ggml_vec_dot_f16, f32 sums) keeps
// 4 accumulators of 16 lanes (element k goes to accumulator (k % 64) / 16, lane k % 16), adds
// them as (a0 + a2) + (a1 + a3), reduces the 16 lanes with _mm512_reduce_add_ps, then adds the
// K % 64 leftover products in double. Activations are rounded to f16 first (im2col output, or
// the f16 copy of src1). These kernels keep every one of those steps per output value and only
// change what is loaded when: the activations are packed (im2col on the fly) once per panel of
// columns and rounded to f16 once, the weights are converted once per tile of rows, and a
// register tile of rows x columns shares every load.
//
// Used only on the CPU backend, only on x86-64 CPUs with AVX-512F (where ggml's own CPU code
// takes the same AVX-512 path); elsewhere the graphs use ggml's ops.
//
// The one exception to "bit for bit": on CPUs with AMX, graphs of f16 models may run their f16
// products on AMX tiles (CpuKernels::amx, cpu-kernels-amx.cpp): ggml's exact products, summed in
// f32 in the tile unit's order, ~4x the AVX-512 kernels' arithmetic rate; equal to ggml's up to
// float rounding.
#pragma once
#include <atomic>
#include <cstdint>

#include "ggml-backend.h"
#include "ggml.h"

namespace sd {

// Which kernels graphs on `backend` use: none off the CPU backend or where
// cpu_kernels_available() is false; otherwise those that gave ggml's exact numbers in a
// self-check run once per process on `backend` (f16: conv/linear; f32: attention products,
// whose leftover handling depends on how ggml-cpu was compiled).
struct CpuKernels {
    bool f16 = false;
    bool f32 = false;
    bool quant = false;  // q8_0 / q4_0 linear layers (needs AVX-512 VNNI)
    bool activations = false;  // group and layer norm, scaled softmax, GEGLU (needs AVX-512 DQ)
    // f16 convolutions and linear layers on AMX tiles (needs AMX-BF16; SDNODE_CPU_AMX=0 turns it
    // off): ggml's exact products summed in f32 in another order, so equal to ggml's up to float
    // rounding, not bit for bit. A graph chooses it per product (the `amx` arguments below).
    bool amx = false;
    // The abort slot (KernelAbortSlot) the kernels of a graph poll; 0: none.
    uint16_t abort_slot = 0;
};
CpuKernels cpu_kernels_for(ggml_backend_t backend);

// Abort inside the kernels. A graph's long-running ops (products, convolutions, fused attention)
// carry a slot number in their parameters; through it their threads read the flag the slot
// points at and stop at their next block of work (a fraction of a millisecond to a few ms), so
// that an abort does not wait for a whole node: one attention node alone can run for minutes at
// large sizes. ggml then stops the graph before the next node (its abort callback), and the run
// reports the abort; a stopped node's output is garbage nobody reads.
//
// A GraphRunner owns one slot for its life and points it at the flag of the run in progress.
class KernelAbortSlot {
public:
    KernelAbortSlot();  // throws Internal when all 65535 slots are taken
    ~KernelAbortSlot();
    KernelAbortSlot(const KernelAbortSlot &) = delete;
    KernelAbortSlot & operator=(const KernelAbortSlot &) = delete;
    uint16_t id() const { return id_; }
    // Any thread; the flag must outlive the pointing (null: never aborted).
    void point_at(const std::atomic<bool> * flag);

private:
    uint16_t id_;
};
// The flag slot `id` points at (null for 0 or an empty slot).
const std::atomic<bool> * kernel_abort_flag(uint16_t id);
// The same for a CPU backend made for the purpose (what every CPU model will use).
CpuKernels cpu_kernels_on_cpu();

// Whether `ours` equals `theirs` up to float rounding of differently ordered f32 sums: relative
// L2 error below 1e-5 and no element off by more than 1e-4 of the largest magnitude.
bool cpu_close(const float * ours, const float * theirs, size_t n);

// True when this build and CPU run the kernels below (x86-64 with AVX-512F), and they are not
// turned off with SDNODE_CPU_KERNELS=0 (to measure or compare against ggml's own ops).
bool cpu_kernels_available();

// Same result as ggml_conv_2d(ctx, w, x, stride, stride, padding, padding, 1, 1):
// w: f16 [OC, IC, KH, KW] (ne {KW, KH, IC, OC}), contiguous; x: f32 [N, IC, H, W] (any strides
// with unit element stride); result: f32 [N, OC, OH, OW], contiguous.
// bias (optional): f32 [OC], added as ggml_add(conv, bias) would, without a pass of its own.
// residual (optional): contiguous f32 of the result's shape, then added element by element, the
// same float addition as ggml_add(residual, result).
// tokens_out: the result as tokens, f32 [N, OH*OW, OC] (ne {OC, OH*OW, N}), as
// ggml_cont(ggml_permute(...)) of the image would give, without that copy.
// amx: on AMX tiles (only where cpu_kernels_for() reports amx): float rounding apart, not bit for bit.
ggml_tensor * cpu_conv2d_f16(ggml_context * ctx, ggml_tensor * w, ggml_tensor * x, int stride, int padding,
                             ggml_tensor * bias = nullptr, ggml_tensor * residual = nullptr, bool tokens_out = false,
                             bool amx = false, uint16_t abort_slot = 0);

// Same result as ggml_mul_mat(ctx, w, x) for f16 w [M, K] (ne {K, M}), contiguous, and f32 x
// with ne[0] == K (unit element stride, any row strides): result f32 ne {M, x->ne[1..3]}.
// bias, residual and amx (optional): as for cpu_conv2d_f16.
// image_w, image_h (optional): x holds rows of image_w*image_h pixels' tokens ([N, H*W, K]); the
// result is then that image, f32 [N, M, H, W] (residual too), without a copy after.
ggml_tensor * cpu_linear_f16(ggml_context * ctx, ggml_tensor * w, ggml_tensor * x, ggml_tensor * bias = nullptr,
                             ggml_tensor * residual = nullptr, int64_t image_w = 0, int64_t image_h = 0, bool amx = false,
                             uint16_t abort_slot = 0);

// Same result as ggml_mul_mat(ctx, w, x) (+ bias as ggml_add) for q8_0 or q4_0 w [M, K] and
// contiguous f32 x with ne[0] == K. Only where cpu_kernels_for() reports quant.
ggml_tensor * cpu_linear_q(ggml_context * ctx, ggml_tensor * w, ggml_tensor * x, ggml_tensor * bias = nullptr,
                           uint16_t abort_slot = 0);

// Same result as ggml_mul_mat(ctx, a, b) for f32 a [.., M, K] and b [.., N, K] with contiguous
// rows (any row and batch strides: permuted views need no copy) and the same batch dimensions
// (attention's Q K^T and P V): result f32 ne {M, N, ne2, ne3}, contiguous.
// Only where cpu_kernels_for() reports f32.
ggml_tensor * cpu_matmul_f32(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b, uint16_t abort_slot = 0);

// Non-causal multi-head attention, the same floats as attention's op chain with the two kernels
// above: per image and head h (features [h*d, (h+1)*d)), probs = ggml_soft_max(ggml_scale(
// ggml_mul_mat(K_h, Q_h), scale)), out_h = ggml_mul_mat(V_h^T, probs). q: f32 [N, Lq, heads*d],
// k and v: f32 [N, Lk, heads*d], each with unit element stride (any row and image strides);
// result: f32 [N, Lq, heads*d], contiguous (the heads side by side, as permute + cont gives).
// One head and a block of queries at a time: only a block's scores exist at once (in L2).
// Only where cpu_kernels_for() reports f32 and activations.
ggml_tensor * cpu_attention_f32(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, int heads, float scale,
                                uint16_t abort_slot = 0);

// Same result as ggml_group_norm(x, groups, eps), then ggml_mul by weight and ggml_add of bias
// (both reshaped to [1, C, 1, 1]), then, with `silu`, ggml_silu; one pass over memory instead of
// six. x: contiguous f32 [N, C, H, W], C a multiple of groups; weight, bias: contiguous f32 [C].
// add (optional): contiguous f32 [N, C], added to x first as a broadcast ggml_add would.
// Only where cpu_kernels_for() reports activations.
ggml_tensor * cpu_group_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * weight, ggml_tensor * bias, int groups,
                             float eps, bool silu, ggml_tensor * add = nullptr);

// Same result as ggml_norm(x, eps), then ggml_mul by weight and, if given, ggml_add of bias
// (both [ne0]), in one pass. x: contiguous f32, rows along ne[0]. Only where cpu_kernels_for()
// reports activations.
ggml_tensor * cpu_layer_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * weight, ggml_tensor * bias, float eps);

// Same result as ggml_soft_max(ggml_scale(x, scale)) for contiguous f32 x (rows along ne[0]).
// Only where cpu_kernels_for() reports activations.
ggml_tensor * cpu_soft_max(ggml_context * ctx, ggml_tensor * x, float scale);

// GEGLU: for contiguous f32 h [.., 2*inner], value = the first half of each row, gate = the
// second: the same result as ggml_mul(ggml_cont(value), ggml_gelu(ggml_cont(gate))), [.., inner].
// Only where cpu_kernels_for() reports activations.
ggml_tensor * cpu_geglu(ggml_context * ctx, ggml_tensor * h);

}  // namespace sd
