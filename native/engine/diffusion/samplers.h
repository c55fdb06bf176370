// k-diffusion-style samplers over host float buffers, with the names, defaults and arithmetic of
// stable-diffusion.cpp (float math, step for step), so a run matches its numbers.
//
// The sampler sees only a denoiser D(x, sigma) -> denoised (the caller applies c_in/c_out, the
// UNet and CFG). x enters as the noised latent at sigmas[0] (for txt2img: noise * sigmas[0]) and
// leaves as the sample. Which samplers draw noise (one randn(n) call on `noise` per noised step):
//   euler_a, dpm++2s_a  every step but the last (eta scales the ancestral noise; default 1)
//   lcm                 every step but the last
//   ddim_trailing       every step, when eta > 0 (default 0)
//   tcd                 every step but the last, when eta > 0 (default 0)
// ddim_trailing and tcd use only the number of sigmas: they walk their own timestep grids.
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "diffusion/rng.h"
#include "diffusion/schedule.h"

namespace sd {

enum class Sampler { Euler, EulerA, Heun, Dpm2, Dpmpp2sA, Dpmpp2m, Dpmpp2mv2, Ipndm, IpndmV, Lcm, DdimTrailing, Tcd };

const char * sampler_name(Sampler s);  // "euler", "euler_a", ..., "dpm++2mv2", "ddim_trailing", "tcd"
Sampler parse_sampler(const std::string & name);  // throws InvalidArgument on an unknown name
std::vector<Sampler> all_samplers();

// sd.cpp's defaults for SD1/SD2/SDXL: the sampler is euler_a; the scheduler is "lcm" for lcm and
// tcd, "simple" for ddim_trailing, "discrete" otherwise; eta is 1 for euler_a and dpm++2s_a and
// 0 for everything else (only ddim_trailing and tcd read it besides those two).
constexpr Sampler kDefaultSampler = Sampler::EulerA;
Scheduler default_scheduler(Sampler s);
float default_eta(Sampler s);

// How many times `sample` calls the denoiser for this sigma schedule.
int denoise_calls(Sampler s, const std::vector<float> & sigmas, float eta);

// denoised[0..n) = D(x[0..n), sigma). x is the sampler's scratch; do not keep the pointers.
using Denoise = std::function<void(const float * x, float sigma, float * denoised)>;
// Called after each step with (steps done, total steps); return false to abort (sample then
// throws Error(Aborted)).
using StepHook = std::function<bool(int step, int steps)>;

// Runs the sampler in place over x[0..n). sigmas: n_steps + 1 values, descending, last 0.
// noise: the generator for ancestral noise (needed only when the sampler draws noise).
void sample(Sampler s, const Denoise & denoise, float * x, size_t n, const std::vector<float> & sigmas,
            Rng * noise, float eta, const StepHook & on_step = {});

}  // namespace sd
