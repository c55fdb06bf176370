#include "diffusion/samplers.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>

#include "core/enum-names.h"
#include "core/errors.h"

namespace sd {

namespace {

constexpr EnumName<Sampler> kSamplerNames[] = {
    {Sampler::Euler, "euler"},         {Sampler::EulerA, "euler_a"},       {Sampler::Heun, "heun"},
    {Sampler::Dpm2, "dpm2"},           {Sampler::Dpmpp2sA, "dpm++2s_a"},   {Sampler::Dpmpp2m, "dpm++2m"},
    {Sampler::Dpmpp2mv2, "dpm++2mv2"}, {Sampler::Ipndm, "ipndm"},          {Sampler::IpndmV, "ipndm_v"},
    {Sampler::Lcm, "lcm"},             {Sampler::DdimTrailing, "ddim_trailing"}, {Sampler::Tcd, "tcd"},
    {Sampler::Lms, "lms"},             {Sampler::ResMultistep, "res_multistep"}, {Sampler::Res2s, "res_2s"},
    {Sampler::ErSde, "er_sde"},        {Sampler::EulerCfgPp, "euler_cfg_pp"},    {Sampler::EulerACfgPp, "euler_a_cfg_pp"},
    {Sampler::EulerGe, "euler_ge"},    {Sampler::Dpmpp2mSde, "dpm++2m_sde"},     {Sampler::Dpmpp2mSdeBt, "dpm++2m_sde_bt"},
};
}  // namespace

const char * sampler_name(Sampler s) { return enum_name(kSamplerNames, s); }

Sampler parse_sampler(const std::string & name) { return parse_enum(kSamplerNames, name, "sampler"); }

std::vector<Sampler> all_samplers() { return enum_values(kSamplerNames); }

Scheduler default_scheduler(Sampler s, NoiseSchedule::Kind schedule) {
    if (schedule == NoiseSchedule::Kind::Edm) return Scheduler::Exponential;
    if (s == Sampler::Lcm || s == Sampler::Tcd) return Scheduler::Lcm;
    if (s == Sampler::DdimTrailing) return Scheduler::Simple;
    return Scheduler::Discrete;
}

float default_eta(Sampler s) {
    switch (s) {
        case Sampler::EulerA:
        case Sampler::Dpmpp2sA:
        case Sampler::ErSde:
        case Sampler::EulerACfgPp:
        case Sampler::Dpmpp2mSde:
        case Sampler::Dpmpp2mSdeBt: return 1.0f;
        default: return 0.0f;
    }
}

bool needs_uncond_denoised(Sampler s) { return s == Sampler::EulerCfgPp || s == Sampler::EulerACfgPp; }

int denoise_calls(Sampler s, const std::vector<float> & sigmas, float eta) {
    const int steps = int(sigmas.size()) - 1;
    int calls = steps;
    for (int i = 0; i < steps; ++i) {
        const bool last_is_zero = sigmas[i + 1] == 0.0f;
        if ((s == Sampler::Heun || s == Sampler::Dpm2) && !last_is_zero) ++calls;
        // dpm++2s_a skips its second evaluation only where sigma_down is 0 (the last step, or eta
        // so large that the whole step is noise).
        if ((s == Sampler::Dpmpp2sA || s == Sampler::Res2s) && !last_is_zero) {
            const float s0 = sigmas[i], s1 = sigmas[i + 1];
            float up = 0.0f;
            if (eta > 0.0f) up = std::min(s1, eta * std::sqrt(std::max(s1 * s1 * (s0 * s0 - s1 * s1) / (s0 * s0), 0.0f)));
            if (s1 * s1 - up * up > 0.0f) ++calls;
        }
    }
    return calls;
}

namespace {

// k-diffusion's get_ancestral_step: how far to step deterministically (down) and how much fresh
// noise to add (up) going from sigma to sigma_next.
void ancestral_step(float sigma, float sigma_next, float eta, float & down, float & up) {
    down = sigma_next;
    up = 0.0f;
    if (eta <= 0.0f) return;
    const float s2 = sigma * sigma, n2 = sigma_next * sigma_next;
    if (s2 > 0.0f) up = std::min(sigma_next, eta * std::sqrt(std::max(n2 * (s2 - n2) / s2, 0.0f)));
    const float down2 = n2 - up * up;
    down = down2 > 0.0f ? std::sqrt(down2) : 0.0f;
}

// The DDPM alphas_cumprod as sd.cpp's TCD sampler rebuilds it (double product of float
// betas) with the matching CompVis sigmas.
struct DdpmTable {
    std::vector<double> alphas_cumprod, sigmas;
    DdpmTable() : alphas_cumprod(kTimesteps), sigmas(kTimesteps) {
        const float sqrt_start = std::sqrt(0.00085f), sqrt_end = std::sqrt(0.0120f);
        double product = 1.0;
        for (int i = 0; i < kTimesteps; ++i) {
            const float beta_sqrt = sqrt_start + (sqrt_end - sqrt_start) * (float(i) / float(kTimesteps - 1));
            product *= 1.0 - std::pow(double(beta_sqrt), 2);
            alphas_cumprod[i] = product;
            sigmas[i] = std::sqrt((1.0 - product) / product);
        }
    }
};

const DdpmTable & ddpm() {
    static const DdpmTable t;
    return t;
}

class Run {
public:
    Run(const Denoise & denoise, float * x, size_t n, Rng * noise, const StepHook & hook, int steps)
        : denoise_(denoise), x_(x), n_(n), rng_(noise), hook_(hook), steps_(steps), den_(n), noise_(n) {}

    // denoised = D(src, sigma) into den_
    const float * D(const float * src, float sigma) {
        denoise_(src, sigma, den_.data(), nullptr);
        return den_.data();
    }

    // D(src, sigma) into den_ and the unguided (unconditional) prediction into unc_ (CFG++).
    const float * D_with_uncond(const float * src, float sigma) {
        unc_.resize(n_);
        denoise_(src, sigma, den_.data(), unc_.data());
        return den_.data();
    }

    // x += scale * z, z one fresh randn(n) from the noise generator.
    void add_noise(const char * sampler, float scale) {
        const float * z = draw_noise(sampler);
        for (size_t j = 0; j < n_; ++j) x_[j] = x_[j] + z[j] * scale;
    }

    const float * draw_noise(const char * sampler) {
        if (!rng_) throw_invalid(std::string("sampler ") + sampler + " draws noise but no noise generator was given");
        rng_->randn(noise_.data(), n_);
        return noise_.data();
    }

    void step_done(int i) {
        if (hook_ && !hook_(i + 1, steps_)) throw Error(ErrorCode::Aborted, "sampling aborted after step " + std::to_string(i + 1));
    }

    const Denoise & denoise_;
    float * x_;
    size_t n_;
    Rng * rng_;
    const StepHook & hook_;
    int steps_;
    std::vector<float> den_, noise_, unc_;
};

// ------------------------------------------------------------------ first-order and ancestral

void euler(Run & r, const std::vector<float> & sg) {
    float * x = r.x_;
    for (int i = 0; i < r.steps_; ++i) {
        const float sigma = sg[i];
        const float * den = r.D(x, sigma);
        const float dt = sg[i + 1] - sigma;
        for (size_t j = 0; j < r.n_; ++j) x[j] = x[j] + ((x[j] - den[j]) / sigma) * dt;
        r.step_done(i);
    }
}

// As sd.cpp 97d29908 writes it: x moves toward D by sigma_down / sigma (exactly D on the last
// step), then takes sigma_up of fresh noise.
void euler_ancestral(Run & r, const std::vector<float> & sg, float eta, const char * name = "euler_a") {
    float * x = r.x_;
    for (int i = 0; i < r.steps_; ++i) {
        const float sigma = sg[i], sigma_to = sg[i + 1];
        const float * den = r.D(x, sigma);
        if (sigma_to == 0.0f) {
            std::copy(den, den + r.n_, x);
        } else {
            float down, up;
            ancestral_step(sigma, sigma_to, eta, down, up);
            const float ratio = down / sigma, rest = 1.0f - ratio;
            for (size_t j = 0; j < r.n_; ++j) x[j] = ratio * x[j] + rest * den[j];
            if (eta > 0.0f && up > 0.0f) {
                r.add_noise(name, up);
            }
        }
        r.step_done(i);
    }
}

// ------------------------------------------------------------------ second-order

void heun(Run & r, const std::vector<float> & sg) {
    float * x = r.x_;
    std::vector<float> d(r.n_), x2(r.n_);
    for (int i = 0; i < r.steps_; ++i) {
        const float * den = r.D(x, sg[i]);
        for (size_t j = 0; j < r.n_; ++j) d[j] = (x[j] - den[j]) / sg[i];
        const float dt = sg[i + 1] - sg[i];
        if (sg[i + 1] == 0) {  // the last step is plain Euler
            for (size_t j = 0; j < r.n_; ++j) x[j] = x[j] + d[j] * dt;
        } else {
            for (size_t j = 0; j < r.n_; ++j) x2[j] = x[j] + d[j] * dt;
            const float * den2 = r.D(x2.data(), sg[i + 1]);
            for (size_t j = 0; j < r.n_; ++j) {
                const float d2 = (x2[j] - den2[j]) / sg[i + 1];
                d[j] = (d[j] + d2) / 2;
                x[j] = x[j] + d[j] * dt;
            }
        }
        r.step_done(i);
    }
}

void dpm2(Run & r, const std::vector<float> & sg) {
    float * x = r.x_;
    std::vector<float> d(r.n_), x2(r.n_);
    for (int i = 0; i < r.steps_; ++i) {
        const float * den = r.D(x, sg[i]);
        for (size_t j = 0; j < r.n_; ++j) d[j] = (x[j] - den[j]) / sg[i];
        if (sg[i + 1] == 0) {
            const float dt = sg[i + 1] - sg[i];
            for (size_t j = 0; j < r.n_; ++j) x[j] = x[j] + d[j] * dt;
        } else {
            // midpoint in log sigma
            const float sigma_mid = std::exp(0.5f * (std::log(sg[i]) + std::log(sg[i + 1])));
            const float dt_1 = sigma_mid - sg[i];
            const float dt_2 = sg[i + 1] - sg[i];
            for (size_t j = 0; j < r.n_; ++j) x2[j] = x[j] + d[j] * dt_1;
            const float * den2 = r.D(x2.data(), sigma_mid);
            for (size_t j = 0; j < r.n_; ++j) x[j] = x[j] + ((x2[j] - den2[j]) / sigma_mid) * dt_2;
        }
        r.step_done(i);
    }
}

void dpmpp_2s_ancestral(Run & r, const std::vector<float> & sg, float eta) {
    float * x = r.x_;
    std::vector<float> x2(r.n_);
    auto t_of = [](float sigma) { return -std::log(sigma); };
    auto sigma_of = [](float t) { return std::exp(-t); };
    for (int i = 0; i < r.steps_; ++i) {
        const float * den = r.D(x, sg[i]);
        float down, up;
        ancestral_step(sg[i], sg[i + 1], eta, down, up);
        if (down == 0) {
            for (size_t j = 0; j < r.n_; ++j) x[j] = den[j];
        } else {
            // DPM-Solver++(2S) from sigma to sigma_down, midpoint in t = -log(sigma).
            const float t = t_of(sg[i]), t_next = t_of(down);
            const float h = t_next - t;
            const float s = t + 0.5f * h;
            const float a_mid = sigma_of(s) / sigma_of(t), b_mid = std::exp(-h * 0.5f) - 1;
            for (size_t j = 0; j < r.n_; ++j) x2[j] = a_mid * x[j] - b_mid * den[j];
            // sd.cpp evaluates the midpoint at sigmas[i + 1] (k-diffusion uses sigma_fn(s)); kept for parity.
            const float * den2 = r.D(x2.data(), sg[i + 1]);
            const float a = sigma_of(t_next) / sigma_of(t), b = std::exp(-h) - 1;
            for (size_t j = 0; j < r.n_; ++j) x[j] = a * x[j] - b * den2[j];
        }
        if (sg[i + 1] > 0) {
            r.add_noise("dpm++2s_a", up);
        }
        r.step_done(i);
    }
}

// dpm++2m (Karras et al. 2022's DPM-Solver++(2M)); v2 is A1111 discussion 8457's variant that
// uses the mean step size for the exponential factor.
void dpmpp_2m(Run & r, const std::vector<float> & sg, bool v2) {
    float * x = r.x_;
    std::vector<float> old_den(r.n_);
    auto t_of = [](float sigma) { return -std::log(sigma); };
    for (int i = 0; i < r.steps_; ++i) {
        const float * den = r.D(x, sg[i]);
        const float t = t_of(sg[i]), t_next = t_of(sg[i + 1]);
        const float h = t_next - t;
        const float a = sg[i + 1] / sg[i];
        if (i == 0 || sg[i + 1] == 0) {
            const float b = std::exp(-h) - 1.f;
            for (size_t j = 0; j < r.n_; ++j) x[j] = a * x[j] - b * den[j];
        } else {
            const float h_last = t - t_of(sg[i - 1]);
            float ratio, b;
            if (v2) {
                const float h_min = std::min(h_last, h), h_max = std::max(h_last, h);
                ratio = h_max / h_min;
                b = std::exp(-(h_max + h_min) / 2.f) - 1.f;
            } else {
                ratio = h_last / h;
                b = std::exp(-h) - 1.f;
            }
            const float w_new = 1.f + 1.f / (2.f * ratio), w_old = 1.f / (2.f * ratio);
            for (size_t j = 0; j < r.n_; ++j) x[j] = a * x[j] - b * (w_new * den[j] - w_old * old_den[j]);
        }
        std::copy(den, den + r.n_, old_den.begin());
        r.step_done(i);
    }
}

// ------------------------------------------------------------------ multistep (iPNDM)

// iPNDM (zju-pi diff-solvers): Adams-Bashforth on d = (x - D) / sigma, order growing to 4.
// The _v variant adapts only its second-order step to unequal step sizes (as sd.cpp does).
void ipndm(Run & r, const std::vector<float> & sg, bool variable) {
    float * x = r.x_;
    // history ring: hist[(head - k) % 3] is the derivative k + 1 steps back
    std::vector<std::vector<float>> hist(3, std::vector<float>(r.n_));
    std::vector<float> d(r.n_);
    int head = 0;
    auto back = [&](int k) -> const float * { return hist[(head - 1 - k + 6) % 3].data(); };
    for (int i = 0; i < r.steps_; ++i) {
        const float sigma = sg[i], h = sg[i + 1] - sg[i];
        const float * den = r.D(x, sigma);
        for (size_t j = 0; j < r.n_; ++j) d[j] = (x[j] - den[j]) / sigma;
        const int order = std::min(4, i + 1);
        if (order == 1) {
            for (size_t j = 0; j < r.n_; ++j) x[j] += d[j] * h;
        } else if (order == 2) {
            const float * p1 = back(0);
            if (variable) {
                const float ratio = h / (sigma - sg[i - 1]);
                for (size_t j = 0; j < r.n_; ++j) x[j] += (((2.f + ratio) * d[j] - ratio * p1[j]) / 2.f) * h;
            } else {
                for (size_t j = 0; j < r.n_; ++j) x[j] += ((3.f * d[j] - p1[j]) / 2.f) * h;
            }
        } else if (order == 3) {
            const float *p1 = back(0), *p2 = back(1);
            for (size_t j = 0; j < r.n_; ++j) x[j] += ((23.f * d[j] - 16.f * p1[j] + 5.f * p2[j]) / 12.f) * h;
        } else {
            const float *p1 = back(0), *p2 = back(1), *p3 = back(2);
            for (size_t j = 0; j < r.n_; ++j)
                x[j] += ((55.f * d[j] - 59.f * p1[j] + 37.f * p2[j] - 9.f * p3[j]) / 24.f) * h;
        }
        hist[head].swap(d);  // d becomes history; the oldest buffer is reused as the next d
        head = (head + 1) % 3;
        r.step_done(i);
    }
}

// ------------------------------------------------------------------ consistency / DDIM family

void lcm(Run & r, const std::vector<float> & sg) {
    float * x = r.x_;
    for (int i = 0; i < r.steps_; ++i) {
        const float * den = r.D(x, sg[i]);
        std::copy(den, den + r.n_, x);
        if (sg[i + 1] > 0) {
            r.add_noise("lcm", sg[i + 1]);
        }
        r.step_done(i);
    }
}

// TCD's strategic stochastic sampling (Zheng et al. 2024) on the schedule's sigmas, as sd.cpp
// 97d29908 runs it: the timestep of the next sigma (nearest CompVis sigma) picks the intermediate
// s = floor((1 - eta) * t_prev); the step goes to s, then (eta > 0) forward to the next sigma
// with fresh noise.
void tcd(Run & r, const std::vector<float> & sg, float eta) {
    float * x = r.x_;
    const auto & tab = ddpm();
    const auto timestep_of = [&](float s) {
        const auto it = std::lower_bound(tab.sigmas.begin(), tab.sigmas.end(), double(s));
        if (it == tab.sigmas.begin()) return 0;
        if (it == tab.sigmas.end()) return kTimesteps - 1;
        const int high = int(it - tab.sigmas.begin()), low = high - 1;
        return std::abs(tab.sigmas[high] - s) < std::abs(tab.sigmas[low] - s) ? high : low;
    };
    std::vector<float> d(r.n_);
    for (int i = 0; i < r.steps_; ++i) {
        const float sigma = sg[i], sigma_to = sg[i + 1];
        const int t_prev = timestep_of(sigma_to);
        const int t_s = int(std::floor((1 - eta) * float(t_prev)));
        const float * den = r.D(x, sigma);
        for (size_t j = 0; j < r.n_; ++j) d[j] = (x[j] - den[j]) / sigma;
        const float alpha_prev = 1.0f / (sigma_to * sigma_to + 1.0f);
        const float alpha_s = float(tab.alphas_cumprod[t_s]);
        const float beta_s = 1.0f - alpha_s;
        const float c_den = std::sqrt(alpha_s / alpha_prev), c_d = std::sqrt(beta_s / alpha_prev);
        for (size_t j = 0; j < r.n_; ++j) x[j] = c_den * den[j] + c_d * d[j];
        if (eta > 0 && sigma_to > 0.0f) {
            const float * z = r.draw_noise("tcd");
            const float keep = std::sqrt(alpha_prev / alpha_s), add = std::sqrt(1.0f / alpha_prev - 1.0f / alpha_s);
            for (size_t j = 0; j < r.n_; ++j) x[j] = keep * x[j] + add * z[j];
        }
        r.step_done(i);
    }
}


// ------------------------------------------------------------------ sd.cpp 97d29908's newer samplers

// k-diffusion's linear multistep with sd.cpp's "history shift": Lagrange coefficients over the
// last `max_order` sigmas integrated by a midpoint sum of `divisions` parts (float).
void lms(Run & r, const std::vector<float> & sg, const SamplerParams & p) {
    float * x = r.x_;
    const int max_order = std::min(std::max(1, p.lms_max_order), r.steps_);
    const int shift = std::max(0, p.lms_shift), divisions = p.lms_divisions;
    const auto coeff = [&](int order, int m, int j) -> float {
        if (!divisions) return sg[m + 1] - sg[m];
        const float a = sg[m], dx = (sg[m + 1] - a) / float(divisions), s = sg[m - j];
        const float b0 = a + 0.5f * dx;
        float sum = 0.0f;
        for (int h = 0; h < divisions; h++) {
            const float b = float(h) * dx + b0;
            float prod = 1.0f;
            for (int k = 0; k < j; k++) prod *= (b - sg[m - k]) / (s - sg[m - k]);
            for (int k = j + 1; k < order; k++) prod *= (b - sg[m - k]) / (s - sg[m - k]);
            sum += prod;
        }
        return sum * dx;
    };
    std::vector<float> c(max_order);
    std::vector<std::vector<float>> hist;  // past derivatives, oldest first (up to max_order - 1)
    for (int i = 0; i < r.steps_; ++i) {
        const float sigma = sg[i];
        const float * den = r.D(x, sigma);
        const int order = std::min(max_order, i + 1);
        for (int k = 0; k < order; k++) c[k] = coeff(order, i, k);
        std::vector<float> d(r.n_);
        for (size_t j = 0; j < r.n_; ++j) d[j] = (x[j] - den[j]) / sigma;
        for (size_t j = 0; j < r.n_; ++j) x[j] += d[j] * c[0];
        if (max_order > 1) {
            const int size_p1 = int(hist.size()) + 1;
            if (i) {
                const int last = int(hist.size()) - 1;
                for (int k = 2; k <= order; k++) {
                    const std::vector<float> & h = hist[std::min(last, size_p1 - k + shift)];
                    for (size_t j = 0; j < r.n_; ++j) x[j] += h[j] * c[k - 1];
                }
            }
            if (size_p1 == max_order) hist.erase(hist.begin());
            hist.push_back(std::move(d));
        }
        r.step_done(i);
    }
}

float phi1(float t) { return std::fabs(t) < 1e-6f ? 1.0f + t * 0.5f + (t * t) / 6.0f : (std::exp(t) - 1.0f) / t; }
float phi2(float t) { return std::fabs(t) < 1e-6f ? 0.5f + t / 6.0f + (t * t) / 24.0f : (phi1(t) - 1.0f) / t; }

// RES multistep (the exponential integrator of the RES4LYF / ComfyUI samplers), ancestral with eta.
void res_multistep(Run & r, const std::vector<float> & sg, float eta) {
    float * x = r.x_;
    std::vector<float> old_den(r.n_);
    bool have_old = false;
    float old_sigma_down = 0.0f;
    const auto t_of = [](float sigma) { return -std::log(sigma); };
    for (int i = 0; i < r.steps_; ++i) {
        const float * den = r.D(x, sg[i]);
        const float sigma_from = sg[i], sigma_to = sg[i + 1];
        float down, up;
        ancestral_step(sigma_from, sigma_to, eta, down, up);
        if (down == 0.0f || !have_old) {
            const float dt = down - sigma_from;
            for (size_t j = 0; j < r.n_; ++j) x[j] += ((x[j] - den[j]) / sigma_from) * dt;
        } else {
            const float t = t_of(sigma_from), t_old = t_of(old_sigma_down), t_next = t_of(down);
            const float t_prev = t_of(sg[i - 1]);
            const float h = t_next - t;
            const float c2 = (t_prev - t_old) / h;
            float b1 = phi1(-h) - phi2(-h) / c2, b2 = phi2(-h) / c2;
            if (!std::isfinite(b1)) b1 = 0.0f;
            if (!std::isfinite(b2)) b2 = 0.0f;
            const float a = std::exp(-h);
            for (size_t j = 0; j < r.n_; ++j) x[j] = a * x[j] + h * (b1 * den[j] + b2 * old_den[j]);
        }
        if (sigma_to > 0.0f && up > 0.0f) {
            r.add_noise("res_multistep", up);
        }
        std::copy(den, den + r.n_, old_den.begin());
        old_sigma_down = down;
        have_old = true;
        r.step_done(i);
    }
}

// RES 2S: a two-stage exponential integrator (midpoint c2 = 1/2), ancestral with eta.
void res_2s(Run & r, const std::vector<float> & sg, float eta) {
    float * x = r.x_;
    const float c2 = 0.5f;
    std::vector<float> eps1(r.n_), x2(r.n_);
    for (int i = 0; i < r.steps_; ++i) {
        const float sigma_from = sg[i], sigma_to = sg[i + 1];
        const float * den = r.D(x, sigma_from);
        float down, up;
        ancestral_step(sigma_from, sigma_to, eta, down, up);
        if (down == 0.0f) {
            std::copy(den, den + r.n_, x);
        } else {
            const float t = -std::log(sigma_from), t_next = -std::log(down);
            const float h = t_next - t;
            const float a21 = c2 * phi1(-h * c2);
            const float b2 = phi2(-h) / c2, b1 = phi1(-h) - b2;
            const float sigma_c2 = std::exp(-(t + h * c2));
            for (size_t j = 0; j < r.n_; ++j) {
                eps1[j] = den[j] - x[j];
                x2[j] = x[j] + eps1[j] * (h * a21);
            }
            const float * den2 = r.D(x2.data(), sigma_c2);
            for (size_t j = 0; j < r.n_; ++j) x[j] = x[j] + h * (b1 * eps1[j] + b2 * (den2[j] - x[j]));
        }
        if (sigma_to > 0.0f && up > 0.0f) {
            r.add_noise("res_2s", up);
        }
        r.step_done(i);
    }
}

// ER-SDE-Solver-3 (Cui et al. 2023) with its noise scaler lambda (e^(lambda^0.3) + 10) and a
// 200-point integral; s_noise = eta.
void er_sde(Run & r, const std::vector<float> & sg, float eta) {
    float * x = r.x_;
    constexpr int kMaxStage = 3, kPoints = 200;
    const auto lambda_of = [](float sigma) { return std::max(sigma, 1e-6f); };
    const auto scaler = [](float v) {
        v = std::max(v, 0.0f);
        return v * (std::exp(std::pow(v, 0.3f)) + 10.0f);
    };
    std::vector<float> lambdas(sg.size());
    for (size_t i = 0; i < sg.size(); ++i) lambdas[i] = lambda_of(sg[i]);
    std::vector<float> old_den(r.n_), old_den_d(r.n_), den_d(r.n_);
    bool have_old = false, have_old_d = false;
    for (int i = 0; i < r.steps_; ++i) {
        const float * den = r.D(x, sg[i]);
        const int stage = std::min(kMaxStage, i + 1);
        if (sg[i + 1] == 0.0f) {
            std::copy(den, den + r.n_, x);
        } else {
            const float ls = lambdas[i], lt = lambdas[i + 1];
            const float scaled_s = scaler(ls), scaled_t = scaler(lt);
            const float r_alpha = 1.0f;  // alpha_t / alpha_s: 1 for eps / v models
            const float ratio = scaled_s > 0.0f ? scaled_t / scaled_s : 0.0f;
            const float alpha_t = 1.0f;
            for (size_t j = 0; j < r.n_; ++j) x[j] = r_alpha * ratio * x[j] + alpha_t * (1.0f - ratio) * den[j];
            if (stage >= 2 && have_old) {
                const float dt = lt - ls;
                const float step = -dt / float(kPoints);
                float sum = 0.0f, sum_u = 0.0f;
                for (int k = 0; k < kPoints; ++k) {
                    const float pos = lt + float(k) * step;
                    const float sc = scaler(pos);
                    if (sc <= 0.0f) continue;
                    sum += 1.0f / sc;
                    if (stage >= 3 && have_old_d) sum_u += (pos - ls) / sc;
                }
                sum *= step;
                const float denom_d = ls - lambdas[i - 1];
                if (std::fabs(denom_d) > 1e-12f) {
                    const float coeff_d = alpha_t * (dt + sum * scaled_t);
                    for (size_t j = 0; j < r.n_; ++j) {
                        den_d[j] = (den[j] - old_den[j]) / denom_d;
                        x[j] += coeff_d * den_d[j];
                    }
                    if (stage >= 3 && have_old_d) {
                        const float denom_u = (ls - lambdas[i - 2]) * 0.5f;
                        if (std::fabs(denom_u) > 1e-12f) {
                            sum_u *= step;
                            const float coeff_u = alpha_t * (0.5f * dt * dt + sum_u * scaled_t);
                            for (size_t j = 0; j < r.n_; ++j) x[j] += coeff_u * ((den_d[j] - old_den_d[j]) / denom_u);
                        }
                    }
                    old_den_d.swap(den_d);
                    have_old_d = true;
                }
            }
            const float noise_sq = lt * lt - ls * ls * ratio * ratio;
            if (eta > 0.0f && noise_sq > 0.0f) {
                const float scale = alpha_t * std::sqrt(std::max(noise_sq, 0.0f));
                r.add_noise("er_sde", scale);
            }
        }
        std::copy(den, den + r.n_, old_den.begin());
        have_old = true;
        r.step_done(i);
    }
}

// CFG++ (Chung et al. 2024): the step direction comes from the unconditional prediction while x
// lands on the guided one; euler_a_cfg_pp adds ancestral noise on every step but the last.
void euler_cfg_pp(Run & r, const std::vector<float> & sg, bool ancestral, float eta) {
    float * x = r.x_;
    for (int i = 0; i < r.steps_; ++i) {
        const float sigma = sg[i];
        const float * den = r.D_with_uncond(x, sigma);
        const float * unc = r.unc_.data();
        float down = sg[i + 1], up = 0.0f;
        if (ancestral) ancestral_step(sigma, sg[i + 1], eta, down, up);
        for (size_t j = 0; j < r.n_; ++j) x[j] = den[j] + ((x[j] - unc[j]) / sigma) * down;
        if (ancestral && sg[i + 1] > 0) {
            r.add_noise("euler_a_cfg_pp", up);
        }
        r.step_done(i);
    }
}

// Gradient estimation (Permenter & Yuan 2024): the Euler direction extrapolated from the last
// one by gamma (default 2).
void euler_ge(Run & r, const std::vector<float> & sg, float eta, float gamma) {
    float * x = r.x_;
    std::vector<float> d(r.n_), old_d(r.n_);
    bool have_old = false;
    for (int i = 0; i < r.steps_; ++i) {
        const float sigma = sg[i], sigma_to = sg[i + 1];
        const float * den = r.D(x, sigma);
        if (sigma_to == 0.0f) {
            std::copy(den, den + r.n_, x);
        } else {
            float down, up;
            ancestral_step(sigma, sigma_to, eta, down, up);
            const float dt = down - sigma;
            for (size_t j = 0; j < r.n_; ++j) d[j] = (x[j] - den[j]) / sigma;
            if (have_old) {
                for (size_t j = 0; j < r.n_; ++j) x[j] += (d[j] * gamma + old_d[j] * (1.0f - gamma)) * dt;
            } else {
                for (size_t j = 0; j < r.n_; ++j) x[j] += d[j] * dt;
            }
            old_d.swap(d);
            have_old = true;
            if (up > 0.0f) {
                r.add_noise("euler_ge", up);
            }
        }
        r.step_done(i);
    }
}

// Brownian tree noise for dpm++2m_sde_bt, as sd.cpp 97d29908 builds it: W on [sigma_min,
// sigma_max] from a seeded std_default draw at the top, refined by bisection (24 levels, a fresh
// std_default generator per node seeded by a splitmix-style hash), values cached per t. Each
// call returns the unit-variance increment over [a, b].
class BrownianTree {
public:
    BrownianTree(size_t n, double sigma_min, double sigma_max, uint64_t seed)
        : n_(n), t_min_(sigma_min), t_max_(sigma_max), root_seed_(mix64(seed, 0x9E3779B97F4A7C15ULL)) {
        w_max_ = draw(mix64(seed, 0xBF58476D1CE4E5B9ULL));
        const float scale = std::sqrt(static_cast<float>(t_max_ - t_min_));
        for (float & v : w_max_) v = v * scale;
    }

    void increment(double sigma_a, double sigma_b, float * out) {
        const double a = clamp(std::min(sigma_a, sigma_b)), b = clamp(std::max(sigma_a, sigma_b));
        const std::vector<float> & wb = w(b);
        const std::vector<float> & wa = w(a);
        const float span = static_cast<float>(std::max(std::abs(sigma_b - sigma_a), 1e-12));
        const float inv = 1.0f / std::sqrt(span);
        for (size_t j = 0; j < n_; ++j) out[j] = (wb[j] - wa[j]) * inv;
    }

private:
    static constexpr int kMaxDepth = 24;

    static uint64_t mix64(uint64_t v, uint64_t salt) {
        uint64_t z = v + salt;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    double clamp(double t) const { return std::min(std::max(t, t_min_), t_max_); }
    std::vector<float> draw(uint64_t seed) const {
        std::vector<float> z(n_);
        make_rng(RngKind::StdDefault, seed)->randn(z.data(), n_);
        return z;
    }

    const std::vector<float> & w(double t) {
        auto it = cache_.find(t);
        if (it != cache_.end()) return it->second;
        std::vector<float> lo(n_, 0.0f), hi = w_max_;
        double a = t_min_, c = t_max_;
        uint64_t node = root_seed_;
        for (int depth = kMaxDepth;; --depth) {
            if (depth <= 0 || c - a < 1e-9) {
                const float alpha = c > a ? static_cast<float>((t - a) / (c - a)) : 0.5f;
                for (size_t j = 0; j < n_; ++j) lo[j] = (1.0f - alpha) * lo[j] + alpha * hi[j];
                break;
            }
            const double m = 0.5 * (a + c);
            const float sd = static_cast<float>(std::sqrt((c - m) * (m - a) / (c - a)));
            std::vector<float> mid = draw(node);
            for (size_t j = 0; j < n_; ++j) mid[j] = 0.5f * (lo[j] + hi[j]) + sd * mid[j];
            if (t == m) {
                lo.swap(mid);
                break;
            }
            if (t < m) {
                hi.swap(mid);
                c = m;
                node = mix64(node, 1);
            } else {
                lo.swap(mid);
                a = m;
                node = mix64(node, 2);
            }
        }
        return cache_.emplace(t, std::move(lo)).first->second;
    }

    size_t n_;
    double t_min_, t_max_;
    uint64_t root_seed_;
    std::vector<float> w_max_;
    std::map<double, std::vector<float>> cache_;
};

// DPM-Solver++(2M) SDE, midpoint variant (k-diffusion's sample_dpmpp_2m_sde); _bt draws its
// noise from the Brownian tree above (seeded by two floats of the sampler's generator) so that
// the path does not depend on the step count.
void dpmpp_2m_sde(Run & r, const std::vector<float> & sg, float eta, bool tree) {
    float * x = r.x_;
    std::unique_ptr<BrownianTree> bt;
    if (tree) {
        double sigma_max = 0.0, sigma_min = std::numeric_limits<double>::infinity();
        for (float v : sg) {
            if (v > 0.0f) {
                sigma_max = std::max(sigma_max, double(v));
                sigma_min = std::min(sigma_min, double(v));
            }
        }
        // sd.cpp returns x unsampled when there is a single positive sigma (one step); sdnode
        // runs that step, which needs no noise (it lands on D).
        if (sigma_max > sigma_min) {
            if (!r.rng_) throw_invalid("sampler dpm++2m_sde_bt draws noise but no noise generator was given");
            float seed_bits[2];
            r.rng_->randn(seed_bits, 2);
            uint64_t seed = 0;
            std::memcpy(&seed, seed_bits, sizeof(seed));
            bt = std::make_unique<BrownianTree>(r.n_, sigma_min, sigma_max, seed);
        }
    }
    std::vector<float> old_den(r.n_), z(tree ? r.n_ : 0);
    bool have_old = false;
    float h_last = 0.0f;
    for (int i = 0; i < r.steps_; ++i) {
        const float * den = r.D(x, sg[i]);
        if (sg[i + 1] == 0.0f) {
            std::copy(den, den + r.n_, x);
        } else {
            const float t = -std::log(sg[i]), s = -std::log(sg[i + 1]);
            const float h = s - t, eta_h = eta * h;
            const float a = sg[i + 1] / sg[i] * std::exp(-eta_h);
            const float b = -std::expm1(-h - eta_h);
            for (size_t j = 0; j < r.n_; ++j) x[j] = a * x[j] + b * den[j];
            if (have_old) {
                const float c = 0.5f * b / (h_last / h);
                for (size_t j = 0; j < r.n_; ++j) x[j] += c * (den[j] - old_den[j]);
            }
            if (eta > 0.0f) {
                const float scale = sg[i + 1] * std::sqrt(-std::expm1(-2.0f * eta_h));
                const float * noise = z.data();
                if (bt) {
                    bt->increment(sg[i], sg[i + 1], z.data());
                } else {
                    noise = r.draw_noise("dpm++2m_sde");
                }
                for (size_t j = 0; j < r.n_; ++j) x[j] += noise[j] * scale;
            }
            h_last = h;
        }
        std::copy(den, den + r.n_, old_den.begin());
        have_old = true;
        r.step_done(i);
    }
}

}  // namespace

void sample(Sampler s, const Denoise & denoise, float * x, size_t n, const std::vector<float> & sigmas, Rng * noise,
            float eta, const StepHook & on_step, const SamplerParams & params) {
    if (sigmas.size() < 2) {
        throw_invalid("sampler " + std::string(sampler_name(s)) + ": needs at least 2 sigmas (1 step), got " +
                      std::to_string(sigmas.size()));
    }
    for (size_t i = 0; i + 1 < sigmas.size(); ++i) {
        if (!(sigmas[i] > 0.0f) || !std::isfinite(sigmas[i])) {
            throw_invalid("sampler " + std::string(sampler_name(s)) + ": sigma[" + std::to_string(i) + "] = " +
                          std::to_string(sigmas[i]) + ", expected a finite value > 0 before the last");
        }
    }
    if (!std::isfinite(eta) || eta < 0.0f) throw_invalid("eta " + std::to_string(eta) + " is invalid: expected a finite value >= 0");
    if (!denoise) throw_invalid("sample: no denoiser given");
    if (n == 0) return;

    Run run(denoise, x, n, noise, on_step, int(sigmas.size()) - 1);
    switch (s) {
        case Sampler::Euler: euler(run, sigmas); break;
        case Sampler::EulerA: euler_ancestral(run, sigmas, eta); break;
        case Sampler::Heun: heun(run, sigmas); break;
        case Sampler::Dpm2: dpm2(run, sigmas); break;
        case Sampler::Dpmpp2sA: dpmpp_2s_ancestral(run, sigmas, eta); break;
        case Sampler::Dpmpp2m: dpmpp_2m(run, sigmas, false); break;
        case Sampler::Dpmpp2mv2: dpmpp_2m(run, sigmas, true); break;
        case Sampler::Ipndm: ipndm(run, sigmas, false); break;
        case Sampler::IpndmV: ipndm(run, sigmas, true); break;
        case Sampler::Lcm: lcm(run, sigmas); break;
        // DDIM (trailing timesteps come from its default simple schedule) is Euler ancestral in
        // sd.cpp 97d29908: deterministic at its default eta 0.
        case Sampler::DdimTrailing: euler_ancestral(run, sigmas, eta, "ddim_trailing"); break;
        case Sampler::Tcd: tcd(run, sigmas, eta); break;
        case Sampler::Lms: lms(run, sigmas, params); break;
        case Sampler::ResMultistep: res_multistep(run, sigmas, eta); break;
        case Sampler::Res2s: res_2s(run, sigmas, eta); break;
        case Sampler::ErSde: er_sde(run, sigmas, eta); break;
        case Sampler::EulerCfgPp: euler_cfg_pp(run, sigmas, false, eta); break;
        case Sampler::EulerACfgPp: euler_cfg_pp(run, sigmas, true, eta); break;
        case Sampler::EulerGe: euler_ge(run, sigmas, eta, params.ge_gamma); break;
        case Sampler::Dpmpp2mSde: dpmpp_2m_sde(run, sigmas, eta, false); break;
        case Sampler::Dpmpp2mSdeBt: dpmpp_2m_sde(run, sigmas, eta, true); break;
    }
}

}  // namespace sd
