#include "diffusion/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/enum-names.h"
#include "core/errors.h"

namespace sd {

// ------------------------------------------------------------------ noise schedules

NoiseSchedule::NoiseSchedule() {
    // In float, step for step as the reference: beta = (sqrt(start) + i/999 * (sqrt(end) - sqrt(start)))^2.
    const float sqrt_start = std::sqrt(0.00085f);
    const float sqrt_end = std::sqrt(0.0120f);
    std::array<float, kTimesteps> ac{};
    float product = 1.0f;
    for (int i = 0; i < kTimesteps; ++i) {
        const float beta_sqrt = sqrt_start + (sqrt_end - sqrt_start) * (float(i) / float(kTimesteps - 1));
        product *= 1.0f - std::pow(beta_sqrt, 2.0f);
        ac[i] = product;
    }
    fill_table(ac.data());
}

NoiseSchedule::NoiseSchedule(const std::vector<float> & alphas_cumprod) {
    const std::string why = invalid_alphas_cumprod(alphas_cumprod);
    if (!why.empty()) throw_invalid("alphas_cumprod " + why);
    fill_table(alphas_cumprod.data());
    from_file_ = true;
}

std::string NoiseSchedule::invalid_alphas_cumprod(const std::vector<float> & ac) {
    if (ac.size() != size_t(kTimesteps)) {
        return "has " + std::to_string(ac.size()) + " values; expected " + std::to_string(kTimesteps);
    }
    for (size_t i = 0; i < ac.size(); ++i) {
        if (!(std::isfinite(ac[i]) && ac[i] > 0.0f && ac[i] <= 1.0f)) {
            return "[" + std::to_string(i) + "] is " + std::to_string(ac[i]) + "; expected a number in (0, 1]";
        }
    }
    return "";
}

void NoiseSchedule::fill_table(const float * ac) {
    for (int i = 0; i < kTimesteps; ++i) {
        alphas_cumprod_[i] = ac[i];
        sigmas_[i] = std::sqrt((1.0f - ac[i]) / ac[i]);
        log_sigmas_[i] = std::log(sigmas_[i]);
    }
    sigma_min_ = sigmas_[0];
    sigma_max_ = sigmas_[kTimesteps - 1];
}

NoiseSchedule NoiseSchedule::edm(float sigma_min, float sigma_max) {
    if (!(sigma_min > 0.0f && sigma_max > sigma_min && std::isfinite(sigma_max))) {
        throw_invalid("EDM sigmas must satisfy 0 < sigma_min < sigma_max; received " + std::to_string(sigma_min) + ", " +
                      std::to_string(sigma_max));
    }
    NoiseSchedule s;
    s.kind_ = Kind::Edm;
    s.sigma_min_ = sigma_min;
    s.sigma_max_ = sigma_max;
    return s;
}

float NoiseSchedule::sigma(int t) const {
    if (t < 0 || t >= kTimesteps) throw_invalid("timestep " + std::to_string(t) + " is outside [0, 999]");
    if (kind_ == Kind::Edm) return t_to_sigma(float(t));
    return sigmas_[t];
}

float NoiseSchedule::alphas_cumprod(int t) const {
    if (t < 0 || t >= kTimesteps) throw_invalid("timestep " + std::to_string(t) + " is outside [0, 999]");
    if (kind_ == Kind::Edm) throw Error(ErrorCode::Internal, "an EDM schedule has no alphas_cumprod table");
    return alphas_cumprod_[t];
}

float NoiseSchedule::t_to_sigma(float t) const {
    if (!(t >= 0.0f && t <= float(kTimesteps - 1))) {
        throw_invalid("timestep " + std::to_string(t) + " is outside [0, 999]");
    }
    if (kind_ == Kind::Edm) return std::exp(t * 4.0f / float(kTimesteps));
    const int lo = int(std::floor(t));
    const int hi = int(std::ceil(t));
    const float w = t - float(lo);
    return std::exp((1.0f - w) * log_sigmas_[lo] + w * log_sigmas_[hi]);
}

float NoiseSchedule::sigma_to_t(float sigma) const {
    if (kind_ == Kind::Edm) return 0.25f * std::log(sigma);
    // The last table entry at or below log(sigma), clamped so [lo, lo+1] is a valid pair.
    const float log_sigma = std::log(sigma);
    int lo = 0;
    for (int i = 0; i < kTimesteps; ++i) {
        if (log_sigma - log_sigmas_[i] >= 0) ++lo;
    }
    lo = std::min(std::max(lo - 1, 0), kTimesteps - 2);
    const int hi = lo + 1;
    float w = (log_sigmas_[lo] - log_sigma) / (log_sigmas_[lo] - log_sigmas_[hi]);
    w = std::max(0.0f, std::min(1.0f, w));
    return (1.0f - w) * float(lo) + w * float(hi);
}

// ------------------------------------------------------------------ names

namespace {

constexpr EnumName<Scheduler> kSchedulerNames[] = {
    {Scheduler::Discrete, "discrete"},       {Scheduler::Karras, "karras"},     {Scheduler::Exponential, "exponential"},
    {Scheduler::Ays, "ays"},                 {Scheduler::Gits, "gits"},         {Scheduler::SgmUniform, "sgm_uniform"},
    {Scheduler::Simple, "simple"},           {Scheduler::Smoothstep, "smoothstep"},
    {Scheduler::KlOptimal, "kl_optimal"},    {Scheduler::Lcm, "lcm"},           {Scheduler::BongTangent, "bong_tangent"},
    {Scheduler::Beta, "beta"},
};
}  // namespace

const char * scheduler_name(Scheduler s) { return enum_name(kSchedulerNames, s); }

Scheduler parse_scheduler(const std::string & name) {
    if (name == kSchedulerAliasNormal) return Scheduler::Discrete;  // sd.cpp's alias
    return parse_enum(kSchedulerNames, name, "scheduler");
}

std::vector<Scheduler> all_schedulers() { return enum_values(kSchedulerNames); }

namespace {
constexpr EnumName<Prediction> kPredictionNames[] = {
    {Prediction::Eps, "eps"}, {Prediction::V, "v"}, {Prediction::EdmV, "edm_v"}};
}  // namespace

const char * prediction_name(Prediction p) { return enum_name(kPredictionNames, p); }
Prediction parse_prediction(const std::string & name) { return parse_enum(kPredictionNames, name, "prediction"); }
std::vector<std::string> prediction_names() {
    std::vector<std::string> v;
    for (const auto & e : kPredictionNames) v.push_back(e.name);
    return v;
}

// ------------------------------------------------------------------ helpers shared by the tables

namespace {

// Evenly spaced floats by repeated addition (not start + i * step): the reference accumulates,
// and the rounding shows in the timesteps it derives from them.
std::vector<float> accumulated_linspace(float start, float end, size_t count) {
    std::vector<float> v(count);
    if (count == 0) return v;
    const float inc = (end - start) / float(count - 1);
    v[0] = start;
    for (size_t i = 1; i < count; ++i) v[i] = v[i - 1] + inc;
    return v;
}

// Stretches a descending sigma table to new_len entries, interpolating log(sigma) linearly over
// a [0, 1] axis (NumCpp-style interp in double over float grids, as the reference does).
std::vector<float> log_linear_stretch(const std::vector<float> & table, size_t new_len) {
    const size_t len = table.size();
    const std::vector<float> xs = accumulated_linspace(0.0f, 1.0f, len);
    std::vector<float> ys(len);
    for (size_t i = 0; i < len; ++i) ys[i] = std::log(table[len - 1 - i]);  // ascending

    std::vector<float> new_xs = accumulated_linspace(0.0f, 1.0f, new_len);
    new_xs.front() = std::max(new_xs.front(), xs.front());
    new_xs.back() = std::min(new_xs.back(), xs.back());

    std::vector<double> new_ys(new_len);
    size_t j = 0;
    for (size_t i = 0; i < new_len; ++i) {
        while (j + 2 < len && new_xs[i] > xs[j + 1]) ++j;
        const double perc = double(new_xs[i] - xs[j]) / double(xs[j + 1] - xs[j]);
        new_ys[i] = double(ys[j]) * (1.0 - perc) + double(ys[j + 1]) * perc;
    }
    std::vector<float> out(new_len);
    for (size_t i = 0; i < new_len; ++i) out[i] = float(std::exp(new_ys[new_len - 1 - i]));
    return out;
}

// Align Your Steps, 10-step tables (11 levels) from NVIDIA's how-to page.
const std::vector<float> kAysSd1 = {14.6146412293f, 6.4745760956f, 3.8636745985f, 2.6946151520f,
                                    1.8841921177f,  1.3943805092f, 0.9642583904f, 0.6523686016f,
                                    0.3977456272f,  0.1515232662f, 0.0291671582f};
const std::vector<float> kAysSdxl = {14.6146412293f, 6.3184485287f, 3.7681790315f, 2.1811480769f,
                                     1.3405244945f,  0.8620721141f, 0.5550693289f, 0.3798540708f,
                                     0.2332364134f,  0.1114188177f, 0.0291671582f};
const std::vector<float> kAysSvd = {700.00f, 54.5f, 15.886f, 7.977f, 4.248f, 1.789f,
                                    0.981f,  0.403f, 0.173f, 0.034f, 0.002f};

// GITS (Chen et al., zju-pi/diff-sampler) noise levels for coefficient 1.20, the only one
// stable-diffusion.cpp uses; row k holds the k + 3 levels of a (k + 2)-step schedule.
const std::vector<std::vector<float>> kGits120 = {
    {14.61464119f, 0.803307f, 0.02916753f},
    {14.61464119f, 1.56271636f, 0.52423614f, 0.02916753f},
    {14.61464119f, 2.36326075f, 0.92192322f, 0.36617002f, 0.02916753f},
    {14.61464119f, 2.84484982f, 1.24153244f, 0.59516323f, 0.25053367f, 0.02916753f},
    {14.61464119f, 5.85520077f, 2.05039096f, 0.95350921f, 0.45573691f, 0.17026083f, 0.02916753f},
    {14.61464119f, 5.85520077f, 2.45070267f, 1.24153244f, 0.64427125f, 0.29807833f, 0.09824532f, 0.02916753f},
    {14.61464119f, 5.85520077f, 2.45070267f, 1.36964464f, 0.803307f, 0.45573691f, 0.25053367f, 0.09824532f,
     0.02916753f},
    {14.61464119f, 5.85520077f, 2.84484982f, 1.61558151f, 0.95350921f, 0.59516323f, 0.36617002f, 0.19894916f,
     0.09824532f, 0.02916753f},
    {14.61464119f, 5.85520077f, 2.84484982f, 1.67050016f, 1.08895338f, 0.74807048f, 0.50118381f, 0.32104823f,
     0.19894916f, 0.09824532f, 0.02916753f},
    {14.61464119f, 5.85520077f, 2.95596409f, 1.84880662f, 1.24153244f, 0.83188516f, 0.59516323f, 0.41087446f,
     0.27464288f, 0.17026083f, 0.09824532f, 0.02916753f},
    {14.61464119f, 5.85520077f, 3.07277966f, 1.98035145f, 1.36964464f, 0.95350921f, 0.69515091f, 0.50118381f,
     0.36617002f, 0.25053367f, 0.17026083f, 0.09824532f, 0.02916753f},
    {14.61464119f, 6.77309084f, 3.46139455f, 2.36326075f, 1.56271636f, 1.08895338f, 0.803307f, 0.59516323f,
     0.45573691f, 0.34370604f, 0.25053367f, 0.17026083f, 0.09824532f, 0.02916753f},
    {14.61464119f, 6.77309084f, 3.46139455f, 2.45070267f, 1.61558151f, 1.162866f, 0.86115354f, 0.64427125f,
     0.50118381f, 0.38853383f, 0.29807833f, 0.22545385f, 0.17026083f, 0.09824532f, 0.02916753f},
    {14.61464119f, 7.49001646f, 4.65472794f, 3.07277966f, 2.12350607f, 1.51179266f, 1.08895338f, 0.83188516f,
     0.64427125f, 0.50118381f, 0.38853383f, 0.29807833f, 0.22545385f, 0.17026083f, 0.09824532f, 0.02916753f},
    {14.61464119f, 7.49001646f, 4.65472794f, 3.07277966f, 2.12350607f, 1.51179266f, 1.08895338f, 0.83188516f,
     0.64427125f, 0.50118381f, 0.41087446f, 0.32104823f, 0.25053367f, 0.19894916f, 0.13792117f, 0.09824532f,
     0.02916753f},
    {14.61464119f, 7.49001646f, 4.65472794f, 3.07277966f, 2.12350607f, 1.51179266f, 1.08895338f, 0.83188516f,
     0.64427125f, 0.50118381f, 0.41087446f, 0.34370604f, 0.27464288f, 0.22545385f, 0.17026083f, 0.13792117f,
     0.09824532f, 0.02916753f},
    {14.61464119f, 7.49001646f, 4.65472794f, 3.07277966f, 2.19988537f, 1.61558151f, 1.20157266f, 0.92192322f,
     0.72133851f, 0.57119018f, 0.45573691f, 0.36617002f, 0.29807833f, 0.25053367f, 0.19894916f, 0.17026083f,
     0.13792117f, 0.09824532f, 0.02916753f},
    {14.61464119f, 7.49001646f, 4.65472794f, 3.07277966f, 2.19988537f, 1.61558151f, 1.24153244f, 0.95350921f,
     0.74807048f, 0.59516323f, 0.4783645f, 0.38853383f, 0.32104823f, 0.27464288f, 0.22545385f, 0.19894916f,
     0.17026083f, 0.13792117f, 0.09824532f, 0.02916753f},
    {14.61464119f, 7.49001646f, 4.65472794f, 3.07277966f, 2.19988537f, 1.61558151f, 1.24153244f, 0.95350921f,
     0.74807048f, 0.59516323f, 0.50118381f, 0.41087446f, 0.34370604f, 0.29807833f, 0.25053367f, 0.22545385f,
     0.19894916f, 0.17026083f, 0.13792117f, 0.09824532f, 0.02916753f},
};

// One arctan ramp of bong_tangent: `steps` values from `start` to `end`.
std::vector<float> tangent_ramp(int steps, float slope, float pivot, float start, float end) {
    const float pi = 3.14159265358979323846f;
    auto v = [&](float x) { return ((2.0f / pi) * std::atan(-slope * (x - pivot)) + 1.0f) * 0.5f; };
    std::vector<float> out;
    if (steps <= 0) return out;
    const float smax = v(0.0f);
    const float smin = v(float(steps - 1));
    const float srange = smax - smin;
    if (std::fabs(srange) < 1e-8f) {  // flat ramp: fall back to a straight line
        if (steps == 1) return {start};
        for (int i = 0; i < steps; ++i) out.push_back(start + (end - start) * (float(i) / float(steps - 1)));
        return out;
    }
    const float inv_range = 1.0f / srange;
    for (int x = 0; x < steps; ++x) out.push_back(((v(float(x)) - smin) * inv_range) * (start - end) + end);
    return out;
}

}  // namespace

// ------------------------------------------------------------------ the beta schedule

namespace {

// The Beta(a, b) distribution's quantile as sd.cpp computes it: the regularized incomplete beta
// by Lentz's continued fraction (eps 3e-7, 200 terms), inverted by 30 Newton steps from 0.5.
double log_beta(double a, double b) { return std::lgamma(a) + std::lgamma(b) - std::lgamma(a + b); }

double incomplete_beta(double x, double a, double b) {
    if (x <= 0.0) return 0.0;
    if (x >= 1.0) return 1.0;
    const double eps = 3.0e-7, tiny = 1e-30;
    const double qab = a + b, qap = a + 1.0, qam = a - 1.0;
    const auto guard = [&](double v) { return std::abs(v) < tiny ? tiny : v; };
    double c = 1.0;
    double d = 1.0 / guard(1.0 - qab * x / qap);
    double h = d;
    for (int m = 1; m <= 200; m++) {
        const int m2 = 2 * m;
        double aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        h *= d * c;
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        const double del = d * c;
        h *= del;
        if (std::abs(del - 1.0) < eps) break;
    }
    return std::exp(a * std::log(x) + b * std::log(1.0 - x) - log_beta(a, b)) / a * h;
}

double beta_cdf(double x, double a, double b) {
    if (x == 0.0) return 0.0;
    if (x == 1.0) return 1.0;
    if (x < (a + 1.0) / (a + b + 2.0)) return incomplete_beta(x, a, b);
    return 1.0 - incomplete_beta(1.0 - x, b, a);
}

double beta_quantile(double u, double a, double b) {
    double x = 0.5;
    for (int i = 0; i < 30; i++) {
        const double f = beta_cdf(x, a, b) - u;
        if (std::abs(f) < 1e-10) break;
        const double df = std::exp((a - 1.0) * std::log(x) + (b - 1.0) * std::log(1.0 - x) - log_beta(a, b));
        x -= f / df;
        if (x <= 0.0) x = 1e-10;
        if (x >= 1.0) x = 1.0 - 1e-10;
    }
    return x;
}

}  // namespace

// ------------------------------------------------------------------ schedules

std::vector<float> make_sigmas(Scheduler s, int n, const NoiseSchedule & table, AysModel ays) {
    if (n < 1 || n > 10000) throw_invalid("steps " + std::to_string(n) + " is out of range: expected 1..10000");
    const float sigma_min = table.sigma_min();
    const float sigma_max = table.sigma_max();
    const float t_max = float(kTimesteps - 1);
    std::vector<float> out;
    out.reserve(size_t(n) + 1);

    switch (s) {
        case Scheduler::Beta: {
            // Timesteps at the Beta(0.6, 0.6) quantiles of 1 - i/n, rounded; repeats dropped (so
            // many steps can give fewer sigmas, as in the reference).
            const double alpha = 0.6, beta = 0.6;
            if (n == 1) {
                out.push_back(table.t_to_sigma(t_max));
                break;
            }
            int last = -1;
            for (int i = 0; i < n; ++i) {
                const double u = 1.0 - double(i) / double(n);
                const int t = int(std::lround(beta_quantile(u, alpha, beta) * double(kTimesteps - 1)));
                if (t != last) out.push_back(table.t_to_sigma(float(t)));
                last = t;
            }
            break;
        }
        case Scheduler::Discrete: {
            if (n == 1) {
                out.push_back(table.t_to_sigma(t_max));
                break;
            }
            const float step = t_max / float(n - 1);
            for (int i = 0; i < n; ++i) out.push_back(table.t_to_sigma(std::max(0.0f, t_max - step * float(i))));
            break;
        }
        case Scheduler::Karras: {
            // (The reference divides by n - 1 and gives NaN for one step; one step is sigma_max here.)
            const float rho = 7.0f;
            const float lo = std::pow(std::max(sigma_min, 1e-6f), 1.0f / rho);
            const float hi = std::pow(sigma_max, 1.0f / rho);
            for (int i = 0; i < n; ++i) {
                const float frac = n == 1 ? 0.0f : float(i) / (float(n) - 1.0f);
                out.push_back(std::pow(hi + frac * (lo - hi), rho));
            }
            break;
        }
        case Scheduler::Exponential: {
            const float log_min = std::log(sigma_min), log_max = std::log(sigma_max);
            const float step = n == 1 ? 0.0f : (log_max - log_min) / float(n - 1);
            for (int i = 0; i < n; ++i) out.push_back(std::exp(log_max - step * float(i)));
            break;
        }
        case Scheduler::Ays: {
            const std::vector<float> & levels = ays == AysModel::Sdxl ? kAysSdxl : ays == AysModel::Svd ? kAysSvd : kAysSd1;
            out = size_t(n) + 1 == levels.size() ? levels : log_linear_stretch(levels, size_t(n) + 1);
            out.pop_back();
            break;
        }
        case Scheduler::Gits: {
            if (n < 2) throw_invalid("the gits scheduler needs at least 2 steps, got " + std::to_string(n));
            out = n <= 20 ? kGits120[size_t(n) - 2] : log_linear_stretch(kGits120.back(), size_t(n) + 1);
            out.pop_back();
            break;
        }
        case Scheduler::SgmUniform: {
            const std::vector<float> ts = accumulated_linspace(t_max, 0.0f, size_t(n) + 1);
            for (int i = 0; i < n; ++i) out.push_back(table.t_to_sigma(std::max(0.0f, ts[i])));
            break;
        }
        case Scheduler::Simple: {
            const float stride = float(kTimesteps) / float(n);
            for (int i = 0; i < n; ++i) {
                const int t = std::max(0, kTimesteps - 1 - int(float(i) * stride));
                out.push_back(table.t_to_sigma(float(t)));
            }
            break;
        }
        case Scheduler::Smoothstep: {
            if (n == 1) {
                out.push_back(table.t_to_sigma(t_max));
                break;
            }
            for (int i = 0; i < n; ++i) {
                const float u = 1.0f - float(i) / float(n);
                out.push_back(table.t_to_sigma(std::round(u * u * (3.0f - 2.0f * u) * t_max)));
            }
            break;
        }
        case Scheduler::KlOptimal: {
            if (n == 1) {
                out.push_back(sigma_max);
                break;
            }
            const float a_min = std::atan(std::max(sigma_min, 1e-6f));
            const float a_max = std::atan(sigma_max);
            for (int i = 0; i < n; ++i) {
                const float t = float(i) / float(n - 1);
                out.push_back(std::tan(t * a_min + (1.0f - t) * a_max));
            }
            break;
        }
        case Scheduler::Lcm: {
            const int original_steps = 50;
            const int stride = kTimesteps / original_steps;
            for (int i = 0; i < n; ++i) {
                const int index = (i * original_steps) / n;  // integer floor: LCM's training grid
                out.push_back(table.t_to_sigma(float(std::max(0, (original_steps - index) * stride - 1))));
            }
            break;
        }
        case Scheduler::BongTangent: {
            const float start = sigma_max, end = sigma_min;
            const float middle = sigma_min + (sigma_max - sigma_min) * 0.5f;
            const float pivot = 0.6f;
            const int steps = n + 2;
            const int midpoint = int((float(steps) * pivot + float(steps) * pivot) * 0.5f);
            const int pivot_i = int(float(steps) * pivot);
            const float slope = 0.2f / (float(steps) / 40.0f);
            const int stage2 = steps - midpoint;
            const int stage1 = steps - stage2;
            std::vector<float> first = tangent_ramp(stage1, slope, float(pivot_i), start, middle);
            const std::vector<float> second = tangent_ramp(stage2, slope, float(pivot_i - stage1), middle, end);
            if (!first.empty()) first.pop_back();  // the ramps share the middle value
            out = first;
            out.insert(out.end(), second.begin(), second.end());
            out.resize(size_t(n), end);  // pads with sigma_min or trims to n
            break;
        }
    }
    out.push_back(0.0f);
    return out;
}

Scalings denoiser_scalings(Prediction p, float sigma) {
    const float norm = std::sqrt(sigma * sigma + 1.0f);  // sigma_data = 1
    if (p == Prediction::V || p == Prediction::EdmV) return {1.0f / (sigma * sigma + 1.0f), -sigma / norm, 1.0f / norm};
    return {1.0f, -sigma, 1.0f / norm};
}

}  // namespace sd
