// TAESD, the tiny autoencoder (madebyollin/taesd as diffusers' AutoencoderTiny, canonical names
// "encoder.layers.N.*" / "decoder.layers.N.*"), computed as stable-diffusion.cpp's tae.hpp:
//
//   Block(x)  = relu(conv.4(relu(conv.2(relu(conv.0(x))))) + x)        3x3 convolutions, bias
//   encoder   = 0 conv 3->64, 1 Block, then three times [conv stride 2 (no bias), 3 Blocks],
//               14 conv 64->z                                           image [0, 1] -> latent
//   decoder   = tanh(z / 3) * 3, 0 conv z->64, 1 ReLU, then three times [3 Blocks, nearest x2,
//               conv (no bias)], 17 Block, 18 conv 64->3                latent -> image ~[0, 1]
//
// Latents: TAESD works on the sampler's latent as it is — no scale factor either way (the
// reference's TAE diffusion_to_vae_latents / vae_output_to_latents are the identity), and its
// encoder gives the latent itself (no posterior, no noise). Images are in [0, 1], not [-1, 1]:
// the reference does not rescale TAESD's input or output (scale_input = false); the output is
// clamped to [0, 1] only when it becomes bytes.
#pragma once

#include "components/tiling.h"
#include "model/arch.h"
#include "nn/blocks.h"
#include "runtime/graph-runner.h"

namespace sd {

class Taesd {
public:
    // `weights` must outlive the TAESD. Throws InvalidArgument for unusable params.
    Taesd(const TensorSource & weights, TaesdParams params);

    const TaesdParams & params() const { return params_; }
    bool can_encode() const { return params_.has_encoder; }
    bool can_decode() const { return params_.has_decoder; }
    static constexpr int kUpscale = 8;  // image pixels per latent pixel
    int upscale() const { return kUpscale; }

    // z: ne {w, h, z_channels, N}. Returns ne {8w, 8h, 3, N}, about [0, 1], not clamped.
    ggml_tensor * build_decoder(Graph & g, ggml_tensor * z) const;
    // image: ne {W, H, 3, N} in [0, 1], W and H multiples of 8. Returns ne {W/8, H/8, z, N}.
    ggml_tensor * build_encoder(Graph & g, ggml_tensor * image) const;

    // latent: [N, z, h, w] straight from the sampler. Returns [N, 3, 8h, 8w] in about [0, 1].
    // Tiled as the reference tiles its first-stage model when `tiling.enabled`. Throws
    // InvalidArgument for a wrong shape, UnsupportedModel without a decoder, Aborted.
    HostTensor decode(GraphRunner & runner, const HostTensor & latent, const VaeTiling & tiling = {}) const;
    // image: [N, 3, H, W] in [0, 1]. Returns the latent [N, z, H/8, W/8] as the sampler uses it.
    HostTensor encode(GraphRunner & runner, const HostTensor & image, const VaeTiling & tiling = {}) const;

    // Compute-buffer bytes of one untiled decode of a w x h latent (batch 1), measured by ggml's
    // allocator (nothing allocated or computed).
    size_t decode_compute_bytes(GraphRunner & runner, int64_t w, int64_t h) const;
    // The same for an untiled encode of a w x h image (pixels).
    size_t encode_compute_bytes(GraphRunner & runner, int64_t w, int64_t h) const;

private:
    ggml_tensor * block(Graph & g, ggml_tensor * x, const std::string & prefix) const;

    const TensorSource & weights_;
    TaesdParams params_;
};

}  // namespace sd
