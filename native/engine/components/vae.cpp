#include "components/vae.h"

#include <algorithm>
#include <string>

#include "core/errors.h"

namespace sd {

VaeDecoder::VaeDecoder(const TensorSource & weights, VaeParams params) : weights_(weights), params_(std::move(params)) {
    if (params_.channel_mult.empty() || params_.channel_mult.size() > 8 || params_.num_res_blocks < 0 ||
        params_.z_channels <= 0 || params_.scale_factor == 0.0f) {
        throw_invalid("VAE parameters out of range (levels " + std::to_string(params_.channel_mult.size()) +
                      ", num_res_blocks " + std::to_string(params_.num_res_blocks) + ", z_channels " +
                      std::to_string(params_.z_channels) + ")");
    }
}

ggml_tensor * VaeDecoder::build_decoder(Graph & g, ggml_tensor * z) const {
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

HostTensor VaeDecoder::decode(GraphRunner & runner, const HostTensor & latent) const {
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
    std::vector<float> z(latent.data);
    const float inv = 1.0f / params_.scale_factor;
    for (float & v : z) v *= inv;

    const std::string key = "vae-decode:" + std::to_string(w) + "x" + std::to_string(h) + "x" + std::to_string(n);
    return runner.run(key, [&](GraphBuilder & b) {
        Graph g{b.ctx(), weights_, ops::graph_kernels(runner.backend(), weights_)};
        return build_decoder(g, b.input_f32("z", z.data(), w, h, c, n));
    });
}

std::vector<uint8_t> image_to_rgb8(const HostTensor & image) {
    const int64_t w = image.ne[0], h = image.ne[1], c = image.ne[2], n = image.ne[3];
    if (c != 3 || static_cast<int64_t>(image.data.size()) != image.numel()) {
        throw_invalid("image_to_rgb8 needs [N, 3, H, W]; received " + std::to_string(c) + " channels");
    }
    std::vector<uint8_t> out(static_cast<size_t>(n * h * w * 3));
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t ch = 0; ch < 3; ++ch) {
            const float * plane = image.data.data() + ((i * 3 + ch) * h) * w;
            for (int64_t p = 0; p < h * w; ++p) {
                const float v = std::min(std::max((plane[p] + 1.0f) * 0.5f, 0.0f), 1.0f);
                out[static_cast<size_t>((i * h * w + p) * 3 + ch)] = static_cast<uint8_t>(v * 255.0f);
            }
        }
    }
    return out;
}

}  // namespace sd
