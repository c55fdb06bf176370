#include "components/vae.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/errors.h"

namespace sd {

Vae::Vae(const TensorSource & weights, VaeParams params, float conv_scale)
    : weights_(weights), params_(std::move(params)), conv_scale_(conv_scale) {
    if (params_.channel_mult.empty() || params_.channel_mult.size() > 8 || params_.num_res_blocks < 0 ||
        params_.z_channels <= 0 || params_.scale_factor == 0.0f) {
        throw_invalid("VAE parameters out of range (levels " + std::to_string(params_.channel_mult.size()) +
                      ", num_res_blocks " + std::to_string(params_.num_res_blocks) + ", z_channels " +
                      std::to_string(params_.z_channels) + ")");
    }
}

ggml_tensor * Vae::build_decoder(Graph & g, ggml_tensor * z) const {
    g.conv_scale = conv_scale_;
    const int levels = static_cast<int>(params_.channel_mult.size());
    ggml_tensor * h = z;
    if (g.w.find("post_quant_conv.weight")) h = conv2d(g, h, "post_quant_conv", 1, 0);
    h = conv2d(g, h, "decoder.conv_in", 1, 1);

    h = vae_resblock(g, h, "decoder.mid.block_1");
    h = vae_attention(g, h, "decoder.mid.attn_1");
    h = vae_resblock(g, h, "decoder.mid.block_2");

    // LDM numbers the up path by resolution: up.{levels-1} runs first, on the smallest image.
    for (int level = levels - 1; level >= 0; --level) {
        const std::string prefix = "decoder.up." + std::to_string(level);
        for (int b = 0; b <= params_.num_res_blocks; ++b) {
            h = vae_resblock(g, h, prefix + ".block." + std::to_string(b));
        }
        if (level != 0) h = upsample(g, h, prefix + ".upsample");
    }

    return named(conv2d(g, group_norm(g, h, "decoder.norm_out", true), "decoder.conv_out", 1, 1), "vae_image");
}

ggml_tensor * Vae::build_encoder(Graph & g, ggml_tensor * image) const {
    g.conv_scale = conv_scale_;
    const int levels = static_cast<int>(params_.channel_mult.size());
    ggml_tensor * h = conv2d(g, image, "encoder.conv_in", 1, 1);
    for (int level = 0; level < levels; ++level) {
        const std::string prefix = "encoder.down." + std::to_string(level);
        for (int b = 0; b < params_.num_res_blocks; ++b) h = vae_resblock(g, h, prefix + ".block." + std::to_string(b));
        if (level != levels - 1) {
            // LDM's Downsample: pad right and bottom by one, then a 3x3 convolution, stride 2.
            h = ggml_pad(g.ctx, h, 1, 1, 0, 0);
            h = named(conv2d(g, h, prefix + ".downsample.conv", 2, 0), prefix + ".downsample");
        }
    }
    h = vae_resblock(g, h, "encoder.mid.block_1");
    h = vae_attention(g, h, "encoder.mid.attn_1");
    h = vae_resblock(g, h, "encoder.mid.block_2");
    h = conv2d(g, group_norm(g, h, "encoder.norm_out", true), "encoder.conv_out", 1, 1);
    if (g.w.find("quant_conv.weight")) h = conv2d(g, h, "quant_conv", 1, 0);
    if (h->ne[2] != 2 * params_.z_channels) {
        throw Error(ErrorCode::ModelFormat, "the VAE encoder gives " + std::to_string(h->ne[2]) + " channels; expected " +
                                                std::to_string(2 * params_.z_channels) + " (mean and log-variance)");
    }
    return named(h, "vae_moments");
}

HostTensor Vae::encode(GraphRunner & runner, const HostTensor & image, Rng * noise, const VaeTiling & tiling) const {
    if (!can_encode()) throw Error(ErrorCode::UnsupportedModel, "this VAE has no encoder");
    const int64_t w = image.ne[0], h = image.ne[1], c = image.ne[2], n = image.ne[3];
    const int f = upscale();
    if (c != 3 || n < 1 || w < f || h < f || w % f != 0 || h % f != 0 ||
        static_cast<int64_t>(image.data.size()) != image.numel()) {
        throw_invalid("an image to encode must be [N, 3, H, W] with H and W positive multiples of " + std::to_string(f) +
                      "; received " + std::to_string(n) + "x" + std::to_string(c) + "x" + std::to_string(h) + "x" +
                      std::to_string(w));
    }
    auto run = [&](const HostTensor & x) {
        const std::string key = "vae-encode:" + std::to_string(x.ne[0]) + "x" + std::to_string(x.ne[1]) + "x" + std::to_string(n);
        return runner.run(key, [&](GraphBuilder & b) {
            Graph g = component_graph(b, weights_, runner);
            return build_encoder(g, b.input_f32("image", x.data.data(), x.ne[0], x.ne[1], x.ne[2], x.ne[3]));
        });
    };
    const HostTensor moments = tiling.enabled ? run_tiled(image, f, false, vae_tile_size(tiling, w / f, true),
                                                          vae_tile_size(tiling, h / f, true), tiling.overlap, run,
                                                          [&] { return runner.aborted(); })
                                              : run(image);
    // moments per image: z_channels planes of mean, then z_channels of log-variance.
    const int64_t zc = params_.z_channels, plane = moments.ne[0] * moments.ne[1];
    HostTensor latent;
    latent.ne[0] = moments.ne[0];
    latent.ne[1] = moments.ne[1];
    latent.ne[2] = zc;
    latent.ne[3] = n;
    latent.data.resize(static_cast<size_t>(latent.numel()));
    std::vector<float> eps(static_cast<size_t>(zc * plane));
    for (int64_t i = 0; i < n; ++i) {
        if (noise) noise->randn(eps.data(), eps.size());
        const float * mean = moments.data.data() + i * 2 * zc * plane;
        const float * logvar = mean + zc * plane;
        float * out = latent.data.data() + i * zc * plane;
        for (int64_t k = 0; k < zc * plane; ++k) {
            const float lv = std::min(std::max(logvar[k], -30.0f), 20.0f);
            const float z = noise ? mean[k] + std::exp(0.5f * lv) * eps[static_cast<size_t>(k)] : mean[k];
            out[k] = z * params_.scale_factor;
        }
    }
    return latent;
}

HostTensor Vae::decode(GraphRunner & runner, const HostTensor & latent, const VaeTiling & tiling) const {
    if (!can_decode()) throw Error(ErrorCode::UnsupportedModel, "this VAE has no decoder");
    const int64_t w = latent.ne[0], h = latent.ne[1], c = latent.ne[2], n = latent.ne[3];
    if (w < 1 || h < 1 || n < 1 || latent.ne[3] < 1) {
        throw_invalid("latent to decode is empty (" + std::to_string(w) + "x" + std::to_string(h) + ", batch " +
                      std::to_string(n) + ")");
    }
    if (c != params_.z_channels) {
        throw_invalid("latent has " + std::to_string(c) + " channels; this VAE decodes " +
                      std::to_string(params_.z_channels));
    }
    if (static_cast<int64_t>(latent.data.size()) != latent.numel()) {
        throw_invalid("latent buffer does not hold as many floats as its shape says");
    }
    // Host scaling, as stable-diffusion.cpp: multiply by the reciprocal.
    HostTensor z = latent;
    const float inv = 1.0f / params_.scale_factor;
    for (float & v : z.data) v *= inv;

    auto run = [&](const HostTensor & t) {
        const std::string key = "vae-decode:" + std::to_string(t.ne[0]) + "x" + std::to_string(t.ne[1]) + "x" + std::to_string(n);
        return runner.run(key, [&](GraphBuilder & b) {
            Graph g = component_graph(b, weights_, runner);
            return build_decoder(g, b.input_f32("z", t.data.data(), t.ne[0], t.ne[1], t.ne[2], t.ne[3]));
        });
    };
    if (!tiling.enabled) return run(z);
    return run_tiled(z, upscale(), true, vae_tile_size(tiling, w, false), vae_tile_size(tiling, h, false), tiling.overlap, run,
                     [&] { return runner.aborted(); });
}

size_t Vae::decode_compute_bytes(GraphRunner & runner, int64_t w, int64_t h) const {
    if (!can_decode()) throw Error(ErrorCode::UnsupportedModel, "this VAE has no decoder");
    if (w < 1 || h < 1) throw_invalid("decode_compute_bytes: the latent size must be positive");
    return runner.measure([&](GraphBuilder & b) {
        Graph g = component_graph(b, weights_, runner);
        return build_decoder(g, b.input_f32("z", nullptr, w, h, params_.z_channels, 1));
    });
}

size_t Vae::encode_compute_bytes(GraphRunner & runner, int64_t w, int64_t h) const {
    if (!can_encode()) throw Error(ErrorCode::UnsupportedModel, "this VAE has no encoder");
    if (w < 1 || h < 1) throw_invalid("encode_compute_bytes: the image size must be positive");
    return runner.measure([&](GraphBuilder & b) {
        Graph g = component_graph(b, weights_, runner);
        return build_encoder(g, b.input_f32("image", nullptr, w, h, 3, 1));
    });
}

HostTensor rgb8_to_image(const std::vector<uint8_t> & rgb, int64_t width, int64_t height, int64_t count) {
    if (width < 1 || height < 1 || count < 1 || static_cast<int64_t>(rgb.size()) != width * height * 3 * count) {
        throw_invalid("rgb8_to_image: " + std::to_string(rgb.size()) + " bytes are not " + std::to_string(count) + " RGB images of " +
                      std::to_string(width) + "x" + std::to_string(height));
    }
    HostTensor image;
    image.ne[0] = width;
    image.ne[1] = height;
    image.ne[2] = 3;
    image.ne[3] = count;
    image.data.resize(static_cast<size_t>(image.numel()));
    for (int64_t i = 0; i < count; ++i)
        for (int64_t p = 0; p < width * height; ++p)
            for (int64_t ch = 0; ch < 3; ++ch)
                image.data[static_cast<size_t>(((i * 3 + ch) * height) * width + p)] =
                    rgb[static_cast<size_t>((i * width * height + p) * 3 + ch)] / 255.0f * 2.0f - 1.0f;
    return image;
}

std::vector<uint8_t> image_to_rgb8(const HostTensor & image, PixelRange range) {
    const int64_t w = image.ne[0], h = image.ne[1], c = image.ne[2], n = image.ne[3];
    if (c != 3 || static_cast<int64_t>(image.data.size()) != image.numel()) {
        throw_invalid("image_to_rgb8 needs [N, 3, H, W]; received " + std::to_string(c) + " channels");
    }
    std::vector<uint8_t> out(static_cast<size_t>(n * h * w * 3));
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t ch = 0; ch < 3; ++ch) {
            const float * plane = image.data.data() + ((i * 3 + ch) * h) * w;
            for (int64_t p = 0; p < h * w; ++p) {
                const float x = range == PixelRange::MinusOneToOne ? (plane[p] + 1.0f) * 0.5f : plane[p];
                const float v = std::min(std::max(x, 0.0f), 1.0f);
                out[static_cast<size_t>((i * h * w + p) * 3 + ch)] = static_cast<uint8_t>(v * 255.0f);
            }
        }
    }
    return out;
}

}  // namespace sd
