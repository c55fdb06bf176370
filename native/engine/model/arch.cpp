// Architecture detection: the block structure is read off the canonical names (standard LDM
// indices, see names.h), sizes off the shapes; heads and prediction type come from metadata when
// the file has it, else from the architecture's standard values.
#include "model/arch.h"

#include <cmath>
#include <cstdlib>

#include <algorithm>
#include <map>
#include <set>

#include "core/errors.h"
#include "core/json.h"
#include "model/options.h"

namespace sd {

const char * arch_name(Arch a) {
    switch (a) {
        case Arch::Unknown: return "unknown";
        case Arch::SD1: return "sd1";
        case Arch::SD2: return "sd2";
        case Arch::SDXL: return "sdxl";
        case Arch::SDXLRefiner: return "sdxl-refiner";
    }
    return "unknown";
}

namespace {

bool starts_with(const std::string & s, const std::string & prefix) {
    return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

// The canonical tensors of one component, by name.
class ComponentView {
public:
    ComponentView(const ModelFile & file, const CanonicalModel & model, Component c) : file_(file), component_(c) {
        for (const auto & t : model.tensors)
            if (t.component == c) tensors_[t.name] = &t;
    }
    bool empty() const { return tensors_.empty(); }
    const CanonicalTensor * find(const std::string & name) const {
        auto it = tensors_.find(name);
        return it == tensors_.end() ? nullptr : it->second;
    }
    bool has_prefix(const std::string & prefix) const {
        auto it = tensors_.lower_bound(prefix);
        return it != tensors_.end() && starts_with(it->first, prefix);
    }
    // A tensor the component cannot work without, with the rank it must have.
    const CanonicalTensor & require(const std::string & name, size_t rank) const {
        const CanonicalTensor * t = find(name);
        if (!t)
            throw_format(file_.path, std::string(component_name(component_)) + " is present but its tensor '" + name +
                                         "' is missing");
        if (t->shape.size() != rank)
            throw_format(file_.path, std::string(component_name(component_)) + " tensor '" + name + "' (stored as '" +
                                         t->source->name + "') has " + std::to_string(t->shape.size()) +
                                         " dimensions; expected " + std::to_string(rank));
        for (int64_t d : t->shape)
            if (d <= 0)
                throw_format(file_.path, std::string(component_name(component_)) + " tensor '" + name + "' (stored as '" +
                                             t->source->name + "') has an empty dimension");
        return *t;
    }
    // Number of consecutive "<prefix>K." groups from K = 0.
    int count(const std::string & prefix) const {
        int n = 0;
        while (has_prefix(prefix + std::to_string(n) + ".")) ++n;
        return n;
    }
    const std::map<std::string, const CanonicalTensor *> & all() const { return tensors_; }

private:
    const ModelFile & file_;
    Component component_;
    std::map<std::string, const CanonicalTensor *> tensors_;
};

// ---------------------------------------------------------------- metadata

// A top-level member of a JSON config held in metadata (diffusers config files), or nullptr
// when the text is absent, not JSON, or lacks the key.
struct Config {
    explicit Config(const std::string * text) {
        if (!text) return;
        try {
            root = parse_json(*text, "config");
        } catch (const Error &) {
            // An unreadable config is ignored: the shapes still tell most of the story.
        }
    }
    const JsonValue * get(const char * key) const { return root.get(key); }
    std::string string(const char * key) const {
        const JsonValue * v = get(key);
        return v && v->is_string() ? v->as_string() : std::string();
    }
    // An integer, or every integer of an array; empty for anything else.
    std::vector<int> ints(const char * key) const {
        std::vector<int> out;
        const JsonValue * v = get(key);
        auto add = [&](const JsonValue & n) {
            uint64_t u = 0;
            if (!n.as_uint64(u) || u > 1'000'000) return false;
            out.push_back(static_cast<int>(u));
            return true;
        };
        if (!v) return out;
        if (v->is_number()) add(*v);
        else if (v->is_array())
            for (const auto & item : v->items())
                if (!add(item)) return {};
        return out;
    }
    JsonValue root;
};

// Prediction type from any metadata that states it: true when found.
bool metadata_prediction(const ModelFile & file, Prediction & prediction) {
    auto parse = [&](const std::string & v) {
        if (v == "v" || v == "v_prediction" || v == "v-prediction" || v == "vpred") { prediction = Prediction::V; return true; }
        if (v == "epsilon" || v == "eps") { prediction = Prediction::Eps; return true; }
        if (v == "edm_v") { prediction = Prediction::EdmV; return true; }
        return false;
    };
    for (const char * key : {"sdnode.prediction", "modelspec.prediction_type", "prediction_type"})
        if (const std::string * v = file.meta(key))
            if (parse(*v)) return true;
    if (parse(Config(file.meta("scheduler/scheduler_config.json")).string("prediction_type"))) return true;
    if (const std::string * a = file.meta("modelspec.architecture")) {
        if (a->find("768-v") != std::string::npos || a->find("-v-") != std::string::npos) { prediction = Prediction::V; return true; }
    }
    return false;
}

// sdnode's own metadata keys ("sdnode.unet.num_heads", ...) state what shapes cannot tell; any
// file may carry them (sdnode's test fixtures do). A value that does not parse is ignored.
bool meta_number(const ModelFile & file, const std::string & key, double & out) {
    const std::string * v = file.meta(key);
    if (!v || v->empty() || v->size() > 32) return false;
    char * end = nullptr;
    double d = std::strtod(v->c_str(), &end);
    if (end != v->c_str() + v->size() || !std::isfinite(d)) return false;
    out = d;
    return true;
}

// ---------------------------------------------------------------- UNet

int transformer_depth(const ComponentView & u, const std::string & block) {
    return u.count(block + "1.transformer_blocks.");
}

UnetParams detect_unet(const ModelFile & file, const ComponentView & u) {
    UnetParams p;
    p.present = true;
    const auto & conv_in = u.require("input_blocks.0.0.weight", 4);  // [ch, in, 3, 3]
    const auto & conv_out = u.require("out.2.weight", 4);            // [out, ch, 3, 3]
    const auto & time_embed = u.require("time_embed.0.weight", 2);   // [temb, ch]
    p.model_channels = (int)conv_in.shape[0];
    p.in_channels = (int)conv_in.shape[1];
    p.out_channels = (int)conv_out.shape[0];
    p.time_embed_dim = (int)time_embed.shape[0];
    if (u.find("label_emb.0.0.weight")) p.adm_in_channels = (int)u.require("label_emb.0.0.weight", 2).shape[1];

    auto mult_of = [&](const std::string & res_block) {
        const auto & conv = u.require(res_block + "in_layers.2.weight", 4);  // [out, in, 3, 3]
        if (conv.shape[0] % p.model_channels != 0)
            throw_format(file.path, "UNet block '" + res_block + "' has " + std::to_string(conv.shape[0]) +
                                        " channels; expected a multiple of model_channels " + std::to_string(p.model_channels));
        return (int)(conv.shape[0] / p.model_channels);
    };

    // Input side: resnet blocks (with optional attention) until a downsampler ends the level.
    int index = 1;
    p.channel_mult.push_back(0);
    p.num_res_blocks.push_back(0);
    p.transformer_depth.push_back(0);
    while (u.has_prefix("input_blocks." + std::to_string(index) + ".")) {
        const std::string block = "input_blocks." + std::to_string(index) + ".";
        if (u.has_prefix(block + "0.op.")) {
            p.channel_mult.push_back(0);
            p.num_res_blocks.push_back(0);
            p.transformer_depth.push_back(0);
        } else {
            if (p.num_res_blocks.back() == 0) p.channel_mult.back() = mult_of(block + "0.");
            ++p.num_res_blocks.back();
            p.transformer_depth.back() = std::max(p.transformer_depth.back(), transformer_depth(u, block));
        }
        ++index;
    }
    const int levels = (int)p.channel_mult.size();
    if (p.num_res_blocks.back() == 0)
        throw_format(file.path, "UNet level " + std::to_string(levels - 1) + " has no resnet block (expected input_blocks." + std::to_string(index) + ".0.*)");

    // Output side, deepest level first; an upsampler ends a level.
    p.num_res_blocks_out.assign(levels, 0);
    p.transformer_depth_out.assign(levels, 0);
    int level = levels - 1;
    for (index = 0; u.has_prefix("output_blocks." + std::to_string(index) + "."); ++index) {
        const std::string block = "output_blocks." + std::to_string(index) + ".";
        if (level < 0)
            throw_format(file.path, "UNet has more output levels than its " + std::to_string(levels) + " input levels");
        ++p.num_res_blocks_out[level];
        p.transformer_depth_out[level] = std::max(p.transformer_depth_out[level], transformer_depth(u, block));
        if (u.has_prefix(block + "1.conv.") || u.has_prefix(block + "2.conv.")) --level;
    }

    p.has_middle_block = u.has_prefix("middle_block.");
    p.transformer_depth_middle = p.has_middle_block ? transformer_depth(u, "middle_block.") : 0;

    // Cross-attention: context width from any attn2.to_k, projection kind from any proj_in.
    p.context_dim = 0;
    for (const auto & kv : u.all()) {
        const std::string & n = kv.first;
        if (p.context_dim == 0 && n.size() > 17 && n.compare(n.size() - 17, 17, "attn2.to_k.weight") == 0)
            p.context_dim = (int)u.require(n, 2).shape[1];  // [inner, context]
        if (n.size() > 14 && n.compare(n.size() - 14, 14, "proj_in.weight") == 0)
            p.use_linear_projection = kv.second->shape.size() == 2;
    }
    return p;
}

struct Standard {
    int levels, res_blocks;
};

// Heads from diffusers' config when present. Its "attention_head_dim" is, despite the name, the
// number of heads (an int, or one per level); "num_attention_heads" is the newer spelling.
bool config_heads(const ModelFile & file, UnetParams & p) {
    const Config config(file.meta("unet/config.json"));
    std::vector<int> heads = config.ints("num_attention_heads");
    if (heads.empty()) heads = config.ints("attention_head_dim");
    if (heads.empty()) return false;
    bool all_equal = std::all_of(heads.begin(), heads.end(), [&](int h) { return h == heads[0]; });
    if (heads.size() == 1 || all_equal) {
        p.num_heads = heads[0];
        p.num_head_channels = -1;
        return true;
    }
    // One value per level equal to channels/64 everywhere is the head_dim-64 layout (SD2, SDXL).
    bool head_dim_64 = heads.size() == p.channel_mult.size();
    for (size_t l = 0; head_dim_64 && l < heads.size(); ++l)
        head_dim_64 = heads[l] * 64 == p.model_channels * p.channel_mult[l];
    if (!head_dim_64) return false;
    p.num_heads = -1;
    p.num_head_channels = 64;
    return true;
}

// ---------------------------------------------------------------- VAE

VaeParams detect_vae(const ModelFile & file, const ComponentView & v) {
    VaeParams p;
    p.present = true;
    p.has_encoder = v.has_prefix("encoder.");
    p.has_decoder = v.has_prefix("decoder.");
    if (p.has_encoder) {
        const auto & conv_in = v.require("encoder.conv_in.weight", 4);    // [ch, 3, 3, 3]
        const auto & conv_out = v.require("encoder.conv_out.weight", 4);  // [2 z, ch_last, 3, 3]
        p.ch = (int)conv_in.shape[0];
        p.in_channels = (int)conv_in.shape[1];
        p.z_channels = (int)conv_out.shape[0] / 2;
        const int levels = v.count("encoder.down.");
        p.num_res_blocks = v.count("encoder.down.0.block.");
        for (int l = 0; l < levels; ++l) {
            const auto & conv = v.require("encoder.down." + std::to_string(l) + ".block.0.conv1.weight", 4);
            p.channel_mult.push_back((int)(conv.shape[0] / p.ch));
        }
    }
    if (p.has_decoder) {
        const auto & conv_in = v.require("decoder.conv_in.weight", 4);    // [ch_last, z, 3, 3]
        const auto & conv_out = v.require("decoder.conv_out.weight", 4);  // [3, ch, 3, 3]
        if (!p.has_encoder) {
            p.ch = (int)conv_out.shape[1];
            p.in_channels = (int)conv_out.shape[0];
            p.z_channels = (int)conv_in.shape[1];
            const int levels = v.count("decoder.up.");
            p.num_res_blocks = v.count("decoder.up.0.block.") - 1;  // the decoder has one more per level
            for (int l = 0; l < levels; ++l) {
                const auto & conv = v.require("decoder.up." + std::to_string(l) + ".block.0.conv1.weight", 4);
                p.channel_mult.push_back((int)(conv.shape[0] / p.ch));
            }
        }
    }
    if (!p.has_encoder && !p.has_decoder)
        throw_format(file.path, "vae is present but has neither encoder.* nor decoder.* tensors");
    return p;
}

// ---------------------------------------------------------------- TAESD

TaesdParams detect_taesd(const ModelFile & file, const ComponentView & t) {
    TaesdParams p;
    p.present = true;
    p.has_encoder = t.has_prefix("encoder.layers.");
    p.has_decoder = t.has_prefix("decoder.layers.");
    if (p.has_decoder) {
        const auto & first = t.require("decoder.layers.0.weight", 4);  // [channels, z, 3, 3]
        const auto & last = t.require("decoder.layers.18.weight", 4);  // [3, channels, 3, 3]
        p.channels = (int)first.shape[0];
        p.z_channels = (int)first.shape[1];
        p.image_channels = (int)last.shape[0];
    }
    if (p.has_encoder) {
        const auto & first = t.require("encoder.layers.0.weight", 4);  // [channels, 3, 3, 3]
        const auto & last = t.require("encoder.layers.14.weight", 4);  // [z, channels, 3, 3]
        if (!p.has_decoder) {
            p.channels = (int)first.shape[0];
            p.image_channels = (int)first.shape[1];
            p.z_channels = (int)last.shape[0];
        }
    }
    if (!p.has_encoder && !p.has_decoder)
        throw_format(file.path, "taesd is present but has neither encoder.layers.* nor decoder.layers.* tensors");
    return p;
}

// ---------------------------------------------------------------- text encoders

TextEncoderParams detect_text_encoder(const ModelFile & file, const ComponentView & t, const char * config_key) {
    TextEncoderParams p;
    p.present = true;
    const auto & tokens = t.require("text_model.embeddings.token_embedding.weight", 2);       // [vocab, width]
    const auto & positions = t.require("text_model.embeddings.position_embedding.weight", 2);  // [77, width]
    t.require("text_model.final_layer_norm.weight", 1);
    p.vocab = (int)tokens.shape[0];
    p.width = (int)tokens.shape[1];
    p.max_positions = (int)positions.shape[0];
    p.layers = t.count("text_model.encoder.layers.");
    if (p.layers == 0) throw_format(file.path, "text encoder is present but has no text_model.encoder.layers.0.* tensors");
    p.intermediate = (int)t.require("text_model.encoder.layers.0.mlp.fc1.weight", 2).shape[0];
    p.heads = std::max(1, p.width / 64);  // 64-wide heads in every CLIP; narrower (test) encoders get one
    if (const auto * proj = t.find("text_projection.weight")) p.projection_dim = (int)proj->shape[0];
    switch (p.width) {
        case 768: p.kind = "clip-vit-l-14"; p.activation = "quick_gelu"; break;
        case 1024: p.kind = "openclip-vit-h-14"; p.activation = "gelu"; break;
        case 1280: p.kind = "openclip-vit-bigg-14"; p.activation = "gelu"; break;
        default: p.kind = "clip"; p.activation = "quick_gelu"; break;
    }
    const Config config(file.meta(config_key));
    const std::string act = config.string("hidden_act");
    if (act == "gelu" || act == "quick_gelu") p.activation = act;
    const std::vector<int> heads = config.ints("num_attention_heads");
    if (!heads.empty() && heads[0] > 0) p.heads = heads[0];
    return p;
}

// ---------------------------------------------------------------- not Stable Diffusion

std::string examples(const ModelFile & file) {
    std::string s;
    for (size_t i = 0; i < file.tensors.size() && i < 3; ++i) s += (i ? ", '" : "'") + file.tensors[i].name + "'";
    return s;
}

[[noreturn]] void throw_not_sd(const ModelFile & file) {
    bool llm = false, lora = false, flux = false, sd3 = false, controlnet = false;
    for (const auto & t : file.tensors) {
        const std::string & n = t.name;
        llm |= starts_with(n, "blk.") || n == "token_embd.weight" || n == "output_norm.weight";
        lora |= n.find("lora_down") != std::string::npos || n.find("lora_up") != std::string::npos ||
                n.find("lora_A") != std::string::npos;
        flux |= n.find("double_blocks.") != std::string::npos;
        sd3 |= n.find("joint_blocks.") != std::string::npos;
        controlnet |= n.find("input_hint_block.") != std::string::npos || n.find("controlnet_cond_embedding.") != std::string::npos;
    }
    const std::string found = " (" + std::to_string(file.tensors.size()) + " tensors, e.g. " + examples(file) + ")";
    if (llm) throw_unsupported(file.path, "looks like a language model, not a Stable Diffusion model" + found);
    if (lora) throw_unsupported(file.path, "looks like a LoRA adapter, not a full Stable Diffusion model" + found);
    if (controlnet) throw_unsupported(file.path, "is a ControlNet, not a Stable Diffusion model: load it with loadControlNet() and pass it in generate's controlNets" + found);
    if (flux) throw_unsupported(file.path, "looks like a Flux model; only SD1.x, SD2.x and SDXL are supported" + found);
    if (sd3) throw_unsupported(file.path, "looks like an SD3 model; only SD1.x, SD2.x and SDXL are supported" + found);
    throw_unsupported(file.path, "no Stable Diffusion tensors found" + found);
}

}  // namespace

ModelInfo detect_architecture(const ModelFile & file, const CanonicalModel & model) {
    ModelInfo info;
    const ComponentView unet(file, model, Component::Unet), vae(file, model, Component::Vae),
        te(file, model, Component::TextEncoder), te2(file, model, Component::TextEncoder2),
        taesd(file, model, Component::Taesd);
    if (unet.empty() && vae.empty() && te.empty() && te2.empty() && taesd.empty()) throw_not_sd(file);
    if (!taesd.empty()) info.taesd = detect_taesd(file, taesd);

    if (!te.empty()) info.text_encoder = detect_text_encoder(file, te, "text_encoder/config.json");
    if (!te2.empty()) info.text_encoder_2 = detect_text_encoder(file, te2, "text_encoder_2/config.json");
    if (!vae.empty()) info.vae = detect_vae(file, vae);

    if (!unet.empty()) {
        UnetParams & p = info.unet;
        p = detect_unet(file, unet);
        Standard standard{4, 2};
        switch (p.context_dim) {
            case 768: info.arch = Arch::SD1; break;
            case 1024: info.arch = Arch::SD2; break;
            case 2048: info.arch = Arch::SDXL; standard = {3, 2}; break;
            case 1280: info.arch = Arch::SDXLRefiner; break;
            default: {
                // A non-standard width (small test or research models): the family comes from
                // sdnode.arch metadata, else from structure — a label embedding means SDXL (base
                // with two encoders, refiner with one), a linear projection SD2, else SD1.
                const std::string * named = file.meta("sdnode.arch");
                std::string family = named ? *named : "";
                if (family == "sd1" || family == "inpaint" || family == "ip2p" || family == "tiny") info.arch = Arch::SD1;
                else if (family == "sd2") info.arch = Arch::SD2;
                else if (family == "sdxl") info.arch = Arch::SDXL;
                else if (family == "sdxl-refiner") info.arch = Arch::SDXLRefiner;
                else if (p.adm_in_channels > 0) info.arch = te.empty() ? Arch::SDXLRefiner : Arch::SDXL;
                else info.arch = p.use_linear_projection ? Arch::SD2 : Arch::SD1;
                if (info.arch == Arch::SDXL) standard = {3, 2};
                info.warnings.push_back("non-standard UNet context width " + std::to_string(p.context_dim) + "; treated as " +
                                        arch_name(info.arch) + (named ? " (sdnode.arch metadata)" : " (from its structure)"));
                break;
            }
        }
        if (info.arch == Arch::SDXL && p.adm_in_channels != 2816)
            info.warnings.push_back("SDXL UNet with adm_in_channels " + std::to_string(p.adm_in_channels) + " (expected 2816)");
        if (info.arch == Arch::SDXLRefiner && p.adm_in_channels != 2560)
            info.warnings.push_back("SDXL refiner UNet with adm_in_channels " + std::to_string(p.adm_in_channels) + " (expected 2560)");

        if (info.arch == Arch::SD1) { p.num_heads = 8; p.num_head_channels = -1; }
        else { p.num_heads = -1; p.num_head_channels = 64; }
        config_heads(file, p);
        double heads = 0, head_channels = 0;
        if (meta_number(file, "sdnode.unet.num_heads", heads) && heads >= 1) {
            p.num_heads = (int)heads;
            p.num_head_channels = -1;
        }
        if (meta_number(file, "sdnode.unet.num_head_channels", head_channels) && head_channels >= 1) {
            p.num_head_channels = (int)head_channels;
            p.num_heads = -1;
        }

        if (p.in_channels == 9) p.variant = "inpaint";
        else if (p.in_channels == 8) p.variant = "instruct-pix2pix";
        bool distilled = !p.has_middle_block || (int)p.channel_mult.size() < standard.levels;
        for (int n : p.num_res_blocks) distilled |= n < standard.res_blocks;
        // A file that names its family (sdnode.arch) is not second-guessed from block counts.
        const std::string * declared = file.meta("sdnode.arch");
        if (declared) distilled = *declared == "tiny";
        if (distilled && p.variant.empty()) p.variant = p.has_middle_block ? "small" : "tiny";

        const bool sdxl = is_sdxl_family(info.arch);
        // stable-diffusion.cpp's markers for SDXL checkpoints, which it goes by (metadata or not):
        // "edm_vpred.sigma_max" (CosXL) means EDM v-prediction, else a tensor named "v_pred" means
        // v-prediction.
        if (sdxl && file.find("edm_vpred.sigma_max")) {
            p.prediction = Prediction::EdmV;
        } else if (sdxl && file.find("v_pred")) {
            p.prediction = Prediction::V;
        } else if (!metadata_prediction(file, p.prediction)) {
            p.prediction = arch_defaults(info.arch).prediction;
            if (info.arch == Arch::SD2)
                info.warnings.push_back("prediction type not in metadata; assumed eps (SD2.x 768-v models need v)");
        }
        info.vae.scale_factor = arch_defaults(info.arch).vae_scale_factor;
    } else if (!te2.empty()) {
        info.vae.scale_factor = arch_defaults(Arch::SDXL).vae_scale_factor;  // a bigG encoder only ships with SDXL
    }

    // OpenCLIP encoders (SD2's, SDXL's second) use gelu; a non-standard width cannot say which
    // encoder it is, the architecture can.
    // (A diffusers config's hidden_act, read above, is left as it says.)
    if (info.arch == Arch::SD2 && info.text_encoder.present && info.text_encoder.kind == "clip" && !file.meta("text_encoder/config.json"))
        info.text_encoder.activation = "gelu";
    if (info.text_encoder_2.present && info.text_encoder_2.kind == "clip" && !file.meta("text_encoder_2/config.json"))
        info.text_encoder_2.activation = "gelu";

    double scale = 0;
    if (info.vae.present && meta_number(file, "sdnode.vae.scale_factor", scale) && scale > 0) info.vae.scale_factor = (float)scale;
    double te_heads = 0;
    if (info.text_encoder.present && meta_number(file, "sdnode.text_encoder.num_heads", te_heads) && te_heads >= 1)
        info.text_encoder.heads = (int)te_heads;
    if (info.text_encoder_2.present && meta_number(file, "sdnode.text_encoder_2.num_heads", te_heads) && te_heads >= 1)
        info.text_encoder_2.heads = (int)te_heads;

    // Parameters and stored dtypes over canonical tensors; split views share one source.
    std::set<const TensorRecord *> counted;
    for (const auto & t : model.tensors) {
        int64_t n = 1;
        for (int64_t d : t.shape) n *= d;
        switch (t.component) {
            case Component::Unet: info.parameters.unet += n; break;
            case Component::Vae: info.parameters.vae += n; break;
            case Component::TextEncoder: info.parameters.text_encoder += n; break;
            case Component::TextEncoder2: info.parameters.text_encoder_2 += n; break;
            case Component::Taesd: info.parameters.taesd += n; break;
            case Component::ControlNet: break;  // ControlNet files are loaded on their own
        }
        if (counted.insert(t.source).second) ++info.dtypes[dtype_name(t.source->dtype, t.source->type)];
    }
    return info;
}

}  // namespace sd
