// k-diffusion-style samplers over host float buffers, with the names, defaults and arithmetic of
// stable-diffusion.cpp (float math, step for step), so a run matches its numbers.
//
// The sampler sees only a denoiser D(x, sigma) -> denoised (the caller applies c_in/c_out, the
// UNet and CFG; the CFG++ samplers also ask for the unguided prediction). x enters as the noised
// latent at sigmas[0] (for txt2img: noise * sigmas[0]) and leaves as the sample. Which samplers
// draw noise (one randn(n) call on `noise` per noised step):
//   euler_a, dpm++2s_a, euler_a_cfg_pp   every step but the last (eta scales it; default 1)
//   lcm                                  every step but the last
//   dpm++2m_sde, er_sde                  every step but the last while eta > 0 (default 1)
//   dpm++2m_sde_bt                       two floats once (the Brownian tree's seed); the tree's
//                                        own std_default generators give the increments
//   ddim_trailing, res_multistep, res_2s, euler_ge   ancestral, only when eta > 0 (default 0)
//   tcd                                  every step but the last, when eta > 0 (default 0)
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "diffusion/rng.h"
#include "diffusion/schedule.h"

namespace sd {

enum class Sampler {
    Euler, EulerA, Heun, Dpm2, Dpmpp2sA, Dpmpp2m, Dpmpp2mv2, Ipndm, IpndmV, Lcm, DdimTrailing, Tcd,
    Lms, ResMultistep, Res2s, ErSde, EulerCfgPp, EulerACfgPp, EulerGe, Dpmpp2mSde, Dpmpp2mSdeBt,
};

const char * sampler_name(Sampler s);  // "euler", "euler_a", ..., "dpm++2mv2", "ddim_trailing", "tcd"
Sampler parse_sampler(const std::string & name);  // throws InvalidArgument on an unknown name
std::vector<Sampler> all_samplers();

// sd.cpp's defaults for SD1/SD2/SDXL: the sampler is euler_a; the scheduler is "exponential" on an
// EDM schedule (edm_v models, whatever the sampler), else "lcm" for lcm and tcd, "simple" for
// ddim_trailing, "discrete" otherwise; eta is 1 for euler_a, dpm++2s_a, er_sde,
// euler_a_cfg_pp, dpm++2m_sde and dpm++2m_sde_bt, 0 for the rest (samplers without noise ignore it).
constexpr Sampler kDefaultSampler = Sampler::EulerA;
Scheduler default_scheduler(Sampler s, NoiseSchedule::Kind schedule = NoiseSchedule::Kind::CompVis);
float default_eta(Sampler s);
// Whether the sampler needs the unguided prediction too (the CFG++ samplers).
bool needs_uncond_denoised(Sampler s);

// The reference's --extra-sample-args that sdnode exposes, with its defaults.
struct SamplerParams {
    int lms_max_order = 4;   // lms: history length (1 = Euler)
    int lms_shift = 1;       // lms: sd.cpp's history shift (0 = k-diffusion's)
    int lms_divisions = 1000;  // lms: midpoint-sum parts of each coefficient's integral
    float ge_gamma = 2.0f;   // euler_ge: gradient-estimation extrapolation
};

// How many times `sample` calls the denoiser for this sigma schedule.
int denoise_calls(Sampler s, const std::vector<float> & sigmas, float eta);

// denoised[0..n) = D(x[0..n), sigma); when `uncond` is not null, also the unguided prediction
// (the unconditional pass; the conditional one without CFG) into uncond[0..n). x is the sampler's
// scratch; do not keep the pointers.
using Denoise = std::function<void(const float * x, float sigma, float * denoised, float * uncond)>;
// Called after each step with (steps done, total steps); return false to abort (sample then
// throws Error(Aborted)).
using StepHook = std::function<bool(int step, int steps)>;

// Runs the sampler in place over x[0..n). sigmas: n_steps + 1 values, descending, last 0.
// noise: the generator for ancestral noise (needed only when the sampler draws noise).
void sample(Sampler s, const Denoise & denoise, float * x, size_t n, const std::vector<float> & sigmas,
            Rng * noise, float eta, const StepHook & on_step = {}, const SamplerParams & params = {});

}  // namespace sd
