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

#include "components/tiling.h"
#include "model/arch.h"
#include "nn/blocks.h"
#include "diffusion/rng.h"
#include "runtime/graph-runner.h"

namespace sd {

// stable-diffusion.cpp's Conv2D scale for an SDXL checkpoint's own VAE.
constexpr float kSdxlVaeConvScale = 1.0f / 32.0f;

class Vae {
public:
    // `weights` must outlive the VAE. Throws InvalidArgument for unusable params.
    // conv_scale: Graph::conv_scale for every convolution (1/32 for SDXL's own VAE, as the reference).
    Vae(const TensorSource & weights, VaeParams params, float conv_scale = 1.0f);
    float conv_scale() const { return conv_scale_; }

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
    // With tiling.enabled, decoded in overlapping tiles and blended (components/tiling.h), the
    // raw outputs blended before image_to_rgb8 clamps them, as the reference does. Throws
    // InvalidArgument for a wrong channel count or an empty latent, Unsupported without a
    // decoder, Aborted (between tiles too).
    HostTensor decode(GraphRunner & runner, const HostTensor & latent, const VaeTiling & tiling = {}) const;

    // image: [N, 3, H, W] in [-1, 1]. Returns the scaled latent [N, z_channels, H/8, W/8]:
    // (mean + std * noise) * scale_factor, noise from `noise` (one randn per image, in ggml
    // order) or the mean when null. Throws InvalidArgument for a wrong shape, Unsupported
    // without an encoder.
    // With tiling.enabled the moments are computed in tiles (twice the decode tile) and blended,
    // then sampled as a whole, as the reference does.
    HostTensor encode(GraphRunner & runner, const HostTensor & image, Rng * noise, const VaeTiling & tiling = {}) const;

    // Compute-buffer bytes one untiled decode of a w x h latent (batch 1) needs on the runner's
    // backends, measured by ggml's allocator on the graph (nothing allocated or computed).
    size_t decode_compute_bytes(GraphRunner & runner, int64_t w, int64_t h) const;
    // The same for an untiled encode of a w x h image (pixels).
    size_t encode_compute_bytes(GraphRunner & runner, int64_t w, int64_t h) const;

private:
    const TensorSource & weights_;
    VaeParams params_;
    float conv_scale_ = 1.0f;
};

// The range a decoder's image is in: the VAE's [-1, 1], TAESD's [0, 1].
enum class PixelRange { MinusOneToOne, ZeroToOne };

// [N, 3, H, W] -> N interleaved RGB images (H*W*3 bytes each): mapped to [0, 1] ((x + 1) / 2 for
// the VAE's range), clamped to [0, 1], times 255, truncated (stable-diffusion.cpp's conversion).
std::vector<uint8_t> image_to_rgb8(const HostTensor & image, PixelRange range = PixelRange::MinusOneToOne);

// N interleaved RGB images (H*W*3 bytes each) -> [N, 3, H, W] in [-1, 1]: x / 255 * 2 - 1.
HostTensor rgb8_to_image(const std::vector<uint8_t> & rgb, int64_t width, int64_t height, int64_t count);

}  // namespace sd
