#include "components/taesd.h"

#include <string>

#include "core/errors.h"

namespace sd {

namespace {

constexpr int kBlocksPerStage = 3;
constexpr int kStages = 3;

std::string dims(const HostTensor & t) {
    return std::to_string(t.ne[3]) + "x" + std::to_string(t.ne[2]) + "x" + std::to_string(t.ne[1]) + "x" + std::to_string(t.ne[0]);
}

}  // namespace

Taesd::Taesd(const TensorSource & weights, TaesdParams params) : weights_(weights), params_(params) {
    if (params_.channels <= 0 || params_.z_channels <= 0 || params_.image_channels != 3) {
        throw_invalid("TAESD parameters out of range (channels " + std::to_string(params_.channels) + ", z_channels " +
                      std::to_string(params_.z_channels) + ", image channels " + std::to_string(params_.image_channels) + ")");
    }
}

ggml_tensor * Taesd::block(Graph & g, ggml_tensor * x, const std::string & prefix) const {
    ggml_tensor * h = ggml_relu_inplace(g.ctx, conv2d(g, x, prefix + ".conv.0", 1, 1));
    h = ggml_relu_inplace(g.ctx, conv2d(g, h, prefix + ".conv.2", 1, 1));
    // conv.4 + bias + x (the identity skip: every TAESD block keeps its width).
    return named(ggml_relu_inplace(g.ctx, conv2d(g, h, prefix + ".conv.4", 1, 1, x)), prefix);
}

ggml_tensor * Taesd::build_decoder(Graph & g, ggml_tensor * z) const {
    const std::string p = "decoder.layers.";
    // The reference's soft clamp of the latent: tanh(z / 3) * 3.
    ggml_tensor * h = ggml_scale(g.ctx, ggml_tanh(g.ctx, ggml_scale(g.ctx, z, 1.0f / 3.0f)), 3.0f);
    h = ggml_relu_inplace(g.ctx, conv2d(g, h, p + "0", 1, 1));  // layer 1 is the ReLU
    int index = 2;
    for (int stage = 0; stage < kStages; ++stage) {
        for (int b = 0; b < kBlocksPerStage; ++b) h = block(g, h, p + std::to_string(index++));
        h = ggml_upscale(g.ctx, h, 2, GGML_SCALE_MODE_NEAREST);  // nn.Upsample, its own index
        ++index;
        h = conv2d(g, h, p + std::to_string(index++), 1, 1);
    }
    h = block(g, h, p + std::to_string(index++));
    return named(conv2d(g, h, p + std::to_string(index), 1, 1), "taesd_image");
}

ggml_tensor * Taesd::build_encoder(Graph & g, ggml_tensor * image) const {
    const std::string p = "encoder.layers.";
    ggml_tensor * h = conv2d(g, image, p + "0", 1, 1);
    h = block(g, h, p + "1");
    int index = 2;
    for (int stage = 0; stage < kStages; ++stage) {
        h = conv2d(g, h, p + std::to_string(index++), 2, 1);
        for (int b = 0; b < kBlocksPerStage; ++b) h = block(g, h, p + std::to_string(index++));
    }
    h = conv2d(g, h, p + std::to_string(index), 1, 1);
    if (h->ne[2] != params_.z_channels) {
        throw Error(ErrorCode::ModelFormat, "the TAESD encoder gives " + std::to_string(h->ne[2]) + " channels; its decoder takes " +
                                                std::to_string(params_.z_channels));
    }
    return named(h, "taesd_latent");
}

HostTensor Taesd::decode(GraphRunner & runner, const HostTensor & latent, const VaeTiling & tiling) const {
    if (!can_decode()) throw Error(ErrorCode::UnsupportedModel, "this TAESD has no decoder");
    const int64_t w = latent.ne[0], h = latent.ne[1], c = latent.ne[2], n = latent.ne[3];
    if (w < 1 || h < 1 || n < 1 || c != params_.z_channels || static_cast<int64_t>(latent.data.size()) != latent.numel()) {
        throw_invalid("a latent for TAESD must be [N, " + std::to_string(params_.z_channels) + ", h, w]; received " + dims(latent));
    }
    auto run = [&](const HostTensor & z) {
        const std::string key = "taesd-decode:" + std::to_string(z.ne[0]) + "x" + std::to_string(z.ne[1]) + "x" + std::to_string(n);
        return runner.run(key, [&](GraphBuilder & b) {
            Graph g = component_graph(b, weights_, runner);
            return build_decoder(g, b.input_f32("z", z.data.data(), z.ne[0], z.ne[1], z.ne[2], z.ne[3]));
        });
    };
    if (!tiling.enabled) return run(latent);
    return run_tiled(latent, kUpscale, true, vae_tile_size(tiling, w, false), vae_tile_size(tiling, h, false), tiling.overlap, run,
                     [&] { return runner.aborted(); });
}

HostTensor Taesd::encode(GraphRunner & runner, const HostTensor & image, const VaeTiling & tiling) const {
    if (!can_encode()) throw Error(ErrorCode::UnsupportedModel, "this TAESD has no encoder");
    const int64_t w = image.ne[0], h = image.ne[1], c = image.ne[2], n = image.ne[3];
    if (c != 3 || n < 1 || w < kUpscale || h < kUpscale || w % kUpscale != 0 || h % kUpscale != 0 ||
        static_cast<int64_t>(image.data.size()) != image.numel()) {
        throw_invalid("an image for TAESD to encode must be [N, 3, H, W] with H and W positive multiples of 8; received " + dims(image));
    }
    auto run = [&](const HostTensor & x) {
        const std::string key = "taesd-encode:" + std::to_string(x.ne[0]) + "x" + std::to_string(x.ne[1]) + "x" + std::to_string(n);
        return runner.run(key, [&](GraphBuilder & b) {
            Graph g = component_graph(b, weights_, runner);
            return build_encoder(g, b.input_f32("image", x.data.data(), x.ne[0], x.ne[1], x.ne[2], x.ne[3]));
        });
    };
    if (!tiling.enabled) return run(image);
    return run_tiled(image, kUpscale, false, vae_tile_size(tiling, w / kUpscale, true), vae_tile_size(tiling, h / kUpscale, true),
                     tiling.overlap, run, [&] { return runner.aborted(); });
}

size_t Taesd::decode_compute_bytes(GraphRunner & runner, int64_t w, int64_t h) const {
    if (!can_decode()) throw Error(ErrorCode::UnsupportedModel, "this TAESD has no decoder");
    if (w < 1 || h < 1) throw_invalid("decode_compute_bytes: the latent size must be positive");
    return runner.measure([&](GraphBuilder & b) {
        Graph g = component_graph(b, weights_, runner);
        return build_decoder(g, b.input_f32("z", nullptr, w, h, params_.z_channels, 1));
    });
}

size_t Taesd::encode_compute_bytes(GraphRunner & runner, int64_t w, int64_t h) const {
    if (!can_encode()) throw Error(ErrorCode::UnsupportedModel, "this TAESD has no encoder");
    if (w < 1 || h < 1) throw_invalid("encode_compute_bytes: the image size must be positive");
    return runner.measure([&](GraphBuilder & b) {
        Graph g = component_graph(b, weights_, runner);
        return build_encoder(g, b.input_f32("image", nullptr, w, h, 3, 1));
    });
}

}  // namespace sd
