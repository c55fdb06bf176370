// The denoiser the samplers see, D(x, sigma) -> denoised: the one place for classifier-free
// guidance and the k-diffusion scalings of eps- and v-prediction, as stable-diffusion.cpp
// computes them:
//
//   out_c, out_u = unet(c_in x, t(sigma), cond), unet(c_in x, t(sigma), uncond)
//   denoised     = c_skip x + c_out (out_u + cfg (out_c - out_u))
//
// cond and uncond share one batched evaluation when their token counts agree; cfg_scale 1 runs
// no unconditional pass at all.
#pragma once
#include <vector>

#include "components/unet.h"
#include "diffusion/schedule.h"
#include "pipelines/conditioning.h"

namespace sd {

struct DenoiserInputs {
    const Unet * unet = nullptr;
    GraphRunner * runner = nullptr;
    Prediction prediction = Prediction::Eps;
    const DiscreteSchedule * schedule = nullptr;
    const Conditioning * cond = nullptr;
    const Conditioning * uncond = nullptr;  // null when cfg_scale == 1
    float cfg_scale = 1.0f;
    const HostTensor * concat = nullptr;    // extra UNet input channels per image (inpainting, edit); null: none
};

class Denoiser {
public:
    // Throws InvalidArgument when a guided denoiser has no unconditional conditioning.
    Denoiser(DenoiserInputs in, int latent_width, int latent_height, int latent_channels);

    // denoised[0..n) = D(x[0..n), sigma), n = width * height * channels.
    void operator()(const float * x, float sigma, float * denoised, float * uncond = nullptr);

private:
    DenoiserInputs in_;
    size_t n_;
    bool guided_, batched_;
    UnetInput input_;  // reused every step: shapes fixed, buffers refilled
};

}  // namespace sd
