// Noise levels for SD1.x/SD2.x/SDXL (the "CompVis" discrete DDPM schedule seen through
// k-diffusion's sigma view), the sigma schedules of stable-diffusion.cpp, and the denoiser
// scalings for eps- and v-prediction. Pure float math, computed as the reference computes it
// (float for the table, step for step), so the sigmas and timesteps match its numbers.
#pragma once
#include "diffusion/prediction.h"
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace sd {

constexpr int kTimesteps = 1000;

// The SD discrete schedule: scaled-linear betas from 0.00085 to 0.012 over 1000 steps,
// alphas_cumprod[t] = prod(1 - beta), sigma[t] = sqrt((1 - ac) / ac). sigma[0] ~ 0.0292,
// sigma[999] ~ 14.6146.
class DiscreteSchedule {
public:
    DiscreteSchedule();

    float sigma_min() const { return sigmas_[0]; }
    float sigma_max() const { return sigmas_[kTimesteps - 1]; }
    float sigma(int t) const;                        // t in [0, 999]
    float alphas_cumprod(int t) const;

    // k-diffusion's CompVisDenoiser: log-sigma interpolation between table entries.
    float t_to_sigma(float t) const;                 // t in [0, 999]
    float sigma_to_t(float sigma) const;             // the UNet timestep for a sigma (clamped to [0, 999])

private:
    std::array<float, kTimesteps> alphas_cumprod_{};
    std::array<float, kTimesteps> sigmas_{};
    std::array<float, kTimesteps> log_sigmas_{};
};

// stable-diffusion.cpp's --scheduler values.
enum class Scheduler {
    Discrete,     // "discrete": n timesteps evenly from 999 to 0 (float step 999/(n-1)), then 0
    Karras,       // "karras": rho = 7 between sigma_max and sigma_min
    Exponential,  // "exponential": log-uniform between sigma_max and sigma_min
    Ays,          // "ays": Align Your Steps tables (SD1 / SDXL), log-linear interpolation
    Gits,         // "gits": GITS tables (coeff 1.20), log-linear interpolation beyond 20 steps
    SgmUniform,   // "sgm_uniform": n+1 timesteps evenly from 999 to 0, the last replaced by 0
    Simple,       // "simple": every (1000/n)-th table entry from the top
    Smoothstep,   // "smoothstep": timesteps round(smoothstep(1 - i/n) * 999)
    KlOptimal,    // "kl_optimal": tan of a linear path between atan(sigma_max) and atan(sigma_min)
    Lcm,          // "lcm": LCM's 50-step training grid, timestep (50 - floor(50 i / n)) * 20 - 1
    BongTangent,  // "bong_tangent": two arctan ramps (RES4LYF), sigma_max -> mid -> sigma_min
    Beta,         // "beta": timesteps at Beta(0.6, 0.6) quantiles (repeats dropped: <= n steps)
};

// "normal", accepted by parse_scheduler as "discrete" (as the reference does).
constexpr const char * kSchedulerAliasNormal = "normal";

const char * scheduler_name(Scheduler s);
Scheduler parse_scheduler(const std::string & name);  // throws InvalidArgument on an unknown name
std::vector<Scheduler> all_schedulers();

// Which AYS table to use (sd.cpp picks by model version; SD2.x has none).
enum class AysModel { Sd1, Sdxl, Svd };

// n + 1 sigmas, descending, the last one 0. n >= 1 (gits: n >= 2).
std::vector<float> make_sigmas(Scheduler s, int n, const DiscreteSchedule & table, AysModel ays = AysModel::Sd1);

// What the UNet predicts, and the k-diffusion scalings that turn its output into a denoised
// sample: denoised = c_skip * x + c_out * unet(c_in * x, sigma_to_t(sigma)).
struct Scalings {
    float c_skip, c_out, c_in;
};
Scalings denoiser_scalings(Prediction p, float sigma);

}  // namespace sd
