// The one name table. Three passes:
//   1. route every stored name to a component (by prefix, or by its first segment in standalone
//      files) or to `ignored` / `unknown`;
//   2. map each component's names to the canonical spelling (the UNet and VAE need the whole
//      component at once: diffusers block indices depend on how many blocks there are);
//   3. relabel a lone bigG encoder as text_encoder_2, then reject duplicates.
#include "model/names.h"

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "core/errors.h"

namespace sd {

const char * component_name(Component c) {
    switch (c) {
        case Component::Unet: return "unet";
        case Component::Vae: return "vae";
        case Component::TextEncoder: return "text_encoder";
        case Component::TextEncoder2: return "text_encoder_2";
        case Component::Taesd: return "taesd";
        case Component::ControlNet: return "controlnet";
    }
    return "unknown";
}

const CanonicalTensor * CanonicalModel::find(Component c, const std::string & name) const {
    for (const auto & t : tensors)
        if (t.component == c && t.name == name) return &t;
    return nullptr;
}

bool CanonicalModel::has(Component c) const {
    for (const auto & t : tensors)
        if (t.component == c) return true;
    return false;
}

namespace {

bool starts_with(const std::string & s, const std::string & prefix) {
    return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

bool ends_with(const std::string & s, const std::string & suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Reads "<digits>." at `pos` of `s`: the index and the rest after the dot. False if not there.
bool take_index(const std::string & s, size_t pos, int & index, std::string & rest) {
    size_t end = pos;
    while (end < s.size() && s[end] >= '0' && s[end] <= '9' && end - pos < 6) ++end;
    if (end == pos || end >= s.size() || s[end] != '.') return false;
    index = std::stoi(s.substr(pos, end - pos));
    rest = s.substr(end + 1);
    return true;
}

// Replaces a leading `from` of `s` with `to`; false (s untouched) when `s` does not start with it.
bool replace_prefix(std::string & s, const std::string & from, const std::string & to) {
    if (!starts_with(s, from)) return false;
    s = to + s.substr(from.size());
    return true;
}

// ---------------------------------------------------------------- pass 1: routing

enum class Scheme { Auto, OpenClip };  // Auto: the component mapper recognizes the spelling

struct Routed {
    const TensorRecord * source;
    std::string inner;  // name without the component prefix
    Scheme scheme = Scheme::Auto;
};

struct Buckets {
    std::vector<Routed> unet, vae, te, te2, taesd;
    std::vector<std::string> ignored, unknown;
};

// LDM LatentDiffusion buffers saved next to the weights (noise schedule, EMA bookkeeping).
bool is_schedule_buffer(const std::string & name) {
    static const char * const names[] = {
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
        "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights",
        "model.betas", "model.alphas_cumprod", "model.alphas_cumprod_prev"};
    for (const char * n : names)
        if (name == n) return true;
    return false;
}

bool is_ignored(const std::string & name) {
    return starts_with(name, "model_ema.") || ends_with(name, ".position_ids") ||
           ends_with(name, "logit_scale") || ends_with(name, ".attn_mask") || name == "attn_mask" ||
           starts_with(name, "denoiser.") || starts_with(name, "lora_") || starts_with(name, "lora.") ||
           name.find(".lora_down.") != std::string::npos || name.find(".lora_up.") != std::string::npos ||
           name.find("vision_model.") != std::string::npos || name.find("visual_projection") != std::string::npos ||
           name.find("model.visual.") != std::string::npos || starts_with(name, "visual.") ||
           is_schedule_buffer(name) ||
           // Markers some SDXL v-prediction checkpoints carry (arch.cpp reads them from the file).
           name == "v_pred" || name == "ztsnr" || starts_with(name, "edm_vpred.") || starts_with(name, "edm_mean") || starts_with(name, "edm_std");
}

// Names of a standalone file (no component prefix), told apart by their first segment.
bool route_standalone(const Routed & r, Buckets & out) {
    const std::string & n = r.inner;
    static const char * const unet_heads[] = {
        "input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "out.", "label_emb.",
        "conv_in.", "conv_out.", "conv_norm_out.", "time_embedding.", "add_embedding.",
        "down_blocks.", "mid_block.", "up_blocks."};
    static const char * const vae_heads[] = {"encoder.", "decoder.", "quant_conv.", "post_quant_conv."};
    static const char * const openclip_heads[] = {
        "transformer.resblocks.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection"};
    for (const char * h : unet_heads)
        if (starts_with(n, h)) { out.unet.push_back(r); return true; }
    // AutoencoderTiny (TAESD) numbers its layers; the VAE's encoder.* / decoder.* never do.
    if (starts_with(n, "encoder.layers.") || starts_with(n, "decoder.layers.")) { out.taesd.push_back(r); return true; }
    for (const char * h : vae_heads)
        if (starts_with(n, h)) { out.vae.push_back(r); return true; }
    if (starts_with(n, "text_model.") || n == "text_projection.weight") {
        out.te.push_back(r);
        return true;
    }
    for (const char * h : openclip_heads)
        if (starts_with(n, h)) {
            Routed o = r;
            o.scheme = Scheme::OpenClip;
            out.te.push_back(o);
            return true;
        }
    return false;
}

void route(const TensorRecord & t, Buckets & out) {
    const std::string & name = t.name;
    if (is_ignored(name)) { out.ignored.push_back(name); return; }

    struct Prefix { const char * prefix; std::vector<Routed> Buckets::*bucket; Scheme scheme; };
    // Longest first where one prefix extends another.
    static const Prefix prefixes[] = {
        {"model.diffusion_model.", &Buckets::unet, Scheme::Auto},
        {"diffusion_model.", &Buckets::unet, Scheme::Auto},
        {"first_stage_model.", &Buckets::vae, Scheme::Auto},
        {"cond_stage_model.1.transformer.", &Buckets::te2, Scheme::Auto},  // stable-diffusion.cpp SDXL
        {"cond_stage_model.transformer.", &Buckets::te, Scheme::Auto},
        {"cond_stage_model.model.", &Buckets::te, Scheme::OpenClip},        // SD2.x
        {"conditioner.embedders.0.transformer.", &Buckets::te, Scheme::Auto},
        {"conditioner.embedders.0.open_clip.model.", &Buckets::te, Scheme::OpenClip},
        {"conditioner.embedders.0.model.", &Buckets::te2, Scheme::OpenClip},  // the refiner's only encoder is bigG
        {"conditioner.embedders.1.model.", &Buckets::te2, Scheme::OpenClip},
        {"unet/", &Buckets::unet, Scheme::Auto},
        {"vae/", &Buckets::vae, Scheme::Auto},
        {"text_encoder/", &Buckets::te, Scheme::Auto},
        {"text_encoder_2/", &Buckets::te2, Scheme::Auto},
        {"unet.", &Buckets::unet, Scheme::Auto},
        {"vae.", &Buckets::vae, Scheme::Auto},
        {"text_encoder.", &Buckets::te, Scheme::Auto},
        {"text_encoder_2.", &Buckets::te2, Scheme::Auto},
        {"taesd.", &Buckets::taesd, Scheme::Auto},
        {"tae.", &Buckets::taesd, Scheme::Auto},  // stable-diffusion.cpp's prefix for --taesd files
    };
    for (const auto & p : prefixes) {
        if (starts_with(name, p.prefix)) {
            (out.*p.bucket).push_back({&t, name.substr(std::string(p.prefix).size()), p.scheme});
            return;
        }
    }
    if (!route_standalone({&t, name, Scheme::Auto}, out)) out.unknown.push_back(name);
}

// ---------------------------------------------------------------- pass 2: mapping

struct Mapped {
    const TensorRecord * source;
    std::string name;
    std::vector<int64_t> shape;
    uint64_t offset = 0;
    uint64_t nbytes = 0;
    bool transpose = false;
};

Mapped whole(const TensorRecord * src, std::string name) {
    return {src, std::move(name), src->shape, 0, src->nbytes, false};
}

// Splits a fused [3w, ...] q/k/v tensor into three views named <base>{q,k,v}_proj.<kind>.
void split_qkv(const ModelFile & file, const TensorRecord * src, const std::string & base,
               const std::string & kind, std::vector<Mapped> & out) {
    if (src->shape.empty() || src->shape[0] % 3 != 0 || src->nbytes % 3 != 0)
        throw_format(file.path, "fused attention tensor '" + src->name + "' has " +
                                    std::to_string(src->shape.empty() ? 0 : src->shape[0]) +
                                    " rows; expected a multiple of 3 (q, k and v stacked)");
    std::vector<int64_t> shape = src->shape;
    shape[0] /= 3;
    const uint64_t third = src->nbytes / 3;
    const char * parts[] = {"q", "k", "v"};
    for (int i = 0; i < 3; ++i)
        out.push_back({src, base + parts[i] + "_proj." + kind, shape, third * i, third, false});
}

// -------- text encoders

// OpenCLIP's text_projection, stored [width, proj] (pooled = x @ P), as the HF [proj, width]
// weight of a linear layer. A square one (SDXL's bigG: 1280 x 1280) is taken as stored, the
// bytes read as [out, in], so pooled = P x: that is what stable-diffusion.cpp computes (its
// linear layer on the stored tensor), and its numbers are the yardstick; the transposed product
// OpenCLIP defines differs (docs/accuracy.md). A non-square one can only be transposed (the
// reference cannot load those).
Mapped openclip_projection(const TensorRecord * src) {
    Mapped m = whole(src, "text_projection.weight");
    if (m.shape.size() == 2 && m.shape[0] != m.shape[1]) {
        std::swap(m.shape[0], m.shape[1]);
        m.transpose = true;
    }
    return m;
}

// OpenCLIP text tower (names after "model.") to HF CLIP.
bool map_openclip(const ModelFile & file, const Routed & r, std::vector<Mapped> & out) {
    const std::string & n = r.inner;
    const TensorRecord * src = r.source;
    if (n == "token_embedding.weight") { out.push_back(whole(src, "text_model.embeddings.token_embedding.weight")); return true; }
    if (n == "positional_embedding") { out.push_back(whole(src, "text_model.embeddings.position_embedding.weight")); return true; }
    if (n == "ln_final.weight" || n == "ln_final.bias") {
        out.push_back(whole(src, "text_model.final_layer_norm." + n.substr(9)));
        return true;
    }
    if (n == "text_projection") {
        out.push_back(openclip_projection(src));
        return true;
    }
    int layer;
    std::string rest;
    if (!starts_with(n, "transformer.resblocks.") || !take_index(n, 22, layer, rest)) return false;
    const std::string base = "text_model.encoder.layers." + std::to_string(layer) + ".";
    if (rest == "attn.in_proj_weight") { split_qkv(file, src, base + "self_attn.", "weight", out); return true; }
    if (rest == "attn.in_proj_bias") { split_qkv(file, src, base + "self_attn.", "bias", out); return true; }
    static const std::pair<const char *, const char *> renames[] = {
        {"attn.out_proj.", "self_attn.out_proj."}, {"ln_1.", "layer_norm1."}, {"ln_2.", "layer_norm2."},
        {"mlp.c_fc.", "mlp.fc1."}, {"mlp.c_proj.", "mlp.fc2."}};
    for (const auto & rn : renames) {
        std::string s = rest;
        if (replace_prefix(s, rn.first, rn.second)) { out.push_back(whole(src, base + s)); return true; }
    }
    return false;
}

// HF CLIP names (diffusers text encoders, LDM SD1, stable-diffusion.cpp GGUF).
bool map_hf_clip(const ModelFile & file, const Routed & r, std::vector<Mapped> & out) {
    std::string n = r.inner;
    const TensorRecord * src = r.source;
    if (n == "text_projection.weight") { out.push_back(whole(src, n)); return true; }
    // Old transformers versions saved CLIPTextModel without the "text_model." level.
    if (starts_with(n, "embeddings.") || starts_with(n, "encoder.") || starts_with(n, "final_layer_norm."))
        n = "text_model." + n;
    if (!starts_with(n, "text_model.")) return false;
    if (n == "text_model.text_projection" || n == "text_model.text_projection.weight") {
        // stable-diffusion.cpp's spelling; it keeps OpenCLIP's [width, proj] orientation.
        out.push_back(openclip_projection(src));
        return true;
    }
    int layer;
    std::string rest;
    if (starts_with(n, "text_model.encoder.layers.") && take_index(n, 26, layer, rest) &&
        (rest == "self_attn.in_proj.weight" || rest == "self_attn.in_proj.bias")) {
        // stable-diffusion.cpp renames OpenCLIP's fused in_proj without splitting it.
        split_qkv(file, src, "text_model.encoder.layers." + std::to_string(layer) + ".self_attn.",
                  rest.substr(rest.rfind('.') + 1), out);
        return true;
    }
    out.push_back(whole(src, n));
    return true;
}

// -------- UNet

// Where a UNet tensor sits in the block structure, independent of the spelling.
struct UnetPart {
    enum Kind { Top, InRes, InAttn, Down, MidRes, MidAttn, OutRes, OutAttn, Up } kind = Top;
    int level = 0;  // 0 = full resolution
    int j = 0;      // block within the level (resnets), or resnet number in the middle block
    std::string rest;  // LDM name below the block (Top: the whole canonical name)
    const TensorRecord * source = nullptr;
};

// Diffusers resnet member names to LDM ResBlock names.
std::string ldm_resnet_rest(const std::string & rest) {
    static const std::pair<const char *, const char *> renames[] = {
        {"norm1.", "in_layers.0."}, {"conv1.", "in_layers.2."}, {"time_emb_proj.", "emb_layers.1."},
        {"norm2.", "out_layers.0."}, {"conv2.", "out_layers.3."}, {"conv_shortcut.", "skip_connection."}};
    for (const auto & rn : renames) {
        std::string s = rest;
        if (replace_prefix(s, rn.first, rn.second)) return s;
    }
    return rest;
}

bool is_diffusers_unet(const std::string & n) {
    static const char * const heads[] = {"conv_in.", "conv_out.", "conv_norm_out.", "time_embedding.",
                                         "add_embedding.", "down_blocks.", "mid_block.", "up_blocks."};
    for (const char * h : heads)
        if (starts_with(n, h)) return true;
    return false;
}

// Parses diffusers UNet names. `levels` is the number of resolution levels (down_blocks count).
bool parse_diffusers_unet(const std::string & n, int levels, UnetPart & p) {
    static const std::pair<const char *, const char *> tops[] = {
        {"conv_in.", "input_blocks.0.0."}, {"time_embedding.linear_1.", "time_embed.0."},
        {"time_embedding.linear_2.", "time_embed.2."}, {"add_embedding.linear_1.", "label_emb.0.0."},
        {"add_embedding.linear_2.", "label_emb.0.2."}, {"conv_norm_out.", "out.0."}, {"conv_out.", "out.2."}};
    for (const auto & t : tops) {
        std::string s = n;
        if (replace_prefix(s, t.first, t.second)) { p.kind = UnetPart::Top; p.rest = s; return true; }
    }
    int i, j;
    std::string rest, rest2;
    bool down = starts_with(n, "down_blocks."), up = starts_with(n, "up_blocks.");
    if (down || up) {
        if (!take_index(n, down ? 12 : 10, i, rest)) return false;
        p.level = down ? i : levels - 1 - i;
        if (p.level < 0) return false;
        if (starts_with(rest, "resnets.") && take_index(rest, 8, j, rest2)) {
            p.kind = down ? UnetPart::InRes : UnetPart::OutRes;
            p.j = j;
            p.rest = ldm_resnet_rest(rest2);
            return true;
        }
        if (starts_with(rest, "attentions.") && take_index(rest, 11, j, rest2)) {
            p.kind = down ? UnetPart::InAttn : UnetPart::OutAttn;
            p.j = j;
            p.rest = rest2;
            return true;
        }
        if (down && replace_prefix(rest, "downsamplers.0.conv.", "op.")) { p.kind = UnetPart::Down; p.rest = rest; return true; }
        if (up && replace_prefix(rest, "upsamplers.0.conv.", "conv.")) { p.kind = UnetPart::Up; p.rest = rest; return true; }
        return false;
    }
    if (starts_with(n, "mid_block.resnets.") && take_index(n, 18, j, rest)) {
        p.kind = UnetPart::MidRes;
        p.j = j;
        p.rest = ldm_resnet_rest(rest);
        return true;
    }
    if (starts_with(n, "mid_block.attentions.0.")) {
        p.kind = UnetPart::MidAttn;
        p.rest = n.substr(23);
        return true;
    }
    return false;
}

// Parses LDM UNet names of one file. Block indices are walked in order (a downsampler ends an
// input level, an upsampler an output level), so gaps left by converters do not matter.
void parse_ldm_unet(const ModelFile & file, const std::vector<const Routed *> & names,
                    std::vector<UnetPart> & parts, std::vector<const Routed *> & unparsed) {
    // block index -> (sub index, rest, source)
    struct Entry { int sub; std::string rest; const TensorRecord * source; };
    std::map<int, std::vector<Entry>> in, out;
    std::vector<Entry> mid;
    for (const Routed * r : names) {
        const std::string & n = r->inner;
        int b, s;
        std::string rest, rest2;
        std::map<int, std::vector<Entry>> * group = nullptr;
        if (starts_with(n, "input_blocks.") && take_index(n, 13, b, rest)) group = &in;
        else if (starts_with(n, "output_blocks.") && take_index(n, 14, b, rest)) group = &out;
        if (group && take_index(rest, 0, s, rest2)) {
            if (group == &in && b == 0) parts.push_back({UnetPart::Top, 0, 0, n, r->source});
            else (*group)[b].push_back({s, rest2, r->source});
            continue;
        }
        if (starts_with(n, "middle_block.") && take_index(n, 13, s, rest)) {
            mid.push_back({s, rest, r->source});
            continue;
        }
        if (starts_with(n, "time_embed.") || starts_with(n, "label_emb.") || starts_with(n, "out.")) {
            parts.push_back({UnetPart::Top, 0, 0, n, r->source});
            continue;
        }
        unparsed.push_back(r);
    }

    int level = 0, j = 0;
    for (const auto & kv : in) {
        bool is_down = false;
        for (const auto & e : kv.second) is_down |= (e.sub == 0 && starts_with(e.rest, "op."));
        for (const auto & e : kv.second) {
            UnetPart p;
            p.level = level;
            p.j = j;
            p.rest = e.rest;
            p.source = e.source;
            p.kind = is_down ? UnetPart::Down : e.sub == 0 ? UnetPart::InRes : UnetPart::InAttn;
            if (e.sub > 1 || (is_down && e.sub != 0))
                throw_format(file.path, "UNet tensor 'input_blocks." + std::to_string(kv.first) + "." +
                                            std::to_string(e.sub) + "." + e.rest + "' is not a resnet, attention or downsampler");
            parts.push_back(p);
        }
        if (is_down) { ++level; j = 0; } else ++j;
    }
    const int levels = level + 1;

    level = levels - 1;
    j = 0;
    for (const auto & kv : out) {
        bool has_res = false, has_up = false;
        for (const auto & e : kv.second) {
            has_res |= e.sub == 0;
            has_up |= (e.sub >= 1 && starts_with(e.rest, "conv."));
        }
        // A block holding only an upsampler (gap-leaving converters) closes the previous block.
        if (level < 0)
            throw_format(file.path, "UNet has more output block levels than input levels (" +
                                        std::to_string(levels) + "), at 'output_blocks." + std::to_string(kv.first) + "'");
        for (const auto & e : kv.second) {
            UnetPart p;
            p.level = level;
            p.rest = e.rest;
            p.source = e.source;
            if (e.sub >= 1 && starts_with(e.rest, "conv.")) {
                p.kind = UnetPart::Up;
            } else if (e.sub == 0) {
                p.kind = UnetPart::OutRes;
                p.j = j;
            } else if (e.sub == 1) {
                p.kind = UnetPart::OutAttn;
                p.j = has_res ? j : j - 1;
            } else {
                throw_format(file.path, "UNet tensor 'output_blocks." + std::to_string(kv.first) + "." +
                                            std::to_string(e.sub) + "." + e.rest + "' is not a resnet, attention or upsampler");
            }
            parts.push_back(p);
        }
        if (has_res) ++j;
        if (has_up) { --level; j = 0; }
    }

    bool mid_attn = false;
    for (const auto & e : mid) mid_attn |= (e.sub == 1 && !starts_with(e.rest, "in_layers.") &&
                                            !starts_with(e.rest, "out_layers.") && !starts_with(e.rest, "emb_layers."));
    for (const auto & e : mid) {
        UnetPart p;
        p.rest = e.rest;
        p.source = e.source;
        if (mid_attn && e.sub == 1) p.kind = UnetPart::MidAttn;
        else { p.kind = UnetPart::MidRes; p.j = (mid_attn && e.sub == 2) ? 1 : e.sub; }
        parts.push_back(p);
    }
}

// Writes canonical LDM names for parsed UNet parts, with standard contiguous block indices.
void emit_unet(const ModelFile & file, std::vector<UnetPart> & parts, std::vector<Mapped> & out) {
    int levels = 0;
    for (const auto & p : parts) levels = std::max(levels, p.level + 1);
    std::vector<int> res_in(levels, 0), res_out(levels, 0);
    std::vector<bool> has_down(levels, false);
    std::set<std::pair<int, int>> out_attn;  // (level, j) output blocks with attention
    bool mid_attn = false;
    for (const auto & p : parts) {
        if (p.kind == UnetPart::InRes || p.kind == UnetPart::InAttn) res_in[p.level] = std::max(res_in[p.level], p.j + 1);
        if (p.kind == UnetPart::OutRes || p.kind == UnetPart::OutAttn) res_out[p.level] = std::max(res_out[p.level], p.j + 1);
        if (p.kind == UnetPart::Down) has_down[p.level] = true;
        if (p.kind == UnetPart::OutAttn) out_attn.insert({p.level, p.j});
        if (p.kind == UnetPart::MidAttn) mid_attn = true;
    }
    std::vector<int> in_start(levels, 1), out_start(levels, 0);
    for (int l = 1; l < levels; ++l) in_start[l] = in_start[l - 1] + res_in[l - 1] + (has_down[l - 1] ? 1 : 0);
    for (int l = levels - 2; l >= 0; --l) out_start[l] = out_start[l + 1] + res_out[l + 1];

    for (const auto & p : parts) {
        std::string name;
        auto block = [](const char * group, int index, int sub) {
            return std::string(group) + "." + std::to_string(index) + "." + std::to_string(sub) + ".";
        };
        switch (p.kind) {
            case UnetPart::Top: name = p.rest; break;
            case UnetPart::InRes: name = block("input_blocks", in_start[p.level] + p.j, 0) + p.rest; break;
            case UnetPart::InAttn: name = block("input_blocks", in_start[p.level] + p.j, 1) + p.rest; break;
            case UnetPart::Down: name = block("input_blocks", in_start[p.level] + res_in[p.level], 0) + p.rest; break;
            case UnetPart::OutRes: name = block("output_blocks", out_start[p.level] + p.j, 0) + p.rest; break;
            case UnetPart::OutAttn: name = block("output_blocks", out_start[p.level] + p.j, 1) + p.rest; break;
            case UnetPart::Up: {
                const int last = res_out[p.level] - 1;
                if (last < 0)
                    throw_format(file.path, "UNet upsampler at level " + std::to_string(p.level) + " has no resnet block before it");
                name = block("output_blocks", out_start[p.level] + last, out_attn.count({p.level, last}) ? 2 : 1) + p.rest;
                break;
            }
            case UnetPart::MidRes: name = "middle_block." + std::to_string(p.j == 0 ? 0 : (mid_attn ? 2 : 1)) + "." + p.rest; break;
            case UnetPart::MidAttn: name = "middle_block.1." + p.rest; break;
        }
        out.push_back(whole(p.source, name));
    }
}

void map_unet(const ModelFile & file, const std::vector<Routed> & names, std::vector<Mapped> & out,
              std::vector<std::string> & unknown) {
    int levels = 0;
    for (const auto & r : names) {
        int i;
        std::string rest;
        if (starts_with(r.inner, "down_blocks.") && take_index(r.inner, 12, i, rest)) levels = std::max(levels, i + 1);
        if (starts_with(r.inner, "up_blocks.") && take_index(r.inner, 10, i, rest)) levels = std::max(levels, i + 1);
    }
    std::vector<UnetPart> diffusers_parts, ldm_parts;
    std::vector<const Routed *> ldm_names, unparsed;
    for (const auto & r : names) {
        if (is_diffusers_unet(r.inner)) {
            UnetPart p;
            p.source = r.source;
            if (parse_diffusers_unet(r.inner, levels, p)) diffusers_parts.push_back(p);
            else unparsed.push_back(&r);
        } else {
            ldm_names.push_back(&r);
        }
    }
    parse_ldm_unet(file, ldm_names, ldm_parts, unparsed);
    // One file uses one spelling; mixing them would interleave two index schemes.
    if (!diffusers_parts.empty() && !ldm_parts.empty())
        throw_format(file.path, "UNet mixes diffusers names ('" + diffusers_parts[0].source->name +
                                    "') and LDM names ('" + ldm_parts[0].source->name + "')");
    emit_unet(file, diffusers_parts.empty() ? ldm_parts : diffusers_parts, out);
    for (const Routed * r : unparsed) unknown.push_back(r->source->name);
}

// -------- VAE

// Maps one VAE name (LDM or diffusers) to LDM. `levels` = number of resolution levels.
bool map_vae_name(const std::string & n, int levels, std::string & result) {
    static const char * const same[] = {"quant_conv.", "post_quant_conv.", "encoder.conv_in.", "encoder.conv_out.",
                                        "decoder.conv_in.", "decoder.conv_out.", "encoder.norm_out.", "decoder.norm_out."};
    for (const char * s : same)
        if (starts_with(n, s)) { result = n; return true; }

    const bool enc = starts_with(n, "encoder."), dec = starts_with(n, "decoder.");
    if (!enc && !dec) return false;
    const std::string side = enc ? "encoder." : "decoder.";
    std::string s = n.substr(side.size());
    int i, j;
    std::string rest, rest2;

    auto resnet = [](std::string r) {
        replace_prefix(r, "conv_shortcut.", "nin_shortcut.");
        return r;
    };
    auto attention = [](std::string r) {
        static const std::pair<const char *, const char *> renames[] = {
            {"group_norm.", "norm."}, {"to_q.", "q."}, {"to_k.", "k."}, {"to_v.", "v."}, {"to_out.0.", "proj_out."},
            {"query.", "q."}, {"key.", "k."}, {"value.", "v."}, {"proj_attn.", "proj_out."}};
        for (const auto & rn : renames)
            if (replace_prefix(r, rn.first, rn.second)) break;
        return r;
    };

    if (replace_prefix(s, "conv_norm_out.", "norm_out.")) { result = side + s; return true; }
    // LDM spellings (some converters write to_q & co. in the LDM tree)
    if (starts_with(s, "down.") || starts_with(s, "up.") || starts_with(s, "mid.block_")) { result = side + s; return true; }
    if (starts_with(s, "mid.attn_1.")) { result = side + "mid.attn_1." + attention(s.substr(11)); return true; }
    // diffusers spellings
    if (starts_with(s, "mid_block.resnets.") && take_index(s, 18, j, rest)) {
        result = side + "mid.block_" + std::to_string(j + 1) + "." + resnet(rest);
        return true;
    }
    if (starts_with(s, "mid_block.attentions.0.")) { result = side + "mid.attn_1." + attention(s.substr(23)); return true; }
    const bool down = enc && starts_with(s, "down_blocks."), up = dec && starts_with(s, "up_blocks.");
    if (!down && !up) return false;
    if (!take_index(s, down ? 12 : 10, i, rest)) return false;
    const int level = down ? i : levels - 1 - i;  // diffusers lists decoder levels deepest first
    if (level < 0) return false;
    const std::string base = side + (down ? "down." : "up.") + std::to_string(level) + ".";
    if (starts_with(rest, "resnets.") && take_index(rest, 8, j, rest2)) {
        result = base + "block." + std::to_string(j) + "." + resnet(rest2);
        return true;
    }
    if (down && replace_prefix(rest, "downsamplers.0.", "downsample.")) { result = base + rest; return true; }
    if (up && replace_prefix(rest, "upsamplers.0.", "upsample.")) { result = base + rest; return true; }
    return false;
}

void map_vae(const std::vector<Routed> & names, std::vector<Mapped> & out, std::vector<std::string> & unknown) {
    int levels = 0;
    for (const auto & r : names) {
        int i;
        std::string rest;
        if (starts_with(r.inner, "encoder.down_blocks.") && take_index(r.inner, 20, i, rest)) levels = std::max(levels, i + 1);
        if (starts_with(r.inner, "decoder.up_blocks.") && take_index(r.inner, 18, i, rest)) levels = std::max(levels, i + 1);
    }
    for (const auto & r : names) {
        std::string name;
        if (!map_vae_name(r.inner, levels, name)) { unknown.push_back(r.source->name); continue; }
        Mapped m = whole(r.source, name);
        // Attention projections are 1x1 convs in LDM; diffusers stores them as linear [c, c].
        const bool projection = name.find("mid.attn_1.") != std::string::npos && ends_with(name, ".weight") &&
                                !ends_with(name, "norm.weight");
        if (projection && m.shape.size() == 2) m.shape = {m.shape[0], m.shape[1], 1, 1};
        out.push_back(m);
    }
}

// TAESD: "<encoder|decoder>.layers.<i>." names are canonical as stored.
void map_taesd(const std::vector<Routed> & names, std::vector<Mapped> & out, std::vector<std::string> & unknown) {
    for (const auto & r : names) {
        const std::string & n = r.inner;
        int index;
        std::string rest;
        const bool ok = (starts_with(n, "encoder.layers.") || starts_with(n, "decoder.layers.")) && take_index(n, 15, index, rest);
        if (ok) out.push_back(whole(r.source, n));
        else unknown.push_back(r.source->name);
    }
}

void map_text_encoder(const ModelFile & file, const std::vector<Routed> & names, std::vector<Mapped> & out,
                      std::vector<std::string> & unknown) {
    for (const auto & r : names) {
        const bool ok = r.scheme == Scheme::OpenClip ? map_openclip(file, r, out) : map_hf_clip(file, r, out);
        if (!ok) unknown.push_back(r.source->name);
    }
}

}  // namespace

CanonicalModel canonicalize(const ModelFile & file) {
    Buckets buckets;
    for (const auto & t : file.tensors) route(t, buckets);

    CanonicalModel model;
    model.ignored = std::move(buckets.ignored);
    model.unknown = std::move(buckets.unknown);

    std::vector<Mapped> unet, vae, te, te2, taesd;
    map_unet(file, buckets.unet, unet, model.unknown);
    map_taesd(buckets.taesd, taesd, model.unknown);
    map_vae(buckets.vae, vae, model.unknown);
    map_text_encoder(file, buckets.te, te, model.unknown);
    map_text_encoder(file, buckets.te2, te2, model.unknown);

    // The refiner's only encoder is bigG: call it text_encoder_2, as in SDXL.
    // Spellings that do not say it (stable-diffusion.cpp's) are told by the bigG width or by
    // sdnode.arch metadata.
    const std::string * declared = file.meta("sdnode.arch");
    const bool refiner = declared && *declared == "sdxl-refiner";
    if (te2.empty()) {
        for (const auto & m : te) {
            if (m.name == "text_model.embeddings.token_embedding.weight" && m.shape.size() == 2 && (m.shape[1] == 1280 || refiner)) {
                std::swap(te, te2);
                break;
            }
        }
    }

    std::map<std::pair<Component, std::string>, const TensorRecord *> seen;
    auto add = [&](Component c, std::vector<Mapped> & list) {
        for (auto & m : list) {
            auto inserted = seen.insert({{c, m.name}, m.source});
            if (!inserted.second)
                throw_format(file.path, "tensors '" + inserted.first->second->name + "' and '" + m.source->name +
                                            "' both map to " + component_name(c) + " '" + m.name + "'");
            CanonicalTensor t;
            t.component = c;
            t.name = std::move(m.name);
            t.source = m.source;
            t.shape = std::move(m.shape);
            t.offset = m.offset;
            t.nbytes = m.nbytes;
            t.transpose = m.transpose;
            model.tensors.push_back(std::move(t));
        }
    };
    add(Component::Unet, unet);
    add(Component::Vae, vae);
    add(Component::TextEncoder, te);
    add(Component::TextEncoder2, te2);
    add(Component::Taesd, taesd);
    return model;
}

// ---------------------------------------------------------------- ControlNet files

namespace {

// The ControlNet-only tensors (hint encoder, zero convolutions) to canonical names; false for the
// rest, which are the UNet encoder's and go through the UNet mapper.
bool map_controlnet_extra(const std::string & n, std::string & out) {
    int i;
    std::string rest;
    if (starts_with(n, "input_hint_block.") || starts_with(n, "zero_convs.") || starts_with(n, "middle_block_out.")) {
        out = n;
        return true;
    }
    // diffusers: conv_in, blocks.0..5, conv_out are the hint block's convolutions 0, 2, .., 14.
    if (starts_with(n, "controlnet_cond_embedding.")) {
        const std::string s = n.substr(26);
        if (starts_with(s, "conv_in.")) { out = "input_hint_block.0." + s.substr(8); return true; }
        if (starts_with(s, "conv_out.")) { out = "input_hint_block.14." + s.substr(9); return true; }
        if (starts_with(s, "blocks.") && take_index(s, 7, i, rest)) {
            out = "input_hint_block." + std::to_string(2 * i + 2) + "." + rest;
            return true;
        }
        return false;
    }
    if (starts_with(n, "controlnet_down_blocks.") && take_index(n, 23, i, rest)) {
        out = "zero_convs." + std::to_string(i) + ".0." + rest;
        return true;
    }
    if (starts_with(n, "controlnet_mid_block.")) {
        out = "middle_block_out.0." + n.substr(21);
        return true;
    }
    return false;
}

}  // namespace

CanonicalModel canonicalize_controlnet(const ModelFile & file) {
    CanonicalModel model;
    std::vector<Routed> encoder;
    std::vector<Mapped> mapped;
    for (const auto & t : file.tensors) {
        std::string n = t.name;
        if (is_ignored(n)) { model.ignored.push_back(n); continue; }
        replace_prefix(n, "control_model.", "") || replace_prefix(n, "controlnet.", "");
        std::string extra;
        if (map_controlnet_extra(n, extra)) mapped.push_back(whole(&t, extra));
        else encoder.push_back({&t, n, Scheme::Auto});
    }
    map_unet(file, encoder, mapped, model.unknown);
    std::map<std::string, const TensorRecord *> seen;
    for (auto & m : mapped) {
        auto inserted = seen.insert({m.name, m.source});
        if (!inserted.second)
            throw_format(file.path, "tensors '" + inserted.first->second->name + "' and '" + m.source->name +
                                        "' both map to controlnet '" + m.name + "'");
        CanonicalTensor c;
        c.component = Component::ControlNet;
        c.name = std::move(m.name);
        c.source = m.source;
        c.shape = std::move(m.shape);
        c.offset = m.offset;
        c.nbytes = m.nbytes;
        c.transpose = m.transpose;
        model.tensors.push_back(std::move(c));
    }
    return model;
}

}  // namespace sd
