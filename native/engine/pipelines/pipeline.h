// Text-to-image: encode → sample → decode, the whole loop native, as stable-diffusion.cpp runs it.
//
//   cond, uncond = text_encoder(prompt), text_encoder(negative prompt)      [1, tokens, dim]
//   for image i (seed + i):
//     x = randn(seed + i) * sigmas[0]                                      [1, C, h, w]
//     x = sampler(D, x, sigmas)   with D(x, sigma) = c_skip x + c_out (uncond + cfg (cond - uncond)),
//                                 each UNet output evaluated on (c_in x, t(sigma), context)
//     image = vae.decode(x)                                                [1, 3, 8h, 8w]
#pragma once
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "runtime/graph-runner.h"
#include "model/model.h"
#include "diffusion/rng.h"
#include "diffusion/samplers.h"
#include "diffusion/schedule.h"

namespace sd {

struct GenerateParams {
    std::string prompt;
    std::string negative_prompt;
    int width = 512;
    int height = 512;
    int steps = 20;
    float cfg_scale = 7.0f;
    Sampler sampler = kDefaultSampler;
    std::optional<Scheduler> scheduler;  // nullopt: the sampler's default
    uint64_t seed = 42;
    RngKind rng = RngKind::Cuda;
    // The generator of ancestral samplers' noise: nullopt continues the initial-noise generator
    // (stable-diffusion.cpp's default); another kind gets its own generator seeded with the seed.
    std::optional<RngKind> sampler_rng;
    int clip_skip = 0;                   // 0: the architecture's default
    int batch = 1;
    float eta = NAN;                     // NaN: the sampler's default
    bool return_latents = false;
};

struct GeneratedImage {
    std::vector<uint8_t> rgb;   // height * width * 3
    uint64_t seed = 0;
    std::vector<float> latent;  // [C][h][w], only with return_latents
};

struct GenerateTimings {
    double text_encode_ms = 0, sampling_ms = 0, vae_decode_ms = 0, total_ms = 0;
};

struct GenerateOutput {
    std::vector<GeneratedImage> images;
    GenerateTimings timings;
    Scheduler scheduler = Scheduler::Discrete;  // what was used
    float eta = 0;                              // what was used
    int latent_channels = 4, latent_width = 0, latent_height = 0;
};

struct StepProgress {
    int step;    // 1-based, across the whole batch
    int steps;   // steps * batch
    double elapsed_ms;
};

// Checks what a graph would otherwise assert on; throws InvalidArgument naming the value.
void check_generate_params(const Model & model, const GenerateParams & params);

// Runs a whole generation. `abort` is checked between steps and inside graph computation (throws
// Aborted); `progress` is called once per sampling step, in order, on this thread.
GenerateOutput generate(const Model & model, GraphRunner & runner, const GenerateParams & params,
                        const std::atomic<bool> * abort, const std::function<void(const StepProgress &)> & progress);

// The text-encoder layer from the end that `clip_skip` (0: the architecture's default) means
// for this model. Throws InvalidArgument when an explicit value exceeds the layer count.
int effective_clip_skip(const Model & model, int clip_skip);

// The conditioning of one prompt: [1, chunks * 77, dim].
HostTensor encode_text(const Model & model, GraphRunner & runner, const std::string & prompt, int clip_skip);

}  // namespace sd
