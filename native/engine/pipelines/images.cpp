// Images to latents and back, on their own: the VAE or TAESD encoder as img2img starts from and
// the decoder as generate() ends with, whole or in tiles. The checks here are the engine's side
// of the boundary (lib/model.ts checks the same limits first).
#include <cmath>
#include <string>

#include "core/errors.h"
#include "diffusion/rng.h"
#include "model/model.h"
#include "model/options.h"
#include "runtime/session.h"
#include "sd.h"

namespace sd {

namespace {

const Taesd & require_taesd(const Model & model) {
    if (!model.taesd()) throw_invalid("decoder 'taesd' needs a TAESD: pass `taesd` (the file's path) to loadModel");
    return *model.taesd();
}

// The image side a decoder works in multiples of (both are x8).
int codec_multiple(const Model & model, const Codec & codec) {
    return codec.decoder == Decoder::Taesd ? require_taesd(model).upscale() : model.vae().upscale();
}

}  // namespace

Codec resolve_codec(const Model & model, const CodecParams & params) {
    using namespace limits;
    Codec codec;
    if (params.decoder) {
        if (*params.decoder == "vae") {
            codec.decoder = Decoder::Vae;
        } else if (*params.decoder == "taesd") {
            codec.decoder = Decoder::Taesd;
            require_taesd(model);
        } else {
            throw_invalid("decoder must be \"vae\" or \"taesd\"; received \"" + *params.decoder + "\"");
        }
    }
    if (params.vae_tiling && params.vae_tiling_off) throw_invalid("vaeTiling must be true, false, \"auto\" or tile settings, not both on and off");
    codec.auto_tiling = !params.vae_tiling && !params.vae_tiling_off;
    if (params.memory_budget) {
        const double b = *params.memory_budget;
        if (!std::isfinite(b) || b < kVaeMemoryBudgetMin || b > kVaeMemoryBudgetMax || b != std::floor(b)) {
            throw_invalid("vaeMemoryBudget must be an integer number of bytes from 0 to 2^50; received " + std::to_string(b));
        }
        codec.memory_budget = static_cast<size_t>(b);
    }
    if (params.vae_tiling) {
        codec.tiling.enabled = true;
        if (const auto & t = params.vae_tiling->tile_size) {
            if (*t < kVaeTileSizeMin || *t > kVaeTileSizeMax) {
                throw_invalid("vaeTiling.tileSize must be an integer from " + std::to_string(kVaeTileSizeMin) + " to " +
                              std::to_string(kVaeTileSizeMax) + " (latent pixels); received " + std::to_string(*t));
            }
            codec.tiling.tile_size = *t;
        }
        if (const auto & o = params.vae_tiling->overlap) {
            if (!std::isfinite(*o) || *o < kVaeTileOverlapMin || *o > kVaeTileOverlapMax) {
                throw_invalid("vaeTiling.overlap must be a number from 0 to 0.5 (a fraction of the tile); received " +
                              std::to_string(*o));
            }
            codec.tiling.overlap = static_cast<float>(*o);
        }
    }
    return codec;
}

std::vector<uint8_t> decode_latent_rgb8(const Model & model, GraphRunner & runner, const HostTensor & latent,
                                        const Codec & codec) {
    const VaeTiling tiling = decode_tiling(model, runner, codec, latent.ne[0], latent.ne[1]);
    if (codec.decoder == Decoder::Taesd) {
        return image_to_rgb8(require_taesd(model).decode(runner, latent, tiling), PixelRange::ZeroToOne);
    }
    return image_to_rgb8(model.vae().decode(runner, latent, tiling), PixelRange::MinusOneToOne);
}

HostTensor encode_rgb8(const Model & model, GraphRunner & runner, const std::vector<uint8_t> & rgb, int width, int height,
                       Rng * noise, const Codec & codec) {
    const bool taesd = codec.decoder == Decoder::Taesd;
    // [1, 3, H, W]: the VAE takes [-1, 1] (x / 255 * 2 - 1), TAESD [0, 1] (x / 255), as the reference.
    HostTensor image = rgb8_to_image(rgb, width, height, 1);
    if (taesd) {
        const size_t plane = static_cast<size_t>(width) * height;
        for (size_t c = 0; c < 3; ++c)
            for (size_t i = 0; i < plane; ++i) image.data[c * plane + i] = float(rgb[i * 3 + c]) / 255.0f;
        return require_taesd(model).encode(runner, image, encode_tiling(model, runner, codec, width, height));
    }
    return model.vae().encode(runner, image, noise, encode_tiling(model, runner, codec, width, height));
}

size_t decode_compute_bytes(const Model & model, GraphRunner & runner, Decoder decoder, int64_t w, int64_t h) {
    if (decoder == Decoder::Taesd) return require_taesd(model).decode_compute_bytes(runner, w, h);
    return model.vae().decode_compute_bytes(runner, w, h);
}

size_t encode_compute_bytes(const Model & model, GraphRunner & runner, Decoder decoder, int64_t width, int64_t height) {
    if (decoder == Decoder::Taesd) return require_taesd(model).encode_compute_bytes(runner, width, height);
    return model.vae().encode_compute_bytes(runner, width, height);
}

VaeTiling decode_tiling(const Model & model, GraphRunner & runner, const Codec & codec, int64_t w, int64_t h) {
    VaeTiling t = codec.tiling;
    if (!t.enabled && codec.auto_tiling) t.enabled = decode_compute_bytes(model, runner, codec.decoder, w, h) > codec.memory_budget;
    return t;
}

VaeTiling encode_tiling(const Model & model, GraphRunner & runner, const Codec & codec, int64_t width, int64_t height) {
    VaeTiling t = codec.tiling;
    if (!t.enabled && codec.auto_tiling) {
        t.enabled = encode_compute_bytes(model, runner, codec.decoder, width, height) > codec.memory_budget;
    }
    return t;
}

HostTensor encode_image(Session & session, const std::vector<uint8_t> & pixels, int width, int height, int channels,
                        std::optional<uint64_t> seed, const std::string & rng, const std::atomic<bool> * abort,
                        const CodecParams & params) {
    using namespace limits;
    const Model & model = session.model();
    const Codec codec = resolve_codec(model, params);
    const int multiple = codec_multiple(model, codec);
    for (const auto & [name, v] : {std::pair{"width", width}, std::pair{"height", height}}) {
        if (v < kImageSideMin || v > kImageSideMax || v % multiple != 0) {
            throw_invalid(std::string("image ") + name + " must be a multiple of " + std::to_string(multiple) + " from " +
                          std::to_string(kImageSideMin) + " to " + std::to_string(kImageSideMax) + "; received " +
                          std::to_string(v));
        }
    }
    if (channels != 1 && channels != 3 && channels != 4) {
        throw_invalid("image channels must be 1, 3 or 4; received " + std::to_string(channels));
    }
    const size_t n = static_cast<size_t>(width) * height;
    if (pixels.size() != n * channels) {
        throw_invalid("image data must hold width * height * channels = " + std::to_string(n * channels) +
                      " bytes; received " + std::to_string(pixels.size()));
    }
    if (seed && static_cast<double>(*seed) > kSeedMax) throw_invalid("seed must be a safe integer");
    const RngKind kind = parse_rng_kind(rng);
    if (codec.decoder == Decoder::Taesd && !model.taesd()->can_encode()) {
        throw Error(ErrorCode::UnsupportedModel, "this TAESD file has no encoder (encoder.layers.*)");
    }
    // Interleaved RGB (gray fills all three channels, alpha is dropped).
    std::vector<uint8_t> rgb(n * 3);
    for (size_t i = 0; i < n; ++i)
        for (int c = 0; c < 3; ++c) rgb[i * 3 + c] = pixels[i * channels + (channels == 1 ? 0 : c)];
    GraphRunner & runner = session.runner();
    const ScopedAbort scoped(runner, abort);
    model.check_files_unchanged();
    std::unique_ptr<Rng> noise = seed && codec.decoder == Decoder::Vae ? make_rng(kind, *seed) : nullptr;
    return encode_rgb8(model, runner, rgb, width, height, noise.get(), codec);
}

std::vector<std::vector<uint8_t>> decode_latents(Session & session, const HostTensor & latents,
                                                 const std::atomic<bool> * abort, const CodecParams & params) {
    using namespace limits;
    const Model & model = session.model();
    const Codec codec = resolve_codec(model, params);
    const int64_t c = codec.decoder == Decoder::Taesd ? model.taesd()->params().z_channels : model.info().vae.z_channels;
    const int64_t up = codec_multiple(model, codec);
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
    if (codec.decoder == Decoder::Taesd && !model.taesd()->can_decode()) {
        throw Error(ErrorCode::UnsupportedModel, "this TAESD file has no decoder (decoder.layers.*)");
    }
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
        out.push_back(decode_latent_rgb8(model, runner, one, codec));
        if (abort && abort->load()) throw Error(ErrorCode::Aborted, "decodeLatents aborted");
    }
    return out;
}

}  // namespace sd
