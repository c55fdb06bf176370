// Building blocks shared by the text encoder, UNet and VAE graphs: they look weights up by
// name, check their shapes, and compute what stable-diffusion.cpp computes through nn/ops.h
// (which picks ggml's op or sdnode's kernel with the same numbers):
//   - group norm: 32 groups, eps 1e-6 everywhere (UNet and VAE alike, as sd.cpp);
//   - layer norm: eps 1e-5;
//   - attention: softmax(Q K^T / sqrt(d_head)) V with an optional causal mask;
//   - conv2d: ggml_conv_2d's numbers (im2col in the kernel's type, f16) + bias.
//
// Layout: ggml order, fastest dimension first. An image tensor [N, C, H, W] is ne {W, H, C, N};
// a token sequence [N, L, C] is ne {C, L, N}. Every helper names its output after `prefix`
// (ggml_format_name) so intermediates can be dumped and compared.
//
// Every helper checks the weight shape against its input before adding a node and throws
// ModelFormat naming the tensor: a ggml shape assert would abort the whole process.
#pragma once
#include <string>
#include <unordered_map>
#include <vector>

#include "nn/ops.h"
#include "ggml.h"

namespace sd {

class ComponentWeights;
struct MappedRange;

// Where a graph finds its weights: canonical name -> tensor on the compute backend.
class TensorSource {
public:
    virtual ~TensorSource() = default;
    virtual ggml_tensor * find(const std::string & name) const = 0;  // nullptr when absent
    ggml_tensor * get(const std::string & name) const;               // throws ModelFormat when absent
    // The mapped-file range of a weight used in place (see WeightLoadOptions::map_from_file).
    virtual const MappedRange * mapped_range(const ggml_tensor *) const { return nullptr; }
    virtual bool quantized() const { return false; }  // any weight in a quantized type
};

// A TensorSource over loaded component weights (not owned).
class ComponentTensors : public TensorSource {
public:
    explicit ComponentTensors(const ComponentWeights & weights) : weights_(weights) {}
    ggml_tensor * find(const std::string & name) const override;
    const MappedRange * mapped_range(const ggml_tensor * t) const override;
    bool quantized() const override;

private:
    const ComponentWeights & weights_;
};

// Run-time adapters (LoRA applied without merging, adapters/lora.h): per weight name
// ("<prefix>.weight"), terms added to the layer's output, y += scale * up(mid(down(x))) or
// y += dense x. Factors are torch-shaped like the weight: down [r, in(, kh, kw)], mid [r, r, kh, kw]
// (Tucker; then down is 1x1), up [out, r(, 1, 1)]; dense has the weight's shape. Each is on the
// graph's backend.
struct RuntimeTerm {
    ggml_tensor * down = nullptr;
    ggml_tensor * mid = nullptr;
    ggml_tensor * up = nullptr;
    ggml_tensor * dense = nullptr;
    float scale = 1.0f;
};
using RuntimePatches = std::unordered_map<std::string, std::vector<RuntimeTerm>>;

// What a run's adapters make of one component's weights: the tensors the graph reads (the model's
// own, or an overlay holding merged copies of the adapted ones) and the run-time terms.
class WeightAdapter {
public:
    virtual ~WeightAdapter() = default;
    virtual const TensorSource & weights(const TensorSource & base) const = 0;
    virtual const RuntimePatches * runtime(const TensorSource & base) const = 0;  // null: none
    // Part of every graph's shape key while the adapter is active (graphs differ per adapter set).
    virtual const std::string & key() const = 0;
};

// The graph under construction and its weights.
struct Graph {
    ggml_context * ctx;
    const TensorSource & w;
    // sdnode's kernels the ops may use (nn/ops.h; ops::graph_kernels() of the backend the graph
    // runs on; all false off the CPU).
    CpuKernels cpu = {};
    // conv2d() scales its input by this before the convolution and the result back after (bias
    // and residual added unscaled): stable-diffusion.cpp's Conv2D scale, which keeps the SDXL
    // VAE's large activations inside f16's range where the convolution rounds them to f16.
    float conv_scale = 1.0f;
    const RuntimePatches * patches = nullptr;  // run-time LoRA terms, null: none
};

class GraphBuilder;
class GraphRunner;
// The graph a component builds on `runner` from its `weights`, as the runner's current weight
// adapter (GraphRunner::set_weight_adapter) presents them, with the runner's kernels.
Graph component_graph(GraphBuilder & b, const TensorSource & weights, GraphRunner & runner);

// `y` (computed from weight `w`) as an in-place node that, once `y` is computed, drops `w`'s
// pages from resident memory when `w` is used from the mapped file (read again at the next use):
// the weights then never need to be resident all at once. `y` itself when there is nothing to do.
ggml_tensor * release_after_use(Graph & g, ggml_tensor * y, ggml_tensor * w);

// "[out, in, kh, kw]": a tensor's shape, outermost first, for messages.
std::string shape_text(const ggml_tensor * t);

// Names `t` (truncated to GGML_MAX_NAME) and returns it.
ggml_tensor * named(ggml_tensor * t, const std::string & name);

// x: [..., in] -> [..., out]; weight "<prefix>.weight" [out, in], bias "<prefix>.bias" if present.
// residual (optional): added after the bias as ggml_add(residual, y) would (fused into sdnode's
// kernel where it runs: the same float additions, one pass less).
ggml_tensor * linear(Graph & g, ggml_tensor * x, const std::string & prefix, ggml_tensor * residual = nullptr);

// x: [N, C, H, W]; kernel "<prefix>.weight" [out, C, kh, kw] (a 2-D [out, C] is taken as 1x1),
// bias "<prefix>.bias" if present.
// residual (optional): as for linear().
ggml_tensor * conv2d(Graph & g, ggml_tensor * x, const std::string & prefix, int stride = 1, int padding = 0,
                     ggml_tensor * residual = nullptr);

// x: [N, C, H, W]: 32 groups over C, eps 1e-6, per-channel affine; then SiLU with `silu`.
// add (optional, [N, C]): the norm is of x + add[n, c].
ggml_tensor * group_norm(Graph & g, ggml_tensor * x, const std::string & prefix, bool silu = false,
                         ggml_tensor * add = nullptr);

// x: [..., C]: normalized over C, eps 1e-5, affine.
ggml_tensor * layer_norm(Graph & g, ggml_tensor * x, const std::string & prefix, float eps = 1e-5f);

// Sinusoidal timestep embedding, LDM's flip_sin_to_cos layout: [cos(t f_j) | sin(t f_j)],
// f_j = max_period^(-j / (dim/2)). timesteps: [N] -> [N, dim].
ggml_tensor * timestep_embedding(ggml_context * ctx, ggml_tensor * timesteps, int dim, int max_period = 10000);

// ---- UNet blocks (LDM names under `prefix`)

// ResBlock: in_layers (norm, SiLU, conv3x3), + emb_layers (SiLU, linear) per channel,
// out_layers (norm, SiLU, conv3x3), + skip (identity or 1x1 skip_connection).
// emb: [N, time_embed_dim].
ggml_tensor * unet_resblock(Graph & g, ggml_tensor * x, ggml_tensor * emb, const std::string & prefix);

// SpatialTransformer: norm, proj_in (1x1 conv or linear), `depth` BasicTransformerBlocks
// (self-attention, cross-attention on context, GEGLU feed-forward, each pre-norm + residual),
// proj_out, + input. heads: attention heads at this width.
ggml_tensor * spatial_transformer(Graph & g, ggml_tensor * x, ggml_tensor * context, const std::string & prefix,
                                  int heads, int depth);

// Downsample: 3x3 conv, stride 2, padding 1 ("<prefix>.op").
ggml_tensor * unet_downsample(Graph & g, ggml_tensor * x, const std::string & prefix);
// Upsample: nearest x2, then 3x3 conv ("<prefix>.conv").
ggml_tensor * upsample(Graph & g, ggml_tensor * x, const std::string & prefix);

// ---- VAE blocks

// ResnetBlock: norm1, SiLU, conv1, norm2, SiLU, conv2, + (x or nin_shortcut(x)).
ggml_tensor * vae_resblock(Graph & g, ggml_tensor * x, const std::string & prefix);
// AttnBlock: single-head self-attention over H*W positions with 1x1 q/k/v/proj_out, + x.
ggml_tensor * vae_attention(Graph & g, ggml_tensor * x, const std::string & prefix);

}  // namespace sd
