// The one sampling loop every mode feeds: txt2img starts from no latent, img2img (and hires
// fix) from an encoded image and a truncated schedule; inpainting and edit models differ only in
// what the denoiser adds to the UNet's input.
//
//   x = init_latent + randn(seed) * sigmas[0]     (no init latent: randn * sigmas[0])
//   x = sampler(denoiser, x, sigmas)              ancestral noise from `ancestral` or the same generator
#pragma once
#include <vector>

#include "diffusion/rng.h"
#include "diffusion/samplers.h"

namespace sd {

struct SamplingPlan {
    Sampler sampler = kDefaultSampler;
    std::vector<float> sigmas;  // descending, last 0
    float eta = 0;
    SamplerParams params;
    // false: x starts as init_latent itself (a latent already noised to sigmas[0]), no draw.
    bool add_noise = true;
};

// Returns the sample. `noise` draws the initial noise (one randn of n values), then, unless
// `ancestral` is given, the sampler's noise from the same stream (stable-diffusion.cpp's order).
// init_latent: n values or empty. Throws Aborted when `on_step` returns false.
std::vector<float> sample_latent(const SamplingPlan & plan, const Denoise & denoise, size_t n,
                                 const std::vector<float> & init_latent, Rng & noise, Rng * ancestral,
                                 const StepHook & on_step);

}  // namespace sd
