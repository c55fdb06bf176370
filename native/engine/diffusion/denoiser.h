// The denoiser the samplers see, D(x, sigma) -> denoised: the one place for classifier-free
// guidance (two- and three-way) and the k-diffusion scalings of eps- and v-prediction, as
// stable-diffusion.cpp computes them:
//
//   out_c = unet(c_in x, t(sigma), cond,   concat)
//   out_u = unet(c_in x, t(sigma), uncond, concat)            with an unconditional pass
//   out_i = unet(c_in x, t(sigma), uncond, img_uncond_concat) with image guidance (instruct-pix2pix)
//   out   = out_i + img_cfg (out_u - out_i) + cfg (out_c - out_u)   all three
//         = out_u + cfg (out_c - out_u)                             cond + uncond
//         = out_i + cfg (out_c - out_i)                             cond + image-uncond
//   denoised = c_skip x + c_out out
//
// The passes share one batched evaluation when their token counts agree. `concat` holds the
// extra UNet input channels of inpainting and edit models (one image's worth, the same for
// every step).
#pragma once
#include <vector>

#include "components/controlnet.h"
#include "components/unet.h"
#include "diffusion/schedule.h"
#include "pipelines/conditioning.h"

namespace sd {

// A ControlNet applied while sigma_low < sigma <= sigma_high: its residuals for each pass (that
// pass's context), times strength, summed with the other ControlNets' and added by the UNet.
struct DenoiserControl {
    const ControlNet * net = nullptr;
    const HostTensor * guided_hint = nullptr;  // ControlNet::hint() at this latent size
    float strength = 1.0f;
    float sigma_high = 0, sigma_low = 0;
};

struct DenoiserInputs {
    const Unet * unet = nullptr;
    GraphRunner * runner = nullptr;
    Prediction prediction = Prediction::Eps;
    const NoiseSchedule * schedule = nullptr;
    const Conditioning * cond = nullptr;
    const Conditioning * uncond = nullptr;  // the negative prompt; needed by either unconditional pass
    bool use_uncond = false;                // run the (negative prompt, concat) pass
    bool use_img_uncond = false;            // run the (negative prompt, img_uncond_concat) pass
    float cfg_scale = 1.0f;
    float image_cfg_scale = 1.0f;
    const HostTensor * concat = nullptr;             // ne {w, h, C', 1}; null: none
    const HostTensor * img_uncond_concat = nullptr;  // with use_img_uncond
    std::vector<DenoiserControl> controls;
};

class Denoiser {
public:
    // Throws Internal when a pass lacks its conditioning or concat.
    Denoiser(DenoiserInputs in, int latent_width, int latent_height, int latent_channels);

    // denoised[0..n) = D(x[0..n), sigma), n = width * height * channels. `uncond` (CFG++): the
    // denoised prediction of the most unconditional pass run (image-uncond, else uncond, else cond).
    void operator()(const float * x, float sigma, float * denoised, float * uncond = nullptr);

private:
    struct Pass {
        const HostTensor * context;
        const HostTensor * concat;
        const HostTensor * vector;  // the UNet's y (SDXL); null: none
    };
    DenoiserInputs in_;
    size_t n_;
    std::vector<Pass> passes_;  // cond, then uncond and img_uncond when used
    bool batched_;
    // The summed residuals of the ControlNets active at sigma for `in` (empty: none active).
    std::vector<HostTensor> control_residuals(const UnetInput & in, float sigma) const;
    UnetInput input_;  // reused every step: shapes fixed, buffers refilled
};

}  // namespace sd
