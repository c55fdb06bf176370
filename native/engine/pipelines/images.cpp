// Images to latents and back, on their own: the VAE encoder as img2img starts from and the
// decoder as generate() ends with. The checks here are the engine's side of the boundary
// (lib/model.ts checks the same limits first).
#include <string>

#include "core/errors.h"
#include "diffusion/rng.h"
#include "model/model.h"
#include "model/options.h"
#include "pipelines/image-tensors.h"
#include "runtime/session.h"
#include "sd.h"

namespace sd {

HostTensor encode_image(Session & session, const std::vector<uint8_t> & pixels, int width, int height, int channels,
                        std::optional<uint64_t> seed, const std::string & rng, const std::atomic<bool> * abort) {
    using namespace limits;
    const Model & model = session.model();
    const int multiple = model.vae().upscale();
    for (const auto & [name, v] : {std::pair{"width", width}, std::pair{"height", height}}) {
        if (v < kImageSideMin || v > kImageSideMax || v % multiple != 0) {
            throw_invalid(std::string("image ") + name + " must be a multiple of " + std::to_string(multiple) + " from " +
                          std::to_string(kImageSideMin) + " to " + std::to_string(kImageSideMax) + "; received " +
                          std::to_string(v));
        }
    }
    if (seed && static_cast<double>(*seed) > kSeedMax) throw_invalid("seed must be a safe integer");
    const RngKind kind = parse_rng_kind(rng);
    ImageBytes bytes{pixels, width, height, channels};
    check_image_bytes("image", bytes, width, height, false);
    // [1, 3, H, W] in [-1, 1], as stable-diffusion.cpp scales 8-bit pixels (gray fills all three).
    HostTensor image = image_bytes_to_unit(bytes);
    unit_to_signed(image);
    GraphRunner & runner = session.runner();
    const ScopedAbort scoped(runner, abort);
    model.check_files_unchanged();
    std::unique_ptr<Rng> noise = seed ? make_rng(kind, *seed) : nullptr;
    return model.vae().encode(runner, image, noise.get());
}

std::vector<std::vector<uint8_t>> decode_latents(Session & session, const HostTensor & latents,
                                                 const std::atomic<bool> * abort) {
    using namespace limits;
    const Model & model = session.model();
    const int64_t c = model.info().vae.z_channels, up = model.vae().upscale();
    if (latents.ne[2] != c) throw_invalid("latents must have " + std::to_string(c) + " channels; received " + std::to_string(latents.ne[2]));
    for (const auto & [name, v] : {std::pair{"width", latents.ne[0]}, std::pair{"height", latents.ne[1]}}) {
        if (v < 1 || v * up > kImageSideMax) {
            throw_invalid(std::string("latent ") + name + " must be from 1 to " + std::to_string(kImageSideMax / up) +
                          "; received " + std::to_string(v));
        }
    }
    if (latents.ne[3] < 1 || latents.ne[3] > kBatchMax) {
        throw_invalid("latents must hold from 1 to " + std::to_string(kBatchMax) + " images; received " + std::to_string(latents.ne[3]));
    }
    const size_t per = static_cast<size_t>(latents.ne[0] * latents.ne[1] * c);
    if (latents.data.size() != per * latents.ne[3]) throw Error(ErrorCode::Internal, "latents data does not match their shape");
    GraphRunner & runner = session.runner();
    const ScopedAbort scoped(runner, abort);
    model.check_files_unchanged();
    std::vector<std::vector<uint8_t>> out;
    // One image at a time, as generate() decodes (the same compute graph, the same bytes).
    for (int64_t b = 0; b < latents.ne[3]; ++b) {
        HostTensor one;
        one.ne[0] = latents.ne[0];
        one.ne[1] = latents.ne[1];
        one.ne[2] = c;
        one.ne[3] = 1;
        one.data.assign(latents.data.begin() + b * per, latents.data.begin() + (b + 1) * per);
        out.push_back(image_to_rgb8(model.vae().decode(runner, one)));
        if (abort && abort->load()) throw Error(ErrorCode::Aborted, "decodeLatents aborted");
    }
    return out;
}

}  // namespace sd
