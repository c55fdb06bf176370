// The VAE (LDM's AutoencoderKL, canonical names "decoder.*", "post_quant_conv.*"): the decoder
// now; the encoder (img2img) will sit beside it in this file, sharing the blocks.
//
// Scaling: decode() takes the sampler's latent as it is and multiplies it by 1/scale_factor on
// the host before the graph, as stable-diffusion.cpp does; build_decoder() takes an already
// scaled latent. The output image is the decoder's raw output, about [-1, 1], not clamped;
// image_to_rgb8 maps it to bytes as stable-diffusion.cpp does.
#pragma once
#include <cstdint>
#include <vector>

#include "model/arch.h"
#include "nn/blocks.h"
#include "runtime/graph-runner.h"

namespace sd {

class VaeDecoder {
public:
    // `weights` must outlive the decoder. Throws InvalidArgument for unusable params.
    VaeDecoder(const TensorSource & weights, VaeParams params);

    const VaeParams & params() const { return params_; }
    // Image pixels per latent pixel (8 for the standard VAE).
    int upscale() const { return 1 << (static_cast<int>(params_.channel_mult.size()) - 1); }

    // z: ne {w, h, z_channels, N}, already divided by the scale factor.
    // Returns ne {w*upscale, h*upscale, 3, N}.
    ggml_tensor * build_decoder(Graph & g, ggml_tensor * z) const;

    // latent: [N, z_channels, h, w] straight from the sampler. Returns [N, 3, H, W].
    // Throws InvalidArgument for a wrong channel count or an empty latent.
    HostTensor decode(GraphRunner & runner, const HostTensor & latent) const;

private:
    const TensorSource & weights_;
    VaeParams params_;
};

// [N, 3, H, W] in [-1, 1] -> N interleaved RGB images (H*W*3 bytes each): (x + 1) / 2, clamped
// to [0, 1], times 255, truncated (stable-diffusion.cpp's conversion).
std::vector<uint8_t> image_to_rgb8(const HostTensor & image);

}  // namespace sd
