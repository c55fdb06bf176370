#include "diffusion/samplers.h"

#include <algorithm>
#include <cmath>

#include "core/enum-names.h"
#include "core/errors.h"

namespace sd {

namespace {

constexpr EnumName<Sampler> kSamplerNames[] = {
    {Sampler::Euler, "euler"},         {Sampler::EulerA, "euler_a"},       {Sampler::Heun, "heun"},
    {Sampler::Dpm2, "dpm2"},           {Sampler::Dpmpp2sA, "dpm++2s_a"},   {Sampler::Dpmpp2m, "dpm++2m"},
    {Sampler::Dpmpp2mv2, "dpm++2mv2"}, {Sampler::Ipndm, "ipndm"},          {Sampler::IpndmV, "ipndm_v"},
    {Sampler::Lcm, "lcm"},             {Sampler::DdimTrailing, "ddim_trailing"}, {Sampler::Tcd, "tcd"},
};
}  // namespace

const char * sampler_name(Sampler s) { return enum_name(kSamplerNames, s); }

Sampler parse_sampler(const std::string & name) { return parse_enum(kSamplerNames, name, "sampler"); }

std::vector<Sampler> all_samplers() { return enum_values(kSamplerNames); }

Scheduler default_scheduler(Sampler s) {
    if (s == Sampler::Lcm || s == Sampler::Tcd) return Scheduler::Lcm;
    if (s == Sampler::DdimTrailing) return Scheduler::Simple;
    return Scheduler::Discrete;
}

float default_eta(Sampler s) { return (s == Sampler::EulerA || s == Sampler::Dpmpp2sA) ? 1.0f : 0.0f; }

int denoise_calls(Sampler s, const std::vector<float> & sigmas, float eta) {
    const int steps = int(sigmas.size()) - 1;
    int calls = steps;
    for (int i = 0; i < steps; ++i) {
        const bool last_is_zero = sigmas[i + 1] == 0.0f;
        if ((s == Sampler::Heun || s == Sampler::Dpm2) && !last_is_zero) ++calls;
        // dpm++2s_a skips its second evaluation only where sigma_down is 0 (the last step, or eta
        // so large that the whole step is noise).
        if (s == Sampler::Dpmpp2sA && !last_is_zero) {
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
        denoise_(src, sigma, den_.data());
        return den_.data();
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
    std::vector<float> den_, noise_;
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
                const float * z = r.draw_noise(name);
                for (size_t j = 0; j < r.n_; ++j) x[j] = x[j] + z[j] * up;
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
            const float * z = r.draw_noise("dpm++2s_a");
            for (size_t j = 0; j < r.n_; ++j) x[j] = x[j] + z[j] * up;
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
            const float * z = r.draw_noise("lcm");
            for (size_t j = 0; j < r.n_; ++j) x[j] = x[j] + sg[i + 1] * z[j];
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

}  // namespace

void sample(Sampler s, const Denoise & denoise, float * x, size_t n, const std::vector<float> & sigmas, Rng * noise,
            float eta, const StepHook & on_step) {
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
    }
}

}  // namespace sd
