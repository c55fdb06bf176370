// schedule: the SD discrete table, every scheduler's sigmas, sigma <-> timestep, scalings.
// Expected values: published constants (sigma_min 0.0292, sigma_max 14.6146, the AYS tables) and
// a double-precision numpy computation of the same formulas (written next to each number).
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "check.h"
#include "core/errors.h"
#include "diffusion/schedule.h"

namespace {

const sd::NoiseSchedule & table() {
    static const sd::NoiseSchedule t;
    return t;
}

void discrete_table() {
    // numpy: b = linspace(sqrt(0.00085), sqrt(0.012), 1000)**2; ac = cumprod(1 - b); s = sqrt((1-ac)/ac)
    CHECK_NEAR(table().sigma_min(), 0.029167158151720367, 2e-6);
    CHECK_NEAR(table().sigma_max(), 14.614641229333639, 2e-4);
    CHECK_NEAR(table().sigma(500), 1.6182788260186167, 2e-5);
    CHECK_NEAR(table().alphas_cumprod(0), 0.99915, 1e-6);
    CHECK_NEAR(table().alphas_cumprod(999), 0.004660098513077238, 1e-6);

    // t -> sigma -> t round trips on and between grid points.
    for (float t : {0.0f, 1.0f, 250.5f, 500.0f, 998.25f, 999.0f}) {
        CHECK_NEAR(table().sigma_to_t(table().t_to_sigma(t)), t, 2e-3);
    }
    CHECK_NEAR(table().sigma_to_t(table().sigma_max()), 999.0, 1e-4);
    CHECK_NEAR(table().sigma_to_t(100.0f), 999.0, 0);   // clamped above
    CHECK_NEAR(table().sigma_to_t(1e-4f), 0.0, 0);      // clamped below
    CHECK_THROWS_CODE(table().t_to_sigma(1000.0f), sd::ErrorCode::InvalidArgument);
    CHECK_THROWS_CODE(table().sigma(-1), sd::ErrorCode::InvalidArgument);
}

std::vector<float> sig(sd::Scheduler s, int n, sd::AysModel m = sd::AysModel::Sd1) {
    return sd::make_sigmas(s, n, table(), m);
}

void shapes_for_every_scheduler() {
    for (sd::Scheduler s : sd::all_schedulers()) {
        CHECK(sd::parse_scheduler(sd::scheduler_name(s)) == s);
        for (int n : {1, 2, 3, 4, 6, 10, 11, 20, 21, 30, 50}) {
            if (s == sd::Scheduler::Gits && n < 2) continue;
            const auto v = sig(s, n);
            CHECK(v.size() == size_t(n) + 1);  // beta drops repeated timesteps, none up to 50 steps
            CHECK(v.back() == 0.0f);
            bool ok = true;
            for (int i = 0; i < n; ++i) ok = ok && std::isfinite(v[i]) && v[i] > 0.0f && v[i] <= 14.62f;
            for (int i = 0; i + 1 < n; ++i) ok = ok && v[i] >= v[i + 1];  // non-increasing
            if (!ok) std::fprintf(stderr, "bad schedule %s n=%d\n", sd::scheduler_name(s), n);
            CHECK(ok);
        }
    }
    CHECK_THROWS_CODE(sig(sd::Scheduler::Gits, 1), sd::ErrorCode::InvalidArgument);
    CHECK_THROWS_CODE(sig(sd::Scheduler::Karras, 0), sd::ErrorCode::InvalidArgument);
    CHECK_THROWS_CODE(sd::parse_scheduler("betta"), sd::ErrorCode::InvalidArgument);
    CHECK(sd::parse_scheduler("normal") == sd::Scheduler::Discrete);  // sd.cpp's alias
}

void beta_schedule() {
    // Timesteps round(999 * ppf(1 - i/n)) of Beta(0.6, 0.6) (numerical quantiles in double,
    // python): 999, 876, 637, 362, 123 for 5 steps.
    const auto v = sig(sd::Scheduler::Beta, 5);
    const int want[] = {999, 876, 637, 362, 123};
    for (int i = 0; i < 5; ++i) CHECK_NEAR(v[i], table().t_to_sigma(float(want[i])), 1e-6);
    CHECK(v[5] == 0.0f);
    // At many steps rounding repeats timesteps near the ends; repeats are dropped.
    const auto many = sig(sd::Scheduler::Beta, 1000);
    CHECK(many.size() < 1001);
    for (size_t i = 0; i + 2 < many.size(); ++i) CHECK(many[i] > many[i + 1]);
}

void discrete_and_friends() {
    // discrete, 4 steps: t = 999, 666, 333, 0 (numpy values of s[t]).
    const auto d = sig(sd::Scheduler::Discrete, 4);
    CHECK_NEAR(d[0], 14.614641229333639, 2e-4);
    CHECK_NEAR(d[1], 2.9183071154268285, 3e-5);
    CHECK_NEAR(d[2], 0.9323579668348474, 1e-5);
    CHECK_NEAR(d[3], 0.029167158151720367, 2e-6);
    // sgm_uniform, 4 steps: t = 999, 749.25, 499.5, 249.75 (the 5th, 0, is replaced by sigma 0).
    const auto u = sig(sd::Scheduler::SgmUniform, 4);
    CHECK_NEAR(table().sigma_to_t(u[1]), 749.25, 2e-2);
    CHECK_NEAR(table().sigma_to_t(u[3]), 249.75, 2e-2);
    // (t_to_sigma on a grid point is exp(log(sigma[t])): equal to the table up to an ulp.)
    // simple, 4 steps: t = 999, 749, 499, 249.
    const auto sm = sig(sd::Scheduler::Simple, 4);
    CHECK_NEAR(sm[1], table().sigma(749), 1e-6);
    CHECK_NEAR(sm[3], table().sigma(249), 1e-6);
    // lcm, 4 steps: index = floor(50 i / 4) = 0, 12, 25, 37 -> t = 999, 759, 499, 259.
    const auto l = sig(sd::Scheduler::Lcm, 4);
    CHECK_NEAR(l[1], table().sigma(759), 1e-6);
    CHECK_NEAR(l[3], table().sigma(259), 1e-6);
    // smoothstep, 4 steps: u = 1, .75, .5, .25 -> round(999 * (.84375, .5, .15625)) = 843, 500, 156.
    const auto ss = sig(sd::Scheduler::Smoothstep, 4);
    CHECK_NEAR(ss[1], table().sigma(843), 1e-6);
    CHECK_NEAR(ss[2], table().sigma(500), 1e-6);
    CHECK_NEAR(ss[3], table().sigma(156), 1e-6);
}

void karras_exponential_klopt() {
    // k-diffusion's get_sigmas_karras (rho 7) over [sigma_min, sigma_max], numpy in double:
    const double want[] = {14.614641229333643, 6.082149208471242, 2.232154544358539,
                           0.6925703768065329, 0.1697565757572342, 0.02916715815172038};
    const auto k = sig(sd::Scheduler::Karras, 6);
    for (int i = 0; i < 6; ++i) CHECK_NEAR(k[i], want[i], want[i] * 2e-5);

    // exponential: log-uniform, so consecutive ratios are equal.
    const auto e = sig(sd::Scheduler::Exponential, 5);
    CHECK_NEAR(e[0], table().sigma_max(), 1e-4);
    CHECK_NEAR(e[4], table().sigma_min(), 1e-6);
    CHECK_NEAR(e[1] / e[0], e[3] / e[2], 1e-5);

    // kl_optimal: atan(sigma) is linear in the step index.
    const auto ko = sig(sd::Scheduler::KlOptimal, 5);
    CHECK_NEAR(ko[0], table().sigma_max(), 1e-4);
    CHECK_NEAR(ko[4], table().sigma_min(), 1e-6);
    CHECK_NEAR(std::atan(ko[1]) - std::atan(ko[0]), std::atan(ko[3]) - std::atan(ko[2]), 1e-6);
}

void ays_and_gits() {
    // AYS SD1.5 10-step table (NVIDIA's published noise levels), used as is for 10 steps.
    const double sd1[] = {14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
                          0.9642583904,  0.6523686016, 0.3977456272, 0.1515232662};
    const auto a = sig(sd::Scheduler::Ays, 10);
    for (int i = 0; i < 10; ++i) CHECK_NEAR(a[i], sd1[i], 1e-6);
    const auto x = sig(sd::Scheduler::Ays, 10, sd::AysModel::Sdxl);
    CHECK_NEAR(x[1], 6.3184485287, 1e-6);
    CHECK_NEAR(x[9], 0.1114188177, 1e-6);
    // 20 steps: even entries land on the table, odd ones at the geometric mean of neighbours.
    const auto a20 = sig(sd::Scheduler::Ays, 20);
    for (int i = 0; i < 10; ++i) CHECK_NEAR(a20[2 * i], sd1[i], sd1[i] * 1e-5);
    CHECK_NEAR(a20[1], std::sqrt(sd1[0] * sd1[1]), 1e-4);
    CHECK_NEAR(a20[19], std::sqrt(0.1515232662 * 0.0291671582), 1e-5);

    // GITS (coefficient 1.20): 10 steps is its table row; 30 steps stretches the 20-step row.
    const auto g = sig(sd::Scheduler::Gits, 10);
    CHECK_NEAR(g[1], 5.85520077, 1e-6);
    CHECK_NEAR(g[9], 0.09824532, 1e-7);
    const auto g30 = sig(sd::Scheduler::Gits, 30);
    CHECK_NEAR(g30[0], 14.61464119, 1e-4);
    // its last non-zero level sits 2/3 of the way (x = 1/30 vs 1/20) from 0.0292 to 0.0982 in log space
    CHECK_NEAR(g30[29], 0.02916753 * std::pow(0.09824532 / 0.02916753, 2.0 / 3.0), 1e-5);
}

void reference_first_timestep() {
    // Every reference case's first UNet call got timestep 999: sigma_to_t(sigmas[0]) for
    // discrete (cat-euler, long-prompt, q8-eulera) and karras (fox-eulera-karras, wide-dpmpp2m).
    for (auto [s, n] : {std::pair{sd::Scheduler::Discrete, 4}, {sd::Scheduler::Discrete, 3},
                        {sd::Scheduler::Karras, 6}, {sd::Scheduler::Karras, 5}}) {
        CHECK_NEAR(table().sigma_to_t(sig(s, n)[0]), 999.0, 1e-3);
    }
}

void scalings() {
    const float s = 2.0f;
    const auto e = sd::denoiser_scalings(sd::Prediction::Eps, s);
    CHECK_NEAR(e.c_skip, 1.0, 0);
    CHECK_NEAR(e.c_out, -2.0, 0);
    CHECK_NEAR(e.c_in, 1.0 / std::sqrt(5.0), 1e-7);
    // v-prediction (k-diffusion CompVisVDenoiser): c_skip = 1/(s^2+1), c_out = -s/sqrt(s^2+1).
    const auto v = sd::denoiser_scalings(sd::Prediction::V, s);
    CHECK_NEAR(v.c_skip, 0.2, 1e-7);
    CHECK_NEAR(v.c_out, -2.0 / std::sqrt(5.0), 1e-7);
    CHECK_NEAR(v.c_in, 1.0 / std::sqrt(5.0), 1e-7);
    // A perfect v model (v = alpha eps - sigma_vp x0) gives back x0: x = x0 + s eps.
    const double x0 = 0.7, eps = -1.3, x = x0 + s * eps;
    const double a = 1 / std::sqrt(s * s + 1.0), sv = s / std::sqrt(s * s + 1.0);
    const double vv = a * eps - sv * x0;
    CHECK_NEAR(v.c_skip * x + v.c_out * vv, x0, 1e-6);
}

void edm_schedule() {
    // CosXL (stable-diffusion.cpp's EDMVDenoiser): sigma in [0.002, 120], UNet timestep 0.25 ln s,
    // timestep-stepping schedulers through exp(4 t / 1000), v scalings.
    const sd::NoiseSchedule e = sd::NoiseSchedule::edm();
    CHECK(e.kind() == sd::NoiseSchedule::Kind::Edm);
    CHECK_NEAR(e.sigma_min(), 0.002, 1e-9);
    CHECK_NEAR(e.sigma_max(), 120.0, 0);
    CHECK_NEAR(e.sigma_to_t(1.0f), 0.0, 0);
    CHECK_NEAR(e.sigma_to_t(120.0f), 0.25 * std::log(120.0), 1e-6);  // 1.19689
    CHECK_NEAR(e.sigma_to_t(0.002f), 0.25 * std::log(0.002), 1e-6);  // -1.55363: below 0, not clamped
    CHECK_NEAR(e.t_to_sigma(999.0f), std::exp(3.996), 1e-3);          // 54.3645
    CHECK_NEAR(e.t_to_sigma(0.0f), 1.0, 0);
    // exponential (the EDM default): log-uniform from 120 down to 0.002, then 0.
    const std::vector<float> x = sd::make_sigmas(sd::Scheduler::Exponential, 4, e);
    CHECK(x.size() == 5);
    const double want[] = {120.0, 3.0652375, 0.078297339};  // numpy: exp(linspace(ln 120, ln .002, 4))
    CHECK_NEAR(x[0], want[0], 1e-4);
    CHECK_NEAR(x[1], want[1], 1e-5);
    CHECK_NEAR(x[2], want[2], 1e-6);
    CHECK_NEAR(x[3], 0.002, 1e-8);
    CHECK_NEAR(x[4], 0.0, 0);
    // karras uses the range too; discrete steps through t_to_sigma.
    CHECK_NEAR(sd::make_sigmas(sd::Scheduler::Karras, 3, e)[0], 120.0, 1e-3);
    CHECK_NEAR(sd::make_sigmas(sd::Scheduler::Karras, 3, e)[2], 0.002, 1e-7);
    CHECK_NEAR(sd::make_sigmas(sd::Scheduler::Discrete, 2, e)[0], std::exp(3.996), 1e-3);
    CHECK_NEAR(sd::make_sigmas(sd::Scheduler::Discrete, 2, e)[1], 1.0, 0);
    const auto v = sd::denoiser_scalings(sd::Prediction::EdmV, 2.0f);
    CHECK_NEAR(v.c_skip, 0.2, 1e-7);
    CHECK_NEAR(v.c_out, -2.0 / std::sqrt(5.0), 1e-7);
    CHECK_THROWS_CODE(sd::NoiseSchedule::edm(1.0f, 0.5f), sd::ErrorCode::InvalidArgument);
}

void stored_table() {
    // A checkpoint's alphas_cumprod replaces the computed table (the reference's load_alphas_cumprod).
    std::vector<float> ac(sd::kTimesteps);
    for (int i = 0; i < sd::kTimesteps; ++i) ac[i] = table().alphas_cumprod(i);
    const sd::NoiseSchedule same(ac);
    CHECK(same.table_from_file());
    for (int t : {0, 1, 500, 999}) CHECK_NEAR(same.sigma(t), table().sigma(t), 0);
    // Zero terminal SNR (rescaled, diffusers' 2^-24 floor at the end): sigma_max ~4096.
    ac.back() = 1.0f / 16777216.0f;
    const sd::NoiseSchedule z(ac);
    CHECK_NEAR(z.sigma_max(), std::sqrt((1.0 - ac.back()) / ac.back()), 1e-2);
    CHECK_NEAR(z.sigma_to_t(z.sigma_max()), 999.0, 1e-4);
    CHECK_NEAR(sd::make_sigmas(sd::Scheduler::Karras, 4, z)[0], z.sigma_max(), 1e-1);
    // What cannot be used is said.
    CHECK(sd::NoiseSchedule::invalid_alphas_cumprod(ac).empty());
    ac[3] = 0.0f;
    CHECK(sd::NoiseSchedule::invalid_alphas_cumprod(ac).find("[3]") != std::string::npos);
    CHECK_THROWS_CODE(sd::NoiseSchedule{ac}, sd::ErrorCode::InvalidArgument);
    CHECK(!sd::NoiseSchedule::invalid_alphas_cumprod(std::vector<float>(999, 0.5f)).empty());
}

}  // namespace

int main() {
    discrete_table();
    shapes_for_every_scheduler();
    beta_schedule();
    discrete_and_friends();
    karras_exponential_klopt();
    ays_and_gits();
    reference_first_timestep();
    scalings();
    edm_schedule();
    stored_table();
    return sdtest::finish("schedule_test");
}
