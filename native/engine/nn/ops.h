// The one place that picks, per operation, between ggml's op and sdnode's CPU kernel
// (kernels/cpu-kernels.h). Every function computes the same numbers either way (the kernels are
// ggml's arithmetic bit for bit; AMX, where a graph asks for it, to float rounding), so the
// blocks (nn/blocks.h) have one code path and never see the choice. Off the CPU backend
// Graph::cpu is all false and only ggml's ops are used, so a GPU graph holds nothing a GPU
// backend cannot run.
//
// The callers (nn/blocks.cpp) have checked every shape: these functions assume operands that
// fit. Layout: ggml order, fastest dimension first ([N, C, H, W] is ne {W, H, C, N}).
#pragma once
#include <cstdint>
#include <string>

#include "ggml-backend.h"
#include "ggml.h"
#include "kernels/cpu-kernels.h"

namespace sd {

class TensorSource;

namespace ops {

// The kernels a graph of `weights` on `backend` uses: cpu_kernels_for(backend), without AMX for
// components with quantized weights. Their layers quantize activations (to q8_0), and rounding
// to 8 bits turns the last-bit differences of AMX's f32 sums into whole quantization steps here
// and there, so quantized models keep ggml's f16 arithmetic bit for bit, as
// stable-diffusion.cpp computes it; SDNODE_CPU_AMX=all gives them AMX too (faster, ~1% apart).
CpuKernels graph_kernels(ggml_backend_t backend, const TensorSource & weights, uint16_t abort_slot = 0);

// y = x W^T (+ bias) (+ residual, added as ggml_add(residual, y)). w: [out, in]; x: [..., in];
// bias: f32 [out] or null; residual: [..., out] or null.
ggml_tensor * linear(ggml_context * ctx, const CpuKernels & cpu, ggml_tensor * w, ggml_tensor * x, ggml_tensor * bias,
                     ggml_tensor * residual);

// A linear layer on tokens x [N, H*W, in] that gives the image [N, out, H, W] (+ residual, an
// image): the same dot products as a 1x1 convolution of tokens_to_image(x). w: [out, in].
ggml_tensor * linear_to_image(ggml_context * ctx, const CpuKernels & cpu, ggml_tensor * w, ggml_tensor * x,
                              ggml_tensor * bias, ggml_tensor * residual, int64_t width, int64_t height);

// ggml_conv_2d (im2col in the kernel's type + matmul, as stable-diffusion.cpp runs it) (+ bias)
// (+ residual). w: [out, in, kh, kw]; x: [N, in, H, W].
ggml_tensor * conv2d(ggml_context * ctx, const CpuKernels & cpu, ggml_tensor * w, ggml_tensor * x, int stride, int padding,
                     ggml_tensor * bias, ggml_tensor * residual);

// A 1x1 convolution whose result is wanted as tokens [N, H*W, out] (image_to_tokens of it).
ggml_tensor * conv1x1_to_tokens(ggml_context * ctx, const CpuKernels & cpu, ggml_tensor * w, ggml_tensor * x,
                                ggml_tensor * bias);

// Group norm over `groups` groups of C, eps, affine (weight, bias: f32 [C]), then SiLU with
// `silu`. add (optional, f32 [N, C]): the norm is of x + add[n, c].
ggml_tensor * group_norm(ggml_context * ctx, const CpuKernels & cpu, ggml_tensor * x, ggml_tensor * weight,
                         ggml_tensor * bias, int groups, float eps, bool silu, ggml_tensor * add);

// Layer norm over ne[0], eps, times weight (+ bias); weight, bias: f32 [ne0] (bias may be null).
ggml_tensor * layer_norm(ggml_context * ctx, const CpuKernels & cpu, ggml_tensor * x, ggml_tensor * weight,
                         ggml_tensor * bias, float eps);

// value * gelu(gate) for h [.., 2*inner] whose rows are [value | gate] -> [.., inner].
ggml_tensor * geglu(ggml_context * ctx, const CpuKernels & cpu, ggml_tensor * h);

// [N, C, H, W] <-> [N, H*W, C] (layout copies; no choice to make).
ggml_tensor * image_to_tokens(ggml_context * ctx, ggml_tensor * x);
ggml_tensor * tokens_to_image(ggml_context * ctx, ggml_tensor * x, int64_t w, int64_t h);

// softmax(Q K^T / sqrt(d)) V per head: q: [N, Lq, heads*d], k, v: [N, Lk, heads*d] ->
// [N, Lq, heads*d]; causal: position i attends to positions <= i only (CLIP). With sdnode's f32
// and activation kernels, non-causal attention is one fused op (a block of one head's scores
// at a time). Otherwise past max_scores_bytes of score matrices, heads run in groups, and a
// head whose scores alone are larger runs a block of queries at a time (same numbers, bounded
// memory, and graph nodes short enough that an abort, checked between nodes, lands soon).
// Throws ModelFormat when the shapes do not split into `heads`.
constexpr int64_t kMaxAttentionScoresBytes = int64_t{128} << 20;
// At most this many query blocks per attention (graph nodes grow with them): past it blocks get
// larger than max_scores_bytes.
constexpr int64_t kMaxAttentionBlocks = 128;
ggml_tensor * attention(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, int heads, bool causal,
                        const std::string & name, const CpuKernels & cpu = {},
                        int64_t max_scores_bytes = kMaxAttentionScoresBytes);

}  // namespace ops
}  // namespace sd
