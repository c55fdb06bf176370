#include "diffusion/denoiser.h"

#include "core/errors.h"

namespace sd {

namespace {

// Tensors of one batch item each -> one tensor of them all along ne[3] (or ne[2] for contexts).
HostTensor stack(const std::vector<const HostTensor *> & items, int batch_dim) {
    HostTensor out = *items.front();
    out.ne[batch_dim] = 0;
    out.data.clear();
    for (const HostTensor * t : items) {
        out.ne[batch_dim] += t->ne[batch_dim];
        out.data.insert(out.data.end(), t->data.begin(), t->data.end());
    }
    return out;
}

}  // namespace

Denoiser::Denoiser(DenoiserInputs in, int latent_width, int latent_height, int latent_channels)
    : in_(in), n_(static_cast<size_t>(latent_width) * latent_height * latent_channels) {
    if (!in_.unet || !in_.runner || !in_.schedule || !in_.cond) throw Error(ErrorCode::Internal, "denoiser inputs are incomplete");
    if ((in_.use_uncond || in_.use_img_uncond) && !in_.uncond) {
        throw Error(ErrorCode::Internal, "an unconditional pass needs the negative prompt's conditioning");
    }
    if (in_.use_img_uncond && in_.concat && !in_.img_uncond_concat) {
        throw Error(ErrorCode::Internal, "image guidance needs the unconditional image channels");
    }
    auto vector_of = [](const Conditioning * c) { return c->vector.data.empty() ? nullptr : &c->vector; };
    passes_.push_back({&in_.cond->context, in_.concat, vector_of(in_.cond)});
    if (in_.use_uncond) passes_.push_back({&in_.uncond->context, in_.concat, vector_of(in_.uncond)});
    if (in_.use_img_uncond) passes_.push_back({&in_.uncond->context, in_.img_uncond_concat, vector_of(in_.uncond)});
    batched_ = true;
    for (const Pass & p : passes_) batched_ = batched_ && p.context->ne[1] == passes_.front().context->ne[1];
    const int batch = batched_ ? static_cast<int>(passes_.size()) : 1;
    input_.x.ne[0] = latent_width;
    input_.x.ne[1] = latent_height;
    input_.x.ne[2] = latent_channels;
    input_.x.ne[3] = batch;
    input_.x.data.resize(n_ * batch);
    input_.timesteps.resize(batch);
    if (batched_) {
        std::vector<const HostTensor *> contexts, concats, vectors;
        for (const Pass & p : passes_) {
            contexts.push_back(p.context);
            if (p.concat) concats.push_back(p.concat);
            if (p.vector) vectors.push_back(p.vector);
        }
        input_.context = stack(contexts, 2);
        if (!concats.empty()) input_.concat = stack(concats, 3);
        if (!vectors.empty()) input_.y = stack(vectors, 1);
    }
}

std::vector<HostTensor> Denoiser::control_residuals(const UnetInput & in, float sigma) const {
    std::vector<HostTensor> sum;
    for (const DenoiserControl & c : in_.controls) {
        if (!(sigma <= c.sigma_high && sigma > c.sigma_low)) continue;
        std::vector<HostTensor> r = c.net->forward(*in_.runner, in, *c.guided_hint, c.strength);
        if (sum.empty()) {
            sum = std::move(r);
            continue;
        }
        for (size_t i = 0; i < sum.size() && i < r.size(); ++i) {
            for (size_t j = 0; j < sum[i].data.size(); ++j) sum[i].data[j] += r[i].data[j];
        }
    }
    return sum;
}

void Denoiser::operator()(const float * x, float sigma, float * denoised, float * uncond) {
    const Scalings s = denoiser_scalings(in_.prediction, sigma);
    const float t = in_.schedule->sigma_to_t(sigma);
    const int batch = static_cast<int>(input_.x.ne[3]);
    for (int b = 0; b < batch; ++b) {
        for (size_t i = 0; i < n_; ++i) input_.x.data[b * n_ + i] = x[i] * s.c_in;
        input_.timesteps[b] = t;
    }
    // outs[k]: the UNet output of pass k.
    std::vector<const float *> outs(passes_.size());
    HostTensor batched;
    std::vector<HostTensor> single(passes_.size());
    if (batched_) {
        input_.control.clear();
        input_.control = control_residuals(input_, sigma);
        batched = in_.unet->forward(*in_.runner, input_);
        for (size_t k = 0; k < passes_.size(); ++k) outs[k] = batched.data.data() + k * n_;
    } else {
        for (size_t k = 0; k < passes_.size(); ++k) {
            input_.context = *passes_[k].context;
            if (passes_[k].concat) input_.concat = *passes_[k].concat;
            if (passes_[k].vector) input_.y = *passes_[k].vector;
            input_.control.clear();
            input_.control = control_residuals(input_, sigma);
            single[k] = in_.unet->forward(*in_.runner, input_);
            outs[k] = single[k].data.data();
        }
    }
    const float cfg = in_.cfg_scale, img_cfg = in_.image_cfg_scale;
    const float * oc = outs[0];
    const float * ou = in_.use_uncond ? outs[1] : nullptr;
    const float * oi = in_.use_img_uncond ? outs.back() : nullptr;
    for (size_t i = 0; i < n_; ++i) {
        float e = oc[i];
        if (ou && oi) e = oi[i] + img_cfg * (ou[i] - oi[i]) + cfg * (oc[i] - ou[i]);
        else if (ou) e = ou[i] + cfg * (oc[i] - ou[i]);
        else if (oi) e = oi[i] + cfg * (oc[i] - oi[i]);
        denoised[i] = e * s.c_out + x[i] * s.c_skip;
    }
    if (uncond) {
        const float * base = oi ? oi : (ou ? ou : oc);
        for (size_t i = 0; i < n_; ++i) uncond[i] = base[i] * s.c_out + x[i] * s.c_skip;
    }
}

}  // namespace sd
