// The UNet graph of Stable Diffusion (LDM's openaimodel.UNetModel, canonical LDM names), for any
// UnetParams: levels from channel_mult, num_res_blocks and transformer_depth per level, the
// middle block with or without attention, cross-attention on `context`, heads as a fixed count
// or a fixed head width.
//
// The graph computes the model's raw output (eps or v); what it means is the denoiser's business
// (diffusion/denoiser.h). A batch of N latents runs in one evaluation (cond + uncond for
// classifier-free guidance).
#pragma once
#include <vector>

#include "model/arch.h"
#include "nn/blocks.h"
#include "runtime/graph-runner.h"

namespace sd {

// Everything one UNet evaluation takes. Only x, timesteps and context are always there; the rest
// is what other modes and models add, each empty when unused.
struct UnetInput {
    HostTensor x;                   // ne {W, H, C, N}: the latent, already scaled by c_in
    std::vector<float> timesteps;   // N
    HostTensor context;             // ne {context_dim, tokens, N}: cross-attention conditioning
    HostTensor y;                   // ne {adm_in_channels, N}: SDXL's label vector (pooled text + sizes)
    HostTensor concat;              // ne {W, H, C', N}: channels after x (inpainting: mask + masked
                                    // image latent; instruct-pix2pix: the image latent)
    std::vector<HostTensor> control;  // ControlNet residuals: one per input block, then the middle
                                      // block's, each of that block's output shape
};

// The pieces of the UNet graph ControlNet shares (its encoder is a copy of the UNet's).
// Heads at `channels` width under p's fixed count or fixed head width; -1 when they do not split.
int unet_heads_at(const UnetParams & p, int channels);
// time_embed (and SDXL's label_emb on y, when y is given): [N, time_embed_dim].
ggml_tensor * unet_time_embedding(Graph & g, const UnetParams & p, ggml_tensor * timesteps, ggml_tensor * y);
// The encoder after input_blocks.0: input_blocks 1.. on h (input_blocks.0's output, pushed to
// `outputs` by the caller), each block's output appended to `outputs`, then the middle block when
// p has one. Returns the middle block's output (the last input block's without one).
ggml_tensor * unet_encoder(Graph & g, const UnetParams & p, ggml_tensor * h, ggml_tensor * emb, ggml_tensor * context,
                           std::vector<ggml_tensor *> & outputs);

class Unet {
public:
    // `weights` must outlive the Unet. Throws InvalidArgument for params no UNet has.
    Unet(const TensorSource & weights, UnetParams params);

    const UnetParams & params() const { return params_; }
    // Latent height and width must be multiples of this (one halving per level but the last).
    int spatial_multiple() const;
    int heads_at(int channels) const;

    // Throws InvalidArgument naming the value that does not fit: batch >= 1, channels of x and
    // concat == in_channels, H and W multiples of spatial_multiple(), one timestep per batch
    // item, context batch == N, tokens a multiple of 77, context width == context_dim, y's width
    // == adm_in_channels (and present exactly when the UNet has a label embedding), control
    // residuals one per block with its shape.
    void check_inputs(const UnetInput & in) const;

    // The graph's tensors: x, concat: ne {W, H, C, N}; timesteps: ne {N}; context: ne
    // {context_dim, tokens, N}; y: ne {adm_in_channels, N} or null; control: empty or one per
    // block. Returns ne {W, H, out_channels, N}.
    struct GraphInputs {
        ggml_tensor * x;
        ggml_tensor * timesteps;
        ggml_tensor * context;
        ggml_tensor * y = nullptr;
        std::vector<ggml_tensor *> control;
    };
    ggml_tensor * build(Graph & g, const GraphInputs & in) const;

    // Host-side evaluation. Returns [N, out_channels, H, W] (ne {W, H, out_channels, N}).
    HostTensor forward(GraphRunner & runner, const UnetInput & in) const;

    // How many ControlNet residuals build() takes: the input blocks' outputs and the middle's.
    int control_count() const;

private:
    const TensorSource & weights_;
    UnetParams params_;
};

// The conditioning inputs of a UNet-shaped graph (timesteps, context and, when given, y) declared
// on `b` from `in`; x, concat and control residuals are the caller's (the UNet and the ControlNet).
void declare_unet_inputs(GraphBuilder & b, Graph & g, const UnetInput & in, Unet::GraphInputs & gi);

}  // namespace sd
