// In-memory tensor lists (names and shapes, no data) in the layouts real Stable Diffusion files
// use: LDM single-file checkpoints, diffusers components, OpenCLIP and HF CLIP text encoders.
// The LDM SD1.5 layout follows /work/shared/tools/make-sd15-random.py exactly.
#pragma once
#include <string>
#include <vector>

#include "io/model-file.h"

namespace layouts {

using Shape = std::vector<int64_t>;

struct Builder {
    sd::ModelFile file;
    std::string prefix;

    Builder() { file.path = "test.safetensors"; file.format = "safetensors"; }
    void add(const std::string & name, Shape shape) {
        sd::TensorRecord t;
        t.name = prefix + name;
        t.dtype = sd::DType::F16;
        t.type = GGML_TYPE_F16;
        t.shape = std::move(shape);
        t.nbytes = (uint64_t)t.numel() * 2;
        file.tensors.push_back(std::move(t));
    }
};

// ---------------------------------------------------------------- UNet

struct UnetConfig {
    int ch = 320, in = 4, out = 4, context = 768, adm = 0;
    std::vector<int> mult{1, 2, 4, 4};
    std::vector<int> res{2, 2, 2, 2};          // input side, per level
    std::vector<int> res_out{3, 3, 3, 3};      // output side, per level
    std::vector<int> depth{1, 1, 1, 0};        // transformer blocks per level, input side
    std::vector<int> depth_out{1, 1, 1, 0};    // output side
    bool middle = true;
    int depth_mid = 1;
    bool linear = false;  // use_linear_projection
    int temb() const { return ch * 4; }
};

// LDM ResBlock, as the script writes it.
inline void ldm_res(Builder & b, const std::string & p, int cin, int cout, int temb) {
    b.add(p + "in_layers.0.weight", {cin});
    b.add(p + "in_layers.0.bias", {cin});
    b.add(p + "in_layers.2.weight", {cout, cin, 3, 3});
    b.add(p + "in_layers.2.bias", {cout});
    b.add(p + "emb_layers.1.weight", {cout, temb});
    b.add(p + "emb_layers.1.bias", {cout});
    b.add(p + "out_layers.0.weight", {cout});
    b.add(p + "out_layers.0.bias", {cout});
    b.add(p + "out_layers.3.weight", {cout, cout, 3, 3});
    b.add(p + "out_layers.3.bias", {cout});
    if (cin != cout) {
        b.add(p + "skip_connection.weight", {cout, cin, 1, 1});
        b.add(p + "skip_connection.bias", {cout});
    }
}

// diffusers ResnetBlock2D.
inline void diffusers_res(Builder & b, const std::string & p, int cin, int cout, int temb) {
    b.add(p + "norm1.weight", {cin});
    b.add(p + "norm1.bias", {cin});
    b.add(p + "conv1.weight", {cout, cin, 3, 3});
    b.add(p + "conv1.bias", {cout});
    b.add(p + "time_emb_proj.weight", {cout, temb});
    b.add(p + "time_emb_proj.bias", {cout});
    b.add(p + "norm2.weight", {cout});
    b.add(p + "norm2.bias", {cout});
    b.add(p + "conv2.weight", {cout, cout, 3, 3});
    b.add(p + "conv2.bias", {cout});
    if (cin != cout) {
        b.add(p + "conv_shortcut.weight", {cout, cin, 1, 1});
        b.add(p + "conv_shortcut.bias", {cout});
    }
}

// SpatialTransformer: identical member names in LDM and diffusers.
inline void transformer(Builder & b, const std::string & p, int ch, int ctx, int depth, bool linear) {
    const Shape proj = linear ? Shape{ch, ch} : Shape{ch, ch, 1, 1};
    b.add(p + "norm.weight", {ch});
    b.add(p + "norm.bias", {ch});
    b.add(p + "proj_in.weight", proj);
    b.add(p + "proj_in.bias", {ch});
    for (int d = 0; d < depth; ++d) {
        const std::string t = p + "transformer_blocks." + std::to_string(d) + ".";
        for (int a = 1; a <= 2; ++a) {
            const std::string at = t + "attn" + std::to_string(a) + ".";
            const int kv = a == 1 ? ch : ctx;
            b.add(at + "to_q.weight", {ch, ch});
            b.add(at + "to_k.weight", {ch, kv});
            b.add(at + "to_v.weight", {ch, kv});
            b.add(at + "to_out.0.weight", {ch, ch});
            b.add(at + "to_out.0.bias", {ch});
        }
        b.add(t + "ff.net.0.proj.weight", {ch * 8, ch});
        b.add(t + "ff.net.0.proj.bias", {ch * 8});
        b.add(t + "ff.net.2.weight", {ch, ch * 4});
        b.add(t + "ff.net.2.bias", {ch});
        for (int n = 1; n <= 3; ++n) {
            b.add(t + "norm" + std::to_string(n) + ".weight", {ch});
            b.add(t + "norm" + std::to_string(n) + ".bias", {ch});
        }
    }
    b.add(p + "proj_out.weight", proj);
    b.add(p + "proj_out.bias", {ch});
}

inline void ldm_unet(Builder & b, const UnetConfig & c, const std::string & p = "model.diffusion_model.") {
    const int temb = c.temb(), levels = (int)c.mult.size();
    b.add(p + "time_embed.0.weight", {temb, c.ch});
    b.add(p + "time_embed.0.bias", {temb});
    b.add(p + "time_embed.2.weight", {temb, temb});
    b.add(p + "time_embed.2.bias", {temb});
    if (c.adm) {
        b.add(p + "label_emb.0.0.weight", {temb, c.adm});
        b.add(p + "label_emb.0.0.bias", {temb});
        b.add(p + "label_emb.0.2.weight", {temb, temb});
        b.add(p + "label_emb.0.2.bias", {temb});
    }
    b.add(p + "input_blocks.0.0.weight", {c.ch, c.in, 3, 3});
    b.add(p + "input_blocks.0.0.bias", {c.ch});
    std::vector<int> chans{c.ch};
    int ch = c.ch, idx = 1;
    for (int l = 0; l < levels; ++l) {
        for (int r = 0; r < c.res[l]; ++r) {
            const int out = c.ch * c.mult[l];
            const std::string blk = p + "input_blocks." + std::to_string(idx) + ".";
            ldm_res(b, blk + "0.", ch, out, temb);
            ch = out;
            if (c.depth[l]) transformer(b, blk + "1.", ch, c.context, c.depth[l], c.linear);
            chans.push_back(ch);
            ++idx;
        }
        if (l < levels - 1) {
            const std::string blk = p + "input_blocks." + std::to_string(idx) + ".0.op.";
            b.add(blk + "weight", {ch, ch, 3, 3});
            b.add(blk + "bias", {ch});
            chans.push_back(ch);
            ++idx;
        }
    }
    if (c.middle) {
        ldm_res(b, p + "middle_block.0.", ch, ch, temb);
        if (c.depth_mid) {
            transformer(b, p + "middle_block.1.", ch, c.context, c.depth_mid, c.linear);
            ldm_res(b, p + "middle_block.2.", ch, ch, temb);
        } else {
            ldm_res(b, p + "middle_block.1.", ch, ch, temb);
        }
    }
    idx = 0;
    for (int l = levels - 1; l >= 0; --l) {
        for (int i = 0; i < c.res_out[l]; ++i) {
            const int skip = chans.back();
            chans.pop_back();
            const int out = c.ch * c.mult[l];
            const std::string blk = p + "output_blocks." + std::to_string(idx) + ".";
            ldm_res(b, blk + "0.", ch + skip, out, temb);
            ch = out;
            int j = 1;
            if (c.depth_out[l]) {
                transformer(b, blk + "1.", ch, c.context, c.depth_out[l], c.linear);
                j = 2;
            }
            if (l > 0 && i == c.res_out[l] - 1) {
                b.add(blk + std::to_string(j) + ".conv.weight", {ch, ch, 3, 3});
                b.add(blk + std::to_string(j) + ".conv.bias", {ch});
            }
            ++idx;
        }
    }
    b.add(p + "out.0.weight", {c.ch});
    b.add(p + "out.0.bias", {c.ch});
    b.add(p + "out.2.weight", {c.out, c.ch, 3, 3});
    b.add(p + "out.2.bias", {c.out});
}

inline void diffusers_unet(Builder & b, const UnetConfig & c, const std::string & p = "unet/") {
    const int temb = c.temb(), levels = (int)c.mult.size();
    b.add(p + "conv_in.weight", {c.ch, c.in, 3, 3});
    b.add(p + "conv_in.bias", {c.ch});
    b.add(p + "time_embedding.linear_1.weight", {temb, c.ch});
    b.add(p + "time_embedding.linear_1.bias", {temb});
    b.add(p + "time_embedding.linear_2.weight", {temb, temb});
    b.add(p + "time_embedding.linear_2.bias", {temb});
    if (c.adm) {
        b.add(p + "add_embedding.linear_1.weight", {temb, c.adm});
        b.add(p + "add_embedding.linear_1.bias", {temb});
        b.add(p + "add_embedding.linear_2.weight", {temb, temb});
        b.add(p + "add_embedding.linear_2.bias", {temb});
    }
    std::vector<int> chans{c.ch};
    int ch = c.ch;
    for (int l = 0; l < levels; ++l) {
        const std::string blk = p + "down_blocks." + std::to_string(l) + ".";
        for (int r = 0; r < c.res[l]; ++r) {
            const int out = c.ch * c.mult[l];
            diffusers_res(b, blk + "resnets." + std::to_string(r) + ".", ch, out, temb);
            ch = out;
            if (c.depth[l]) transformer(b, blk + "attentions." + std::to_string(r) + ".", ch, c.context, c.depth[l], c.linear);
            chans.push_back(ch);
        }
        if (l < levels - 1) {
            b.add(blk + "downsamplers.0.conv.weight", {ch, ch, 3, 3});
            b.add(blk + "downsamplers.0.conv.bias", {ch});
            chans.push_back(ch);
        }
    }
    if (c.middle) {
        diffusers_res(b, p + "mid_block.resnets.0.", ch, ch, temb);
        if (c.depth_mid) transformer(b, p + "mid_block.attentions.0.", ch, c.context, c.depth_mid, c.linear);
        diffusers_res(b, p + "mid_block.resnets.1.", ch, ch, temb);
    }
    for (int l = levels - 1; l >= 0; --l) {
        const std::string blk = p + "up_blocks." + std::to_string(levels - 1 - l) + ".";
        for (int i = 0; i < c.res_out[l]; ++i) {
            const int skip = chans.back();
            chans.pop_back();
            const int out = c.ch * c.mult[l];
            diffusers_res(b, blk + "resnets." + std::to_string(i) + ".", ch + skip, out, temb);
            ch = out;
            if (c.depth_out[l]) transformer(b, blk + "attentions." + std::to_string(i) + ".", ch, c.context, c.depth_out[l], c.linear);
        }
        if (l > 0) {
            b.add(blk + "upsamplers.0.conv.weight", {ch, ch, 3, 3});
            b.add(blk + "upsamplers.0.conv.bias", {ch});
        }
    }
    b.add(p + "conv_norm_out.weight", {c.ch});
    b.add(p + "conv_norm_out.bias", {c.ch});
    b.add(p + "conv_out.weight", {c.out, c.ch, 3, 3});
    b.add(p + "conv_out.bias", {c.out});
}

inline UnetConfig sd2_unet() {
    UnetConfig c;
    c.context = 1024;
    c.linear = true;
    return c;
}

inline UnetConfig sdxl_unet() {
    UnetConfig c;
    c.context = 2048;
    c.adm = 2816;
    c.mult = {1, 2, 4};
    c.res = {2, 2, 2};
    c.res_out = {3, 3, 3};
    c.depth = {0, 2, 10};
    c.depth_out = {0, 2, 10};
    c.depth_mid = 10;
    c.linear = true;
    return c;
}

inline UnetConfig refiner_unet() {
    UnetConfig c;
    c.ch = 384;
    c.context = 1280;
    c.adm = 2560;
    c.mult = {1, 2, 4, 4};
    c.depth = {0, 4, 4, 0};
    c.depth_out = {0, 4, 4, 0};
    c.depth_mid = 4;
    c.linear = true;
    return c;
}

// ---------------------------------------------------------------- VAE

struct VaeConfig {
    int ch = 128, z = 4;
    std::vector<int> mult{1, 2, 4, 4};
    int res = 2;
};

inline void ldm_vae_res(Builder & b, const std::string & p, int cin, int cout, const char * shortcut = "nin_shortcut") {
    b.add(p + "norm1.weight", {cin});
    b.add(p + "norm1.bias", {cin});
    b.add(p + "conv1.weight", {cout, cin, 3, 3});
    b.add(p + "conv1.bias", {cout});
    b.add(p + "norm2.weight", {cout});
    b.add(p + "norm2.bias", {cout});
    b.add(p + "conv2.weight", {cout, cout, 3, 3});
    b.add(p + "conv2.bias", {cout});
    if (cin != cout) {
        b.add(p + std::string(shortcut) + ".weight", {cout, cin, 1, 1});
        b.add(p + std::string(shortcut) + ".bias", {cout});
    }
}

inline void ldm_vae_attn(Builder & b, const std::string & p, int c) {
    b.add(p + "norm.weight", {c});
    b.add(p + "norm.bias", {c});
    for (const char * n : {"q", "k", "v", "proj_out"}) {
        b.add(p + n + ".weight", {c, c, 1, 1});
        b.add(p + n + ".bias", {c});
    }
}

// `old_attention`: diffusers < 0.14 spelling (query/key/value/proj_attn).
inline void diffusers_vae_attn(Builder & b, const std::string & p, int c, bool old_attention) {
    b.add(p + "group_norm.weight", {c});
    b.add(p + "group_norm.bias", {c});
    const char * const now[] = {"to_q", "to_k", "to_v", "to_out.0"};
    const char * const old[] = {"query", "key", "value", "proj_attn"};
    for (int i = 0; i < 4; ++i) {
        const std::string n = old_attention ? old[i] : now[i];
        b.add(p + n + ".weight", {c, c});
        b.add(p + n + ".bias", {c});
    }
}

inline void ldm_vae(Builder & b, const VaeConfig & c, const std::string & p = "first_stage_model.") {
    const int levels = (int)c.mult.size();
    const int top = c.ch * c.mult.back();
    b.add(p + "encoder.conv_in.weight", {c.ch, 3, 3, 3});
    b.add(p + "encoder.conv_in.bias", {c.ch});
    int ch = c.ch;
    for (int i = 0; i < levels; ++i) {
        const int out = c.ch * c.mult[i];
        for (int r = 0; r < c.res; ++r) {
            ldm_vae_res(b, p + "encoder.down." + std::to_string(i) + ".block." + std::to_string(r) + ".", ch, out);
            ch = out;
        }
        if (i < levels - 1) {
            b.add(p + "encoder.down." + std::to_string(i) + ".downsample.conv.weight", {ch, ch, 3, 3});
            b.add(p + "encoder.down." + std::to_string(i) + ".downsample.conv.bias", {ch});
        }
    }
    ldm_vae_res(b, p + "encoder.mid.block_1.", ch, ch);
    ldm_vae_attn(b, p + "encoder.mid.attn_1.", ch);
    ldm_vae_res(b, p + "encoder.mid.block_2.", ch, ch);
    b.add(p + "encoder.norm_out.weight", {ch});
    b.add(p + "encoder.norm_out.bias", {ch});
    b.add(p + "encoder.conv_out.weight", {2 * c.z, ch, 3, 3});
    b.add(p + "encoder.conv_out.bias", {2 * c.z});
    b.add(p + "quant_conv.weight", {2 * c.z, 2 * c.z, 1, 1});
    b.add(p + "quant_conv.bias", {2 * c.z});
    b.add(p + "post_quant_conv.weight", {c.z, c.z, 1, 1});
    b.add(p + "post_quant_conv.bias", {c.z});
    b.add(p + "decoder.conv_in.weight", {top, c.z, 3, 3});
    b.add(p + "decoder.conv_in.bias", {top});
    ch = top;
    ldm_vae_res(b, p + "decoder.mid.block_1.", ch, ch);
    ldm_vae_attn(b, p + "decoder.mid.attn_1.", ch);
    ldm_vae_res(b, p + "decoder.mid.block_2.", ch, ch);
    for (int i = levels - 1; i >= 0; --i) {
        const int out = c.ch * c.mult[i];
        for (int r = 0; r < c.res + 1; ++r) {
            ldm_vae_res(b, p + "decoder.up." + std::to_string(i) + ".block." + std::to_string(r) + ".", ch, out);
            ch = out;
        }
        if (i > 0) {
            b.add(p + "decoder.up." + std::to_string(i) + ".upsample.conv.weight", {ch, ch, 3, 3});
            b.add(p + "decoder.up." + std::to_string(i) + ".upsample.conv.bias", {ch});
        }
    }
    b.add(p + "decoder.norm_out.weight", {ch});
    b.add(p + "decoder.norm_out.bias", {ch});
    b.add(p + "decoder.conv_out.weight", {3, ch, 3, 3});
    b.add(p + "decoder.conv_out.bias", {3});
}

inline void diffusers_vae(Builder & b, const VaeConfig & c, const std::string & p = "vae/", bool old_attention = false) {
    const int levels = (int)c.mult.size();
    const int top = c.ch * c.mult.back();
    b.add(p + "encoder.conv_in.weight", {c.ch, 3, 3, 3});
    b.add(p + "encoder.conv_in.bias", {c.ch});
    int ch = c.ch;
    for (int i = 0; i < levels; ++i) {
        const int out = c.ch * c.mult[i];
        const std::string blk = p + "encoder.down_blocks." + std::to_string(i) + ".";
        for (int r = 0; r < c.res; ++r) {
            ldm_vae_res(b, blk + "resnets." + std::to_string(r) + ".", ch, out, "conv_shortcut");
            ch = out;
        }
        if (i < levels - 1) {
            b.add(blk + "downsamplers.0.conv.weight", {ch, ch, 3, 3});
            b.add(blk + "downsamplers.0.conv.bias", {ch});
        }
    }
    ldm_vae_res(b, p + "encoder.mid_block.resnets.0.", ch, ch);
    diffusers_vae_attn(b, p + "encoder.mid_block.attentions.0.", ch, old_attention);
    ldm_vae_res(b, p + "encoder.mid_block.resnets.1.", ch, ch);
    b.add(p + "encoder.conv_norm_out.weight", {ch});
    b.add(p + "encoder.conv_norm_out.bias", {ch});
    b.add(p + "encoder.conv_out.weight", {2 * c.z, ch, 3, 3});
    b.add(p + "encoder.conv_out.bias", {2 * c.z});
    b.add(p + "quant_conv.weight", {2 * c.z, 2 * c.z, 1, 1});
    b.add(p + "quant_conv.bias", {2 * c.z});
    b.add(p + "post_quant_conv.weight", {c.z, c.z, 1, 1});
    b.add(p + "post_quant_conv.bias", {c.z});
    b.add(p + "decoder.conv_in.weight", {top, c.z, 3, 3});
    b.add(p + "decoder.conv_in.bias", {top});
    ch = top;
    ldm_vae_res(b, p + "decoder.mid_block.resnets.0.", ch, ch);
    diffusers_vae_attn(b, p + "decoder.mid_block.attentions.0.", ch, old_attention);
    ldm_vae_res(b, p + "decoder.mid_block.resnets.1.", ch, ch);
    for (int i = levels - 1; i >= 0; --i) {
        const int out = c.ch * c.mult[i];
        const std::string blk = p + "decoder.up_blocks." + std::to_string(levels - 1 - i) + ".";
        for (int r = 0; r < c.res + 1; ++r) {
            ldm_vae_res(b, blk + "resnets." + std::to_string(r) + ".", ch, out, "conv_shortcut");
            ch = out;
        }
        if (i > 0) {
            b.add(blk + "upsamplers.0.conv.weight", {ch, ch, 3, 3});
            b.add(blk + "upsamplers.0.conv.bias", {ch});
        }
    }
    b.add(p + "decoder.conv_norm_out.weight", {ch});
    b.add(p + "decoder.conv_norm_out.bias", {ch});
    b.add(p + "decoder.conv_out.weight", {3, ch, 3, 3});
    b.add(p + "decoder.conv_out.bias", {3});
}

// ---------------------------------------------------------------- text encoders

struct ClipConfig {
    int width = 768, layers = 12, vocab = 49408, positions = 77, projection = 0;
    int inter() const { return width * 4; }
};

inline ClipConfig vit_h() { return {1024, 24, 49408, 77, 1024}; }
inline ClipConfig vit_bigg() { return {1280, 32, 49408, 77, 1280}; }

// HF CLIPTextModel(WithProjection); `p` ends where "text_model." starts.
inline void hf_clip(Builder & b, const ClipConfig & c, const std::string & p) {
    const int w = c.width;
    const std::string t = p + "text_model.";
    b.add(t + "embeddings.token_embedding.weight", {c.vocab, w});
    b.add(t + "embeddings.position_embedding.weight", {c.positions, w});
    for (int i = 0; i < c.layers; ++i) {
        const std::string l = t + "encoder.layers." + std::to_string(i) + ".";
        for (const char * n : {"q", "k", "v", "out"}) {
            b.add(l + "self_attn." + n + "_proj.weight", {w, w});
            b.add(l + "self_attn." + n + "_proj.bias", {w});
        }
        b.add(l + "layer_norm1.weight", {w});
        b.add(l + "layer_norm1.bias", {w});
        b.add(l + "mlp.fc1.weight", {c.inter(), w});
        b.add(l + "mlp.fc1.bias", {c.inter()});
        b.add(l + "mlp.fc2.weight", {w, c.inter()});
        b.add(l + "mlp.fc2.bias", {w});
        b.add(l + "layer_norm2.weight", {w});
        b.add(l + "layer_norm2.bias", {w});
    }
    b.add(t + "final_layer_norm.weight", {w});
    b.add(t + "final_layer_norm.bias", {w});
    if (c.projection) b.add(p + "text_projection.weight", {c.projection, w});
}

// OpenCLIP text tower; `p` ends where "transformer.resblocks." starts (e.g. "cond_stage_model.model.").
inline void openclip(Builder & b, const ClipConfig & c, const std::string & p) {
    const int w = c.width;
    b.add(p + "token_embedding.weight", {c.vocab, w});
    b.add(p + "positional_embedding", {c.positions, w});
    for (int i = 0; i < c.layers; ++i) {
        const std::string l = p + "transformer.resblocks." + std::to_string(i) + ".";
        b.add(l + "ln_1.weight", {w});
        b.add(l + "ln_1.bias", {w});
        b.add(l + "attn.in_proj_weight", {3 * w, w});
        b.add(l + "attn.in_proj_bias", {3 * w});
        b.add(l + "attn.out_proj.weight", {w, w});
        b.add(l + "attn.out_proj.bias", {w});
        b.add(l + "ln_2.weight", {w});
        b.add(l + "ln_2.bias", {w});
        b.add(l + "mlp.c_fc.weight", {c.inter(), w});
        b.add(l + "mlp.c_fc.bias", {c.inter()});
        b.add(l + "mlp.c_proj.weight", {w, c.inter()});
        b.add(l + "mlp.c_proj.bias", {w});
    }
    b.add(p + "ln_final.weight", {w});
    b.add(p + "ln_final.bias", {w});
    if (c.projection) b.add(p + "text_projection", {w, c.projection});
    b.add(p + "logit_scale", {});
}

}  // namespace layouts
