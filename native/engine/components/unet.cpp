#include "components/unet.h"

#include <string>

#include "core/errors.h"
#include "text/tokenizer.h"

namespace sd {

namespace {

std::string at(const char * part, int index) { return std::string(part) + "." + std::to_string(index); }

}  // namespace

Unet::Unet(const TensorSource & weights, UnetParams params) : weights_(weights), params_(std::move(params)) {
    const size_t levels = params_.channel_mult.size();
    if (levels == 0 || params_.num_res_blocks.size() != levels || params_.transformer_depth.size() != levels) {
        throw_invalid("UNet parameters need channel_mult, num_res_blocks and transformer_depth per level; got " +
                      std::to_string(levels) + ", " + std::to_string(params_.num_res_blocks.size()) + " and " +
                      std::to_string(params_.transformer_depth.size()) + " entries");
    }
    if (params_.model_channels <= 0 || params_.in_channels <= 0 || params_.context_dim <= 0 || levels > 8) {
        throw_invalid("UNet parameters out of range (model_channels " + std::to_string(params_.model_channels) +
                      ", in_channels " + std::to_string(params_.in_channels) + ", levels " + std::to_string(levels) + ")");
    }
    for (size_t i = 0; i < levels; ++i) {
        const int ch = params_.model_channels * params_.channel_mult[i];
        if (params_.channel_mult[i] <= 0 || params_.num_res_blocks[i] < 0 || params_.transformer_depth[i] < 0) {
            throw_invalid("UNet level " + std::to_string(i) + " has a negative or zero size");
        }
        if (params_.transformer_depth[i] > 0 && heads_at(ch) <= 0) {
            throw_invalid("UNet level " + std::to_string(i) + ": " + std::to_string(ch) +
                          " channels do not split into attention heads");
        }
    }
}

int Unet::spatial_multiple() const { return 1 << (static_cast<int>(params_.channel_mult.size()) - 1); }

int Unet::heads_at(int channels) const {
    if (params_.num_head_channels > 0) {
        return channels % params_.num_head_channels == 0 ? channels / params_.num_head_channels : -1;
    }
    return params_.num_heads > 0 && channels % params_.num_heads == 0 ? params_.num_heads : -1;
}

void Unet::check_inputs(const int64_t x_ne[4], size_t timesteps, const int64_t context_ne[4]) const {
    const int64_t w = x_ne[0], h = x_ne[1], c = x_ne[2], n = x_ne[3];
    const int m = spatial_multiple();
    if (n < 1) throw_invalid("UNet batch must be at least 1; received " + std::to_string(n));
    if (c != params_.in_channels) {
        throw_invalid("UNet input has " + std::to_string(c) + " channels; this model takes " +
                      std::to_string(params_.in_channels));
    }
    if (w < 1 || h < 1 || w % m != 0 || h % m != 0) {
        throw_invalid("latent size " + std::to_string(w) + "x" + std::to_string(h) + " must be positive multiples of " +
                      std::to_string(m) + " (image size multiples of " + std::to_string(m * 8) + ")");
    }
    if (timesteps != static_cast<size_t>(n)) {
        throw_invalid("UNet needs one timestep per batch item (" + std::to_string(n) + "); received " +
                      std::to_string(timesteps));
    }
    if (context_ne[0] != params_.context_dim) {
        throw_invalid("context width " + std::to_string(context_ne[0]) + " does not match the UNet's context_dim " +
                      std::to_string(params_.context_dim));
    }
    if (context_ne[1] < 1 || context_ne[1] % kClipChunkLength != 0) {
        throw_invalid("context token count " + std::to_string(context_ne[1]) + " must be a positive multiple of 77");
    }
    if (context_ne[2] != n || context_ne[3] != 1) {
        throw_invalid("context batch " + std::to_string(context_ne[2]) + " does not match the latent batch " +
                      std::to_string(n));
    }
}

ggml_tensor * Unet::build(Graph & g, ggml_tensor * x, ggml_tensor * timesteps, ggml_tensor * context) const {
    const UnetParams & p = params_;
    const int levels = static_cast<int>(p.channel_mult.size());

    ggml_tensor * emb = timestep_embedding(g.ctx, timesteps, p.model_channels);  // [N, model_channels]
    emb = linear(g, emb, "time_embed.0");
    emb = named(linear(g, ggml_silu(g.ctx, emb), "time_embed.2"), "time_embed");  // [N, time_embed_dim]

    // Input side: every block's output is kept for the matching output block.
    std::vector<ggml_tensor *> skips;
    ggml_tensor * h = named(conv2d(g, x, "input_blocks.0.0", 1, 1), "input_blocks.0");
    skips.push_back(h);
    int block = 1;
    for (int level = 0; level < levels; ++level) {
        const int ch = p.model_channels * p.channel_mult[level];
        for (int r = 0; r < p.num_res_blocks[level]; ++r, ++block) {
            const std::string prefix = at("input_blocks", block);
            h = unet_resblock(g, h, emb, prefix + ".0");
            if (p.transformer_depth[level] > 0) {
                h = spatial_transformer(g, h, context, prefix + ".1", heads_at(ch), p.transformer_depth[level]);
            }
            skips.push_back(named(h, prefix));
        }
        if (level != levels - 1) {
            h = unet_downsample(g, h, at("input_blocks", block) + ".0");
            skips.push_back(named(h, at("input_blocks", block)));
            ++block;
        }
    }

    if (p.has_middle_block) {
        const int ch = p.model_channels * p.channel_mult.back();
        h = unet_resblock(g, h, emb, "middle_block.0");
        int next = 1;
        if (p.transformer_depth_middle > 0) {
            h = spatial_transformer(g, h, context, "middle_block.1", heads_at(ch), p.transformer_depth_middle);
            next = 2;
        }
        h = unet_resblock(g, h, emb, at("middle_block", next));
        h = named(h, "middle_block");
    }

    // Output side: one more res block per level than the input side, each on [h, skip].
    block = 0;
    for (int level = levels - 1; level >= 0; --level) {
        const int ch = p.model_channels * p.channel_mult[level];
        for (int r = 0; r <= p.num_res_blocks[level]; ++r, ++block) {
            const std::string prefix = at("output_blocks", block);
            if (skips.empty()) throw Error(ErrorCode::Internal, "UNet skip connections ran out at " + prefix);
            h = ggml_concat(g.ctx, h, skips.back(), 2);
            skips.pop_back();
            h = unet_resblock(g, h, emb, prefix + ".0");
            int next = 1;
            if (p.transformer_depth[level] > 0) {
                h = spatial_transformer(g, h, context, prefix + ".1", heads_at(ch), p.transformer_depth[level]);
                next = 2;
            }
            if (level > 0 && r == p.num_res_blocks[level]) h = upsample(g, h, prefix + "." + std::to_string(next));
            h = named(h, prefix);
        }
    }

    return named(conv2d(g, group_norm(g, h, "out.0", true), "out.2", 1, 1), "unet_out");
}

HostTensor Unet::forward(GraphRunner & runner, const HostTensor & x, const std::vector<float> & timesteps,
                         const HostTensor & context) const {
    check_inputs(x.ne, timesteps.size(), context.ne);
    if (static_cast<int64_t>(x.data.size()) != x.numel() || static_cast<int64_t>(context.data.size()) != context.numel()) {
        throw_invalid("UNet input buffers do not hold as many floats as their shapes say");
    }
    const std::string key = "unet:" + std::to_string(x.ne[0]) + "x" + std::to_string(x.ne[1]) + "x" +
                            std::to_string(x.ne[3]) + ":" + std::to_string(context.ne[1]);
    return runner.run(key, [&](GraphBuilder & b) {
        Graph g{b.ctx(), weights_, ops::graph_kernels(runner.backend(), weights_)};
        ggml_tensor * xt = b.input_f32("x", x.data.data(), x.ne[0], x.ne[1], x.ne[2], x.ne[3]);
        ggml_tensor * tt = b.input_f32("timesteps", timesteps.data(), static_cast<int64_t>(timesteps.size()));
        ggml_tensor * ct = b.input_f32("context", context.data.data(), context.ne[0], context.ne[1], context.ne[2]);
        return build(g, xt, ggml_reshape_1d(g.ctx, tt, ggml_nelements(tt)), ggml_reshape_3d(g.ctx, ct, ct->ne[0], ct->ne[1], ct->ne[2]));
    });
}

}  // namespace sd
