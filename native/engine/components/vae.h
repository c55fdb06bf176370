// The VAE (LDM's AutoencoderKL, canonical names "encoder.*", "quant_conv.*", "decoder.*",
// "post_quant_conv.*"): the encoder (images to latents, for image-to-image) and the decoder.
//
// Scaling: decode() takes the sampler's latent as it is and multiplies it by 1/scale_factor on
// the host before the graph, as stable-diffusion.cpp does; build_decoder() takes an already
// scaled latent. The output image is the decoder's raw output, about [-1, 1], not clamped;
// image_to_rgb8 maps it to bytes as stable-diffusion.cpp does.
//
// Encoding: the encoder gives the posterior's moments (mean and log-variance, 2 * z_channels);
// a latent is (mean + exp(logvar / 2) * noise) * scale_factor, with the noise drawn from the
// run's generator (one randn of the latent's size) or none (the mean).
#pragma once
#include <cstdint>
#include <vector>

#include "model/arch.h"
#include "nn/blocks.h"
#include "diffusion/rng.h"
#include "runtime/graph-runner.h"

namespace sd {

class Vae {
public:
    // `weights` must outlive the VAE. Throws InvalidArgument for unusable params.
    Vae(const TensorSource & weights, VaeParams params);

    const VaeParams & params() const { return params_; }
    bool can_encode() const { return params_.has_encoder; }
    bool can_decode() const { return params_.has_decoder; }
    // Image pixels per latent pixel (8 for the standard VAE).
    int upscale() const { return 1 << (static_cast<int>(params_.channel_mult.size()) - 1); }

    // z: ne {w, h, z_channels, N}, already divided by the scale factor.
    // Returns ne {w*upscale, h*upscale, 3, N}.
    ggml_tensor * build_decoder(Graph & g, ggml_tensor * z) const;
    // image: ne {W, H, 3, N} in [-1, 1], W and H multiples of upscale().
    // Returns the moments, ne {W/upscale, H/upscale, 2*z_channels, N}.
    ggml_tensor * build_encoder(Graph & g, ggml_tensor * image) const;

    // latent: [N, z_channels, h, w] straight from the sampler. Returns [N, 3, H, W].
    // Throws InvalidArgument for a wrong channel count or an empty latent, Unsupported without
    // a decoder.
    HostTensor decode(GraphRunner & runner, const HostTensor & latent) const;

    // image: [N, 3, H, W] in [-1, 1]. Returns the scaled latent [N, z_channels, H/8, W/8]:
    // (mean + std * noise) * scale_factor, noise from `noise` (one randn per image, in ggml
    // order) or the mean when null. Throws InvalidArgument for a wrong shape, Unsupported
    // without an encoder.
    HostTensor encode(GraphRunner & runner, const HostTensor & image, Rng * noise) const;

private:
    const TensorSource & weights_;
    VaeParams params_;
};

// [N, 3, H, W] in [-1, 1] -> N interleaved RGB images (H*W*3 bytes each): (x + 1) / 2, clamped
// to [0, 1], times 255, truncated (stable-diffusion.cpp's conversion).
std::vector<uint8_t> image_to_rgb8(const HostTensor & image);

// N interleaved RGB images (H*W*3 bytes each) -> [N, 3, H, W] in [-1, 1]: x / 255 * 2 - 1.
HostTensor rgb8_to_image(const std::vector<uint8_t> & rgb, int64_t width, int64_t height, int64_t count);

}  // namespace sd
