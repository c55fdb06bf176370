#include "diffusion/denoiser.h"

#include "core/errors.h"

namespace sd {

namespace {

// [1, tokens, dim] x2 -> [2, tokens, dim] (same token count only).
HostTensor stack2(const HostTensor & a, const HostTensor & b) {
    HostTensor out;
    out.ne[0] = a.ne[0];
    out.ne[1] = a.ne[1];
    out.ne[2] = a.ne[2] * 2;
    out.data.reserve(a.data.size() * 2);
    out.data.insert(out.data.end(), a.data.begin(), a.data.end());
    out.data.insert(out.data.end(), b.data.begin(), b.data.end());
    return out;
}

}  // namespace

Denoiser::Denoiser(DenoiserInputs in, int latent_width, int latent_height, int latent_channels)
    : in_(in), n_(static_cast<size_t>(latent_width) * latent_height * latent_channels) {
    guided_ = in_.cfg_scale != 1.0f;
    if (!in_.unet || !in_.runner || !in_.schedule || !in_.cond) throw Error(ErrorCode::Internal, "denoiser inputs are incomplete");
    if (guided_ && !in_.uncond) throw Error(ErrorCode::Internal, "a guided denoiser needs the unconditional conditioning");
    batched_ = guided_ && in_.cond->context.ne[1] == in_.uncond->context.ne[1];
    const int batch = batched_ ? 2 : 1;
    input_.x.ne[0] = latent_width;
    input_.x.ne[1] = latent_height;
    input_.x.ne[2] = latent_channels;
    input_.x.ne[3] = batch;
    input_.x.data.resize(n_ * batch);
    input_.timesteps.resize(batch);
    input_.context = batched_ ? stack2(in_.cond->context, in_.uncond->context) : in_.cond->context;
    if (in_.concat) {
        input_.concat = *in_.concat;
        input_.concat.ne[3] = batch;
        if (batched_) input_.concat.data.insert(input_.concat.data.end(), in_.concat->data.begin(), in_.concat->data.end());
    }
}

void Denoiser::operator()(const float * x, float sigma, float * denoised, float * uncond) {
    const Scalings s = denoiser_scalings(in_.prediction, sigma);
    const float t = in_.schedule->sigma_to_t(sigma);
    const int batch = batched_ ? 2 : 1;
    for (int b = 0; b < batch; ++b) {
        for (size_t i = 0; i < n_; ++i) input_.x.data[b * n_ + i] = x[i] * s.c_in;
        input_.timesteps[b] = t;
    }
    const float cfg = in_.cfg_scale;
    std::vector<float> eps;
    std::vector<float> eps_uncond;  // the unconditional pass's output (guided runs)
    if (batched_) {
        const HostTensor o = in_.unet->forward(*in_.runner, input_);
        eps.resize(n_);
        for (size_t i = 0; i < n_; ++i) eps[i] = o.data[n_ + i] + cfg * (o.data[i] - o.data[n_ + i]);
        if (uncond) eps_uncond.assign(o.data.begin() + n_, o.data.begin() + 2 * n_);
    } else {
        input_.context = in_.cond->context;
        eps = in_.unet->forward(*in_.runner, input_).data;
        if (guided_) {
            input_.context = in_.uncond->context;
            const HostTensor ou = in_.unet->forward(*in_.runner, input_);
            if (uncond) eps_uncond = ou.data;
            for (size_t i = 0; i < n_; ++i) eps[i] = ou.data[i] + cfg * (eps[i] - ou.data[i]);
        } else if (uncond) {
            eps_uncond = eps;  // no unconditional pass: the conditional one, as sd.cpp
        }
    }
    for (size_t i = 0; i < n_; ++i) denoised[i] = eps[i] * s.c_out + x[i] * s.c_skip;
    if (uncond) {
        for (size_t i = 0; i < n_; ++i) uncond[i] = eps_uncond[i] * s.c_out + x[i] * s.c_skip;
    }
}

}  // namespace sd
