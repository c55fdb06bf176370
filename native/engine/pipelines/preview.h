// Previews while sampling: the sampler's current denoised prediction (x0) made into a small RGB
// image every few steps, as stable-diffusion.cpp's --preview does it:
//
//   proj   rgb = clamp((x0 . P + b) / 2 + 1/2) per latent pixel: a fixed 4x3 linear map from
//          latent channels to colour (no network; the image is the latent's size, 1/8 of the final)
//   taesd  the TAESD decoder loaded with the model (full size, fast)
//   vae    the model's VAE decoder (full size, as slow as the final decode)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/arch.h"
#include "model/options.h"
#include "runtime/graph-runner.h"

namespace sd {

class Model;
struct Codec;

// Whether the linear projection knows this architecture's latent space.
bool has_latent_rgb_projection(Arch arch);

// One latent [1, C, h, w] by the linear projection: h x w x 3 interleaved bytes.
std::vector<uint8_t> project_latent_rgb8(const HostTensor & latent, Arch arch);

// A preview image of `latent` (the sampler's x0) in `mode`; `codec` gives the tiling of the
// decoder modes. Sets width and height to the image's size.
std::vector<uint8_t> preview_rgb8(const Model & model, GraphRunner & runner, const HostTensor & latent, PreviewMode mode,
                                  const Codec & codec, int & width, int & height);

}  // namespace sd
