#include "pipelines/sampling.h"

#include "core/errors.h"

namespace sd {

std::vector<float> sample_latent(const SamplingPlan & plan, const Denoise & denoise, size_t n,
                                 const std::vector<float> & init_latent, Rng & noise, Rng * ancestral,
                                 const StepHook & on_step) {
    if (plan.sigmas.size() < 2) throw Error(ErrorCode::Internal, "a sampling plan needs at least one step");
    if (!init_latent.empty() && init_latent.size() != n) {
        throw Error(ErrorCode::Internal, "the initial latent does not have the latent's size");
    }
    if (!plan.add_noise) {
        if (init_latent.empty()) throw Error(ErrorCode::Internal, "a plan without noise needs a latent to start from");
        std::vector<float> x = init_latent;
        sample(plan.sampler, denoise, x.data(), n, plan.sigmas, ancestral ? ancestral : &noise, plan.eta, on_step, plan.params);
        return x;
    }
    std::vector<float> x(n);
    noise.randn(x.data(), n);
    const float sigma0 = plan.sigmas[0];
    if (init_latent.empty()) {
        for (float & v : x) v *= sigma0;
    } else {
        for (size_t i = 0; i < n; ++i) x[i] = init_latent[i] + x[i] * sigma0;
    }
    sample(plan.sampler, denoise, x.data(), n, plan.sigmas, ancestral ? ancestral : &noise, plan.eta, on_step, plan.params);
    return x;
}

}  // namespace sd
