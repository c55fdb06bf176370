// Noise levels for SD1.x/SD2.x/SDXL (the "CompVis" discrete DDPM schedule, and EDM for CosXL,
// seen through k-diffusion's sigma view), the sigma schedules of stable-diffusion.cpp, and the
// denoiser scalings for eps- and v-prediction. Pure float math, computed as the reference computes it
// (float for the table, step for step), so the sigmas and timesteps match its numbers.
#pragma once
#include "diffusion/prediction.h"
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace sd {

constexpr int kTimesteps = 1000;

// A model's noise levels, seen through k-diffusion's sigma view: what the schedulers draw
// sigmas from and what turns a sigma into the UNet's timestep.
//  - CompVis (SD1.x/SD2.x/SDXL): the discrete DDPM table. Scaled-linear betas from 0.00085 to
//    0.012 over 1000 steps, alphas_cumprod[t] = prod(1 - beta), sigma[t] = sqrt((1 - ac) / ac):
//    sigma[0] ~ 0.0292, sigma[999] ~ 14.6146. A checkpoint's own `alphas_cumprod` buffer replaces
//    the computed table, as stable-diffusion.cpp reads it (zero-terminal-SNR fine-tunes ship one).
//  - EDM (CosXL, edm_v): continuous sigmas in [sigma_min, sigma_max] (0.002 and 120 unless the
//    file says), UNet timestep 0.25 ln(sigma). Schedulers that step through timesteps call
//    t_to_sigma(t) = exp(4 t / 1000), the reference's formula (not the inverse of sigma_to_t).
class NoiseSchedule {
public:
    enum class Kind { CompVis, Edm };
    static constexpr float kEdmSigmaMin = 0.002f, kEdmSigmaMax = 120.0f;

    NoiseSchedule();  // CompVis, the computed table
    // CompVis from a stored table: kTimesteps values, each finite in (0, 1] (checked by the
    // caller: valid_alphas_cumprod()).
    explicit NoiseSchedule(const std::vector<float> & alphas_cumprod);
    static NoiseSchedule edm(float sigma_min = kEdmSigmaMin, float sigma_max = kEdmSigmaMax);
    // Why a stored alphas_cumprod cannot be used ("" when it can).
    static std::string invalid_alphas_cumprod(const std::vector<float> & alphas_cumprod);

    Kind kind() const { return kind_; }
    bool table_from_file() const { return from_file_; }
    float sigma_min() const { return sigma_min_; }
    float sigma_max() const { return sigma_max_; }
    float sigma(int t) const;                        // CompVis: the table entry, t in [0, 999]
    float alphas_cumprod(int t) const;               // CompVis

    float t_to_sigma(float t) const;                 // t in [0, 999]; CompVis: log-sigma interpolation
    float sigma_to_t(float sigma) const;             // the UNet timestep (CompVis: clamped to [0, 999])

private:
    void fill_table(const float * alphas_cumprod);
    Kind kind_ = Kind::CompVis;
    bool from_file_ = false;
    float sigma_min_ = 0, sigma_max_ = 0;
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
std::vector<float> make_sigmas(Scheduler s, int n, const NoiseSchedule & table, AysModel ays = AysModel::Sd1);

// What the UNet predicts, and the k-diffusion scalings that turn its output into a denoised
// sample: denoised = c_skip * x + c_out * unet(c_in * x, sigma_to_t(sigma)).
struct Scalings {
    float c_skip, c_out, c_in;
};
Scalings denoiser_scalings(Prediction p, float sigma);

}  // namespace sd
