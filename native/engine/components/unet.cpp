#include "components/unet.h"

#include <algorithm>
#include <string>

#include "core/errors.h"
#include "text/tokenizer.h"

namespace sd {

namespace {

// The transformer depth of one block: distilled SDXL UNets (SSD-1B, Vega) drop transformer layers
// (and whole attentions) block by block, so the level's depth is an upper bound and the block's
// own tensors say how many it has. 0: no attention in this block.
int attention_depth(const Graph & g, const std::string & prefix, int level_depth) {
    if (level_depth <= 0 || !g.w.find(prefix + ".proj_in.weight")) return 0;
    int depth = 0;
    while (depth < level_depth && g.w.find(prefix + ".transformer_blocks." + std::to_string(depth) + ".norm1.weight")) ++depth;
    return depth;
}

}  // namespace

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

int unet_heads_at(const UnetParams & p, int channels) {
    if (p.num_head_channels > 0) return channels % p.num_head_channels == 0 ? channels / p.num_head_channels : -1;
    return p.num_heads > 0 && channels % p.num_heads == 0 ? p.num_heads : -1;
}

int Unet::heads_at(int channels) const { return unet_heads_at(params_, channels); }

int Unet::control_count() const {
    int blocks = 1;  // input_blocks.0
    const int levels = static_cast<int>(params_.channel_mult.size());
    for (int level = 0; level < levels; ++level) blocks += params_.num_res_blocks[level] + (level != levels - 1 ? 1 : 0);
    return blocks + (params_.has_middle_block ? 1 : 0);
}

namespace {

std::string dims(const HostTensor & t) {
    return std::to_string(t.ne[0]) + "x" + std::to_string(t.ne[1]) + "x" + std::to_string(t.ne[2]) + "x" + std::to_string(t.ne[3]);
}

void check_buffer(const HostTensor & t, const char * what) {
    if (static_cast<int64_t>(t.data.size()) != t.numel()) {
        throw_invalid(std::string("UNet input ") + what + " does not hold as many floats as its shape says");
    }
}

}  // namespace

void Unet::check_inputs(const UnetInput & in) const {
    const int64_t w = in.x.ne[0], h = in.x.ne[1], n = in.x.ne[3];
    const int64_t c = in.x.ne[2] + (in.concat.data.empty() ? 0 : in.concat.ne[2]);
    const int m = spatial_multiple();
    if (n < 1 || in.x.data.empty()) throw_invalid("UNet batch must be at least 1; received " + std::to_string(in.x.data.empty() ? 0 : n));
    check_buffer(in.x, "x");
    if (!in.concat.data.empty()) {
        check_buffer(in.concat, "concat");
        if (in.concat.ne[0] != w || in.concat.ne[1] != h || in.concat.ne[3] != n) {
            throw_invalid("UNet concat input " + dims(in.concat) + " does not match the latent " + dims(in.x));
        }
    }
    if (c != params_.in_channels) {
        throw_invalid("UNet input has " + std::to_string(c) + " channels; this model takes " +
                      std::to_string(params_.in_channels));
    }
    if (w < 1 || h < 1 || w % m != 0 || h % m != 0) {
        throw_invalid("latent size " + std::to_string(w) + "x" + std::to_string(h) + " must be positive multiples of " +
                      std::to_string(m) + " (image size multiples of " + std::to_string(m * 8) + ")");
    }
    if (in.timesteps.size() != static_cast<size_t>(n)) {
        throw_invalid("UNet needs one timestep per batch item (" + std::to_string(n) + "); received " +
                      std::to_string(in.timesteps.size()));
    }
    const HostTensor & ctx = in.context;
    check_buffer(ctx, "context");
    if (ctx.ne[0] != params_.context_dim) {
        throw_invalid("context width " + std::to_string(ctx.ne[0]) + " does not match the UNet's context_dim " +
                      std::to_string(params_.context_dim));
    }
    if (ctx.ne[1] < 1 || ctx.ne[1] % kClipChunkLength != 0) {
        throw_invalid("context token count " + std::to_string(ctx.ne[1]) + " must be a positive multiple of 77");
    }
    if (ctx.ne[2] != n || ctx.ne[3] != 1) {
        throw_invalid("context batch " + std::to_string(ctx.ne[2]) + " does not match the latent batch " + std::to_string(n));
    }
    if (params_.adm_in_channels > 0) {
        check_buffer(in.y, "y");
        if (in.y.data.empty() || in.y.ne[0] != params_.adm_in_channels || in.y.ne[1] != n || in.y.ne[2] != 1) {
            throw_invalid("this UNet takes a label vector y of " + std::to_string(params_.adm_in_channels) + " x " +
                          std::to_string(n) + "; received " + (in.y.data.empty() ? std::string("none") : dims(in.y)));
        }
    } else if (!in.y.data.empty()) {
        throw_invalid("this UNet has no label embedding; y must be empty");
    }
    if (!in.control.empty()) {
        if (static_cast<int>(in.control.size()) != control_count()) {
            throw_invalid("UNet control residuals: expected " + std::to_string(control_count()) + "; received " +
                          std::to_string(in.control.size()));
        }
        for (const HostTensor & r : in.control) {
            check_buffer(r, "control");
            if (r.ne[3] != n) throw_invalid("UNet control residual " + dims(r) + " does not match the batch " + std::to_string(n));
        }
    }
}

ggml_tensor * unet_time_embedding(Graph & g, const UnetParams & p, ggml_tensor * timesteps, ggml_tensor * y) {
    ggml_tensor * emb = timestep_embedding(g.ctx, timesteps, p.model_channels);  // [N, model_channels]
    emb = linear(g, emb, "time_embed.0");
    emb = named(linear(g, ggml_silu(g.ctx, emb), "time_embed.2"), "time_embed");  // [N, time_embed_dim]
    if (y) {
        // SDXL: emb + label_emb(y), an MLP like the time embedding's.
        ggml_tensor * l = linear(g, ggml_silu(g.ctx, linear(g, y, "label_emb.0.0")), "label_emb.0.2");
        if (l->ne[0] != emb->ne[0]) throw Error(ErrorCode::ModelFormat, "label_emb.0.2 does not give time_embed_dim outputs");
        emb = named(ggml_add(g.ctx, emb, l), "label_emb");
    }
    return emb;
}

ggml_tensor * unet_encoder(Graph & g, const UnetParams & p, ggml_tensor * h, ggml_tensor * emb, ggml_tensor * context,
                           std::vector<ggml_tensor *> & outputs) {
    const int levels = static_cast<int>(p.channel_mult.size());
    int block = 1;
    for (int level = 0; level < levels; ++level) {
        const int ch = p.model_channels * p.channel_mult[level];
        for (int r = 0; r < p.num_res_blocks[level]; ++r, ++block) {
            const std::string prefix = at("input_blocks", block);
            h = unet_resblock(g, h, emb, prefix + ".0");
            if (const int depth = attention_depth(g, prefix + ".1", p.transformer_depth[level])) {
                h = spatial_transformer(g, h, context, prefix + ".1", unet_heads_at(p, ch), depth);
            }
            outputs.push_back(named(h, prefix));
        }
        if (level != levels - 1) {
            h = unet_downsample(g, h, at("input_blocks", block) + ".0");
            outputs.push_back(named(h, at("input_blocks", block)));
            ++block;
        }
    }
    if (p.has_middle_block) {
        const int ch = p.model_channels * p.channel_mult.back();
        h = unet_resblock(g, h, emb, "middle_block.0");
        int next = 1;
        if (const int depth = attention_depth(g, "middle_block.1", p.transformer_depth_middle)) {
            h = spatial_transformer(g, h, context, "middle_block.1", unet_heads_at(p, ch), depth);
            next = 2;
        }
        h = unet_resblock(g, h, emb, at("middle_block", next));
    }
    return h;
}

ggml_tensor * Unet::build(Graph & g, const GraphInputs & in) const {
    const UnetParams & p = params_;
    const int levels = static_cast<int>(p.channel_mult.size());

    ggml_tensor * emb = unet_time_embedding(g, p, in.timesteps, in.y);
    // A ControlNet residual, checked against the block output it is added to.
    size_t next_control = 0;
    auto control = [&](ggml_tensor * h, const std::string & where) {
        if (in.control.empty()) return h;
        ggml_tensor * r = in.control[next_control++];
        for (int d = 0; d < 4; ++d) {
            if (r->ne[d] != h->ne[d]) throw_invalid("ControlNet residual for " + where + " has the wrong shape");
        }
        return ggml_add(g.ctx, h, r);
    };

    // Input side: every block's output is kept for the matching output block.
    std::vector<ggml_tensor *> skips;
    ggml_tensor * h = named(conv2d(g, in.x, "input_blocks.0.0", 1, 1), "input_blocks.0");
    skips.push_back(h);
    h = unet_encoder(g, p, h, emb, in.context, skips);
    // ControlNet adds to what the skip connections carry, in block order, and to the middle
    // block's output (where stable-diffusion.cpp adds them).
    for (size_t i = 0; i < skips.size(); ++i) skips[i] = control(skips[i], at("input_blocks", static_cast<int>(i)));
    if (p.has_middle_block) h = named(control(h, "middle_block"), "middle_block");

    // Output side: one more res block per level than the input side, each on [h, skip].
    int block = 0;
    for (int level = levels - 1; level >= 0; --level) {
        const int ch = p.model_channels * p.channel_mult[level];
        for (int r = 0; r <= p.num_res_blocks[level]; ++r, ++block) {
            const std::string prefix = at("output_blocks", block);
            if (skips.empty()) throw Error(ErrorCode::Internal, "UNet skip connections ran out at " + prefix);
            ggml_tensor * skip = skips.back();
            if (skip->ne[0] != h->ne[0] || skip->ne[1] != h->ne[1] || skip->ne[3] != h->ne[3]) {
                throw Error(ErrorCode::ModelFormat, "UNet " + prefix + ": the skip connection's size does not match");
            }
            h = ggml_concat(g.ctx, h, skip, 2);
            skips.pop_back();
            h = unet_resblock(g, h, emb, prefix + ".0");
            int next = 1;
            const int level_depth = std::max(p.transformer_depth[level], p.transformer_depth_out.empty() ? 0 : p.transformer_depth_out[level]);
            if (const int depth = attention_depth(g, prefix + ".1", level_depth)) {
                h = spatial_transformer(g, h, in.context, prefix + ".1", heads_at(ch), depth);
                next = 2;
            }
            if (level > 0 && r == p.num_res_blocks[level]) h = upsample(g, h, prefix + "." + std::to_string(next));
            h = named(h, prefix);
        }
    }

    return named(conv2d(g, group_norm(g, h, "out.0", true), "out.2", 1, 1), "unet_out");
}

void declare_unet_inputs(GraphBuilder & b, Graph & g, const UnetInput & in, Unet::GraphInputs & gi) {
    gi.timesteps = b.input_f32("timesteps", in.timesteps.data(), static_cast<int64_t>(in.timesteps.size()));
    gi.timesteps = ggml_reshape_1d(g.ctx, gi.timesteps, ggml_nelements(gi.timesteps));
    const HostTensor & ctx = in.context;
    gi.context = b.input_f32("context", ctx.data.data(), ctx.ne[0], ctx.ne[1], ctx.ne[2]);
    gi.context = ggml_reshape_3d(g.ctx, gi.context, ctx.ne[0], ctx.ne[1], ctx.ne[2]);
    if (!in.y.data.empty()) gi.y = ggml_reshape_2d(g.ctx, b.input_f32("y", in.y.data.data(), in.y.ne[0], in.y.ne[1]), in.y.ne[0], in.y.ne[1]);
}

HostTensor Unet::forward(GraphRunner & runner, const UnetInput & in) const {
    check_inputs(in);
    const HostTensor & x = in.x;
    // One graph per shape; what is present is part of the shape.
    std::string key = "unet:" + dims(x) + ":" + std::to_string(in.context.ne[1]);
    if (!in.concat.data.empty()) key += ":c" + std::to_string(in.concat.ne[2]);
    if (!in.y.data.empty()) key += ":y";
    if (!in.control.empty()) key += ":control";
    return runner.run(key, [&](GraphBuilder & b) {
        Graph g = component_graph(b, weights_, runner);
        GraphInputs gi;
        gi.x = b.input_f32("x", x.data.data(), x.ne[0], x.ne[1], x.ne[2], x.ne[3]);
        if (!in.concat.data.empty()) {
            const HostTensor & c = in.concat;
            gi.x = ggml_concat(g.ctx, gi.x, b.input_f32("concat", c.data.data(), c.ne[0], c.ne[1], c.ne[2], c.ne[3]), 2);
        }
        declare_unet_inputs(b, g, in, gi);
        for (size_t i = 0; i < in.control.size(); ++i) {
            const HostTensor & r = in.control[i];
            gi.control.push_back(b.input_f32(("control." + std::to_string(i)).c_str(), r.data.data(), r.ne[0], r.ne[1], r.ne[2], r.ne[3]));
        }
        return build(g, gi);
    });
}

}  // namespace sd
