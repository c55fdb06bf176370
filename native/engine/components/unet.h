// The UNet graph of Stable Diffusion (LDM's openaimodel.UNetModel, canonical LDM names), for any
// UnetParams: levels from channel_mult, num_res_blocks and transformer_depth per level, the
// middle block with or without attention, cross-attention on `context`, heads as a fixed count
// or a fixed head width.
//
// The graph computes the model's raw output (eps or v); what it means is the sampler's business.
// A batch of N latents runs in one evaluation (cond + uncond for classifier-free guidance).
#pragma once
#include <vector>

#include "model/arch.h"
#include "nn/blocks.h"
#include "runtime/graph-runner.h"

namespace sd {

class Unet {
public:
    // `weights` must outlive the Unet. Throws InvalidArgument for params no UNet has.
    Unet(const TensorSource & weights, UnetParams params);

    const UnetParams & params() const { return params_; }
    // Latent height and width must be multiples of this (one halving per level but the last).
    int spatial_multiple() const;
    int heads_at(int channels) const;

    // Throws InvalidArgument naming the value that does not fit: batch >= 1, channels ==
    // in_channels, H and W multiples of spatial_multiple(), one timestep per batch item,
    // context batch == N, tokens a multiple of 77, context width == context_dim.
    void check_inputs(const int64_t x_ne[4], size_t timesteps, const int64_t context_ne[4]) const;

    // x: ne {W, H, C, N}; timesteps: ne {N}; context: ne {context_dim, tokens, N}.
    // Returns ne {W, H, out_channels, N}.
    ggml_tensor * build(Graph & g, ggml_tensor * x, ggml_tensor * timesteps, ggml_tensor * context) const;

    // Host-side evaluation: x [N, C, H, W], timesteps [N], context [N, tokens, context_dim]
    // (HostTensor ne in ggml order). Returns [N, out_channels, H, W].
    HostTensor forward(GraphRunner & runner, const HostTensor & x, const std::vector<float> & timesteps,
                       const HostTensor & context) const;

private:
    const TensorSource & weights_;
    UnetParams params_;
};

}  // namespace sd
