// LoRA files: stored names to (module, role), modules to the canonical weights they adapt, and
// every module's delta shape checked against its target before anything is computed.
//
// Naming. A module key loses its component prefix (lora_unet_, lora_te1_, unet., text_encoder_2.,
// model.diffusion_model., ...); what is left is looked up with '.' and '_' alike ("flattened")
// among the model's own layer names in every spelling they have: canonical LDM / HF CLIP names,
// and for the UNet the diffusers names derived from the model's block layout. kohya's names are
// diffusers' (or LDM's) with every dot made an underscore, so one table serves all conventions.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>
#include <unordered_map>

#include "adapters/lora.h"
#include "core/errors.h"
#include "model/model.h"

namespace sd {

namespace {

bool starts_with(const std::string & s, const std::string & p) { return s.size() >= p.size() && s.compare(0, p.size(), p) == 0; }
bool ends_with(const std::string & s, const std::string & p) {
    return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

std::string shape_str(const std::vector<int64_t> & shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

int64_t numel(const std::vector<int64_t> & shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

// Role suffixes, longest first where one ends another.
struct RoleSuffix {
    const char * suffix;
    const char * role;
};
constexpr RoleSuffix kRoles[] = {
    {".lora_linear_layer.down.weight", "lora_down"},
    {".lora_linear_layer.up.weight", "lora_up"},
    {".lora_magnitude_vector.default.weight", "dora_scale"},
    {".lora_magnitude_vector.default", "dora_scale"},
    {".lora_magnitude_vector.weight", "dora_scale"},
    {".lora_magnitude_vector", "dora_scale"},
    {".lora_A.default.weight", "lora_down"},
    {".lora_B.default.weight", "lora_up"},
    {".lora_down.weight", "lora_down"},
    {".lora_mid.weight", "lora_mid"},
    {".lora_up.weight", "lora_up"},
    {".lora.down.weight", "lora_down"},
    {".lora.mid.weight", "lora_mid"},
    {".lora.up.weight", "lora_up"},
    {"_lora.down.weight", "lora_down"},
    {"_lora.up.weight", "lora_up"},
    {".lora_A.weight", "lora_down"},
    {".lora_B.weight", "lora_up"},
    {".weight.lora_down", "lora_down"},  // stable-diffusion.cpp's own spelling
    {".weight.lora_mid", "lora_mid"},
    {".weight.lora_up", "lora_up"},
    {".weight.alpha", "alpha"},
    {".weight.scale", "scale"},
    {".lora_A", "lora_down"},
    {".lora_B", "lora_up"},
    {".dora_scale", "dora_scale"},
    {".alpha", "alpha"},
    {".scale", "scale"},
    {".hada_w1_a", "hada_w1_a"},
    {".hada_w1_b", "hada_w1_b"},
    {".hada_w2_a", "hada_w2_a"},
    {".hada_w2_b", "hada_w2_b"},
    {".hada_t1", "hada_t1"},
    {".hada_t2", "hada_t2"},
    {".lokr_w1_a", "lokr_w1_a"},
    {".lokr_w1_b", "lokr_w1_b"},
    {".lokr_w2_a", "lokr_w2_a"},
    {".lokr_w2_b", "lokr_w2_b"},
    {".lokr_t2", "lokr_t2"},
    {".lokr_w1", "lokr_w1"},
    {".lokr_w2", "lokr_w2"},
    {".diff_b", "diff_b"},
    {".diff", "diff"},
};

// Splits a stored name into module key and role; false when no role suffix matches.
bool split_role(const std::string & name, std::string & key, std::string & role) {
    for (const auto & r : kRoles) {
        if (ends_with(name, r.suffix)) {
            key = name.substr(0, name.size() - std::string(r.suffix).size());
            role = r.role;
            return true;
        }
    }
    return false;
}

enum class Part { Unet, Te1, Te2, Unknown };

struct Prefix {
    const char * prefix;
    Part part;
    const char * naming;
};
// Longest first where one extends another.
constexpr Prefix kPrefixes[] = {
    {"lora_unet_", Part::Unet, "kohya"},
    {"lora_te1_", Part::Te1, "kohya"},
    {"lora_te2_", Part::Te2, "kohya"},
    {"lora_te_", Part::Te1, "kohya"},
    {"model.diffusion_model.", Part::Unet, "ldm"},
    {"diffusion_model.", Part::Unet, "ldm"},
    {"cond_stage_model.1.transformer.", Part::Te2, "ldm"},
    {"cond_stage_model.transformer.", Part::Te1, "ldm"},
    {"conditioner.embedders.0.transformer.", Part::Te1, "ldm"},
    {"text_encoder_2.", Part::Te2, "diffusers"},
    {"text_encoder.", Part::Te1, "diffusers"},
    {"unet.", Part::Unet, "diffusers"},
    {"te2.", Part::Te2, "diffusers"},
    {"te1.", Part::Te1, "diffusers"},
    {"te.", Part::Te1, "diffusers"},
    {"clip_g.", Part::Te2, "diffusers"},
    {"clip_l.", Part::Te1, "diffusers"},
};

// The component a module key names and the key without its prefix.
Part route(std::string & key, std::string & naming) {
    for (const char * wrapper : {"base_model.model.", "lora."}) {
        if (starts_with(key, wrapper)) key = key.substr(std::string(wrapper).size());
    }
    for (const auto & p : kPrefixes) {
        if (starts_with(key, p.prefix)) {
            key = key.substr(std::string(p.prefix).size());
            naming = p.naming;
            return p.part;
        }
    }
    // Without a prefix: a standalone UNet or text-encoder LoRA in diffusers / LDM names.
    naming = "diffusers";
    if (starts_with(key, "text_model.")) return Part::Te1;
    for (const char * h : {"down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "time_embedding.", "add_embedding.",
                           "input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb."}) {
        if (starts_with(key, h)) return Part::Unet;
    }
    return Part::Unknown;
}

std::string flat(std::string s) {
    for (char & c : s)
        if (c == '.') c = '_';
    return s;
}

// LDM ResBlock member names to diffusers'.
std::string diffusers_resnet_rest(const std::string & rest) {
    static const std::pair<const char *, const char *> renames[] = {
        {"in_layers.0.", "norm1."}, {"in_layers.2.", "conv1."}, {"emb_layers.1.", "time_emb_proj."},
        {"out_layers.0.", "norm2."}, {"out_layers.3.", "conv2."}, {"skip_connection.", "conv_shortcut."}};
    for (const auto & rn : renames) {
        if (starts_with(rest, rn.first)) return rn.second + rest.substr(std::string(rn.first).size());
    }
    return rest;
}

// Reads "<digits>.<digits>.rest" into (block, sub, rest).
bool block_indices(const std::string & s, int & block, int & sub, std::string & rest) {
    size_t a = s.find('.');
    if (a == std::string::npos) return false;
    size_t b = s.find('.', a + 1);
    if (b == std::string::npos) return false;
    try {
        block = std::stoi(s.substr(0, a));
        sub = std::stoi(s.substr(a + 1, b - a - 1));
    } catch (...) {
        return false;
    }
    rest = s.substr(b + 1);
    return true;
}

// The diffusers name of a canonical (LDM) UNet tensor, from the model's block layout; "" when it
// has none.
std::string diffusers_unet_name(const std::string & n, const UnetParams & p) {
    static const std::pair<const char *, const char *> tops[] = {
        {"input_blocks.0.0.", "conv_in."}, {"time_embed.0.", "time_embedding.linear_1."},
        {"time_embed.2.", "time_embedding.linear_2."}, {"label_emb.0.0.", "add_embedding.linear_1."},
        {"label_emb.0.2.", "add_embedding.linear_2."}, {"out.0.", "conv_norm_out."}, {"out.2.", "conv_out."}};
    for (const auto & t : tops) {
        if (starts_with(n, t.first)) return t.second + n.substr(std::string(t.first).size());
    }
    const int levels = static_cast<int>(p.num_res_blocks.size());
    int block, sub;
    std::string rest;
    if (starts_with(n, "input_blocks.") && block_indices(n.substr(13), block, sub, rest)) {
        int b = block - 1;
        for (int l = 0; l < levels; ++l) {
            const std::string level = "down_blocks." + std::to_string(l) + ".";
            if (b < p.num_res_blocks[l]) {
                if (sub == 0) return level + "resnets." + std::to_string(b) + "." + diffusers_resnet_rest(rest);
                if (sub == 1) return level + "attentions." + std::to_string(b) + "." + rest;
                return "";
            }
            b -= p.num_res_blocks[l];
            if (l + 1 < levels) {
                if (b == 0) return starts_with(rest, "op.") ? level + "downsamplers.0.conv." + rest.substr(3) : "";
                b -= 1;
            }
        }
        return "";
    }
    if (starts_with(n, "output_blocks.") && block_indices(n.substr(14), block, sub, rest)) {
        int b = block;
        const std::vector<int> & out = p.num_res_blocks_out.empty() ? p.num_res_blocks : p.num_res_blocks_out;
        for (int l = levels - 1; l >= 0; --l) {
            const int n_out = p.num_res_blocks_out.empty() ? out[l] + 1 : out[l];
            const std::string level = "up_blocks." + std::to_string(levels - 1 - l) + ".";
            if (b < n_out) {
                if (sub == 0) return level + "resnets." + std::to_string(b) + "." + diffusers_resnet_rest(rest);
                if (starts_with(rest, "conv.")) return level + "upsamplers.0.conv." + rest.substr(5);
                if (sub == 1) return level + "attentions." + std::to_string(b) + "." + rest;
                return "";
            }
            b -= n_out;
        }
        return "";
    }
    if (starts_with(n, "middle_block.")) {
        const std::string after = n.substr(13);  // "<i>.<rest>"
        const size_t dot = after.find('.');
        if (dot == std::string::npos || dot == 0 || !std::all_of(after.begin(), after.begin() + static_cast<long>(dot), ::isdigit)) return "";
        const int i = std::stoi(after.substr(0, dot));
        const std::string r = after.substr(dot + 1);
        const bool attn = p.transformer_depth_middle > 0;
        if (i == 0) return "mid_block.resnets.0." + diffusers_resnet_rest(r);
        if (i == 1) return attn ? "mid_block.attentions.0." + r : "mid_block.resnets.1." + diffusers_resnet_rest(r);
        if (i == 2) return "mid_block.resnets.1." + diffusers_resnet_rest(r);
    }
    return "";
}

// Flattened layer names of one component -> canonical tensor names (without ".weight").
struct LayerTable {
    Component component;
    const TensorSource * weights = nullptr;
    std::unordered_map<std::string, std::string> by_flat;
};

void add_spelling(LayerTable & t, const std::string & spelling, const std::string & module) {
    t.by_flat.emplace(flat(spelling), module);
}

LayerTable layer_table(const Model & model, Component c) {
    LayerTable t;
    t.component = c;
    t.weights = model.tensors(c);
    for (const std::string & name : model.tensor_names(c)) {
        std::string module;
        if (ends_with(name, ".weight")) module = name.substr(0, name.size() - 7);
        else if (ends_with(name, ".bias")) module = name.substr(0, name.size() - 5);
        else continue;
        add_spelling(t, module, module);
        if (c == Component::Unet) {
            const std::string d = diffusers_unet_name(name, model.info().unet);
            if (!d.empty()) add_spelling(t, d.substr(0, d.size() - (name.size() - module.size())), module);
        }
    }
    return t;
}

std::vector<int64_t> torch_shape(const ggml_tensor * t) {
    std::vector<int64_t> s;
    for (int d = ggml_n_dims(t) - 1; d >= 0; --d) s.push_back(t->ne[d]);
    return s;
}

const TensorRecord * part(const LoraModule & m, const char * role) {
    auto it = m.parts.find(role);
    return it == m.parts.end() ? nullptr : it->second;
}

[[noreturn]] void bad_shape(const std::string & path, const TensorRecord * r, const LoraModule & m, const std::string & why) {
    throw_format(path, "LoRA tensor '" + r->name + "' has shape " + shape_str(r->shape) + ", which does not fit '" +
                           component_name(m.component) + "." + m.target + "' of shape " + shape_str(m.target_shape) + ": " + why);
}

std::vector<int64_t> rest_of(const std::vector<int64_t> & s) { return std::vector<int64_t>(s.begin() + 1, s.end()); }

int64_t cols_of(const TensorRecord * r) { return r->shape.empty() ? 1 : numel(r->shape) / r->shape[0]; }

// The shape of a (rows x [cols...]) product's result: [a_rows] + b's trailing dims.
std::vector<int64_t> product_shape(const TensorRecord * a, const TensorRecord * b) {
    std::vector<int64_t> s = {a->shape.empty() ? 1 : a->shape[0]};
    for (int64_t d : rest_of(b->shape)) s.push_back(d);
    return s;
}

// Checks the factors of `m` fit its target and sets kind and rank. The checks are what the
// delta's computation (lora-apply.cpp) relies on.
void check_module(const std::string & path, LoraModule & m) {
    const std::vector<int64_t> & target = m.target_shape;
    const int64_t out = target.empty() ? 0 : target[0];
    const int64_t target_in = out ? numel(target) / out : 0;
    auto fits = [&](const TensorRecord * r, const std::vector<int64_t> & delta) {
        if (delta.empty() || delta[0] != out || numel(delta) != numel(target)) {
            bad_shape(path, r, m, "its delta would be " + shape_str(delta));
        }
    };
    auto need_2d_rows = [&](const TensorRecord * r) {
        if (r->shape.size() < 2 || r->shape[0] <= 0) bad_shape(path, r, m, "expected a matrix");
    };
    if (const TensorRecord * up = part(m, "lora_up")) {
        const TensorRecord * down = part(m, "lora_down");
        if (!down) throw_format(path, "LoRA module '" + m.key + "' has '" + up->name + "' but no lora_down / lora_A");
        need_2d_rows(up);
        need_2d_rows(down);
        const int64_t rank = down->shape[0];
        m.rank = static_cast<int>(rank);
        const TensorRecord * mid = part(m, "lora_mid");
        if (mid) {
            // Tucker: up [out, r, 1, 1], mid [r, r', kh, kw], down [r', in, 1, 1].
            if (mid->shape.size() != 4 || mid->shape[0] != cols_of(up) || mid->shape[1] != rank) {
                bad_shape(path, mid, m, "expected [" + std::to_string(cols_of(up)) + ", " + std::to_string(rank) + ", kh, kw]");
            }
            if (cols_of(down) != down->shape[1]) bad_shape(path, down, m, "a Tucker lora_down must be 1x1");
            fits(up, {up->shape[0], down->shape[1], mid->shape[2], mid->shape[3]});
            m.kind = "locon";
        } else {
            if (cols_of(up) != rank) bad_shape(path, up, m, "its rank " + std::to_string(cols_of(up)) + " differs from lora_down's " + std::to_string(rank));
            if (up->shape[0] != out) bad_shape(path, up, m, "expected " + std::to_string(out) + " outputs");
            fits(down, product_shape(up, down));
            m.kind = cols_of(down) != (down->shape.size() > 1 ? down->shape[1] : 1) ? "locon" : "lora";
        }
    } else if (const TensorRecord * w1a = part(m, "hada_w1_a")) {
        const TensorRecord * w1b = part(m, "hada_w1_b");
        const TensorRecord * w2a = part(m, "hada_w2_a");
        const TensorRecord * w2b = part(m, "hada_w2_b");
        if (!w1b || !w2a || !w2b) throw_format(path, "LoHa module '" + m.key + "' needs hada_w1_a, hada_w1_b, hada_w2_a and hada_w2_b");
        for (const TensorRecord * r : {w1a, w1b, w2a, w2b}) need_2d_rows(r);
        m.rank = static_cast<int>(w1b->shape[0]);
        for (auto [a, b, t] : {std::tuple{w1a, w1b, part(m, "hada_t1")}, std::tuple{w2a, w2b, part(m, "hada_t2")}}) {
            if (t) {  // Tucker: a [r, out], b [r, in], t [r, r, kh, kw]
                if (t->shape.size() != 4 || t->shape[0] != a->shape[0] || t->shape[1] != b->shape[0]) bad_shape(path, t, m, "does not match its factors");
                fits(a, {cols_of(a), cols_of(b), t->shape[2], t->shape[3]});
            } else {
                if (cols_of(a) != b->shape[0]) bad_shape(path, a, m, "its rank differs from " + b->name + "'s");
                fits(a, product_shape(a, b));
            }
        }
        m.kind = "loha";
    } else if (part(m, "lokr_w1") || part(m, "lokr_w1_a")) {
        // w1 [a, b] (or w1_a [a, r] @ w1_b [r, b]); w2 [c, d(, kh, kw)] (or w2_a @ w2_b, or Tucker).
        int64_t a = 0, b = 0;
        if (const TensorRecord * w1 = part(m, "lokr_w1")) {
            if (w1->shape.size() != 2) bad_shape(path, w1, m, "lokr_w1 must be a matrix");
            a = w1->shape[0], b = w1->shape[1];
        } else {
            const TensorRecord * w1a = part(m, "lokr_w1_a");
            const TensorRecord * w1b = part(m, "lokr_w1_b");
            if (!w1b) throw_format(path, "LoKr module '" + m.key + "' has lokr_w1_a but no lokr_w1_b");
            need_2d_rows(w1a);
            need_2d_rows(w1b);
            if (w1a->shape.size() != 2 || w1b->shape.size() != 2 || w1a->shape[1] != w1b->shape[0]) bad_shape(path, w1a, m, "does not match lokr_w1_b");
            a = w1a->shape[0], b = w1b->shape[1];
            m.rank = static_cast<int>(w1b->shape[0]);
        }
        std::vector<int64_t> w2_shape;
        if (const TensorRecord * w2 = part(m, "lokr_w2")) {
            need_2d_rows(w2);
            w2_shape = w2->shape;
        } else {
            const TensorRecord * w2a = part(m, "lokr_w2_a");
            const TensorRecord * w2b = part(m, "lokr_w2_b");
            if (!w2a || !w2b) throw_format(path, "LoKr module '" + m.key + "' needs lokr_w2 or lokr_w2_a and lokr_w2_b");
            need_2d_rows(w2a);
            need_2d_rows(w2b);
            m.rank = static_cast<int>(w2b->shape[0]);
            if (const TensorRecord * t2 = part(m, "lokr_t2")) {
                if (t2->shape.size() != 4 || t2->shape[0] != w2a->shape[0] || t2->shape[1] != w2b->shape[0]) bad_shape(path, t2, m, "does not match its factors");
                w2_shape = {cols_of(w2a), cols_of(w2b), t2->shape[2], t2->shape[3]};
            } else {
                if (cols_of(w2a) != w2b->shape[0]) bad_shape(path, w2a, m, "its rank differs from lokr_w2_b's");
                w2_shape = product_shape(w2a, w2b);
            }
        }
        std::vector<int64_t> delta = {a * w2_shape[0], b * (w2_shape.size() > 1 ? w2_shape[1] : 1)};
        for (size_t i = 2; i < w2_shape.size(); ++i) delta.push_back(w2_shape[i]);
        fits(part(m, "lokr_w1") ? part(m, "lokr_w1") : part(m, "lokr_w1_a"), delta);
        m.kind = "lokr";
    } else if (const TensorRecord * diff = part(m, "diff")) {
        fits(diff, diff->shape);
        m.kind = "diff";
    } else if (const TensorRecord * diff_b = part(m, "diff_b")) {
        if (numel(diff_b->shape) != numel(target)) bad_shape(path, diff_b, m, "expected " + std::to_string(numel(target)) + " values");
        m.kind = "diff";
    } else {
        throw Error(ErrorCode::Internal, "LoRA module without factors reached the shape check");
    }
    if (const TensorRecord * d = part(m, "dora_scale")) {
        const int64_t n = numel(d->shape);
        if (n != out && n != target_in) {
            bad_shape(path, d, m, "a DoRA magnitude has one value per output (" + std::to_string(out) + ") or per input (" +
                                      std::to_string(target_in) + ")");
        }
        m.dora = true;
    }
    for (const char * scalar : {"alpha", "scale"}) {
        if (const TensorRecord * s = part(m, scalar)) {
            if (numel(s->shape) != 1) bad_shape(path, s, m, std::string(scalar) + " must be a single number");
        }
    }
}

bool has_factors(const std::map<std::string, const TensorRecord *> & parts) {
    for (const char * r : {"lora_up", "lora_down", "hada_w1_a", "lokr_w1", "lokr_w1_a", "diff", "diff_b"}) {
        if (parts.count(r)) return true;
    }
    return false;
}

struct Grouped {
    std::string key;    // as stored
    std::string inner;  // without the component prefix
    Part part = Part::Unknown;
    std::string naming;
    std::map<std::string, const TensorRecord *> parts;
};

// Groups a file's tensors by module; names without a role suffix go to `ignored`.
std::vector<Grouped> group_modules(const ModelFile & file, std::vector<std::pair<std::string, std::string>> & ignored,
                                   std::set<std::string> & namings) {
    std::vector<Grouped> out;
    std::unordered_map<std::string, size_t> index;
    for (const TensorRecord & r : file.tensors) {
        std::string key, role;
        if (!split_role(r.name, key, role)) {
            ignored.emplace_back(r.name, "not a LoRA tensor (no known suffix such as .lora_down.weight, .lora_A.weight, .alpha, .hada_w1_a, .lokr_w1)");
            continue;
        }
        auto it = index.find(key);
        if (it == index.end()) {
            Grouped g;
            g.key = key;
            g.inner = key;
            g.part = route(g.inner, g.naming);
            // The role decides PEFT (lora_A / lora_B) among dotted names.
            if (r.name.find(".lora_A") != std::string::npos || r.name.find(".lora_B") != std::string::npos) g.naming = "peft";
            it = index.emplace(key, out.size()).first;
            out.push_back(std::move(g));
        }
        Grouped & g = out[it->second];
        if (g.parts.count(role)) throw_format(file.path, "LoRA module '" + key + "' has two '" + role + "' tensors");
        g.parts[role] = &r;
    }
    for (const Grouped & g : out) {
        if (g.part != Part::Unknown) namings.insert(g.naming);
    }
    return out;
}

std::string join(const std::set<std::string> & items, const char * sep) {
    std::string s;
    for (const auto & i : items) s += (s.empty() ? "" : sep) + i;
    return s;
}

const char * part_name(Part p) {
    switch (p) {
        case Part::Unet: return "unet";
        case Part::Te1: return "text_encoder";
        case Part::Te2: return "text_encoder_2";
        default: return "unknown";
    }
}

}  // namespace

std::shared_ptr<const LoraFile> open_lora(const std::string & path, const Model & model) {
    auto lf = std::make_shared<LoraFile>();
    lf->path = path;
    lf->file = open_model_file(path);
    std::set<std::string> namings;
    std::vector<Grouped> groups = group_modules(lf->file, lf->ignored, namings);

    // Which model component each part means: the refiner's only encoder is bigG (text_encoder_2).
    std::map<Part, Component> components = {{Part::Unet, Component::Unet}};
    if (model.tensors(Component::TextEncoder)) components[Part::Te1] = Component::TextEncoder;
    if (model.tensors(Component::TextEncoder2)) {
        components[Part::Te2] = Component::TextEncoder2;
        if (!model.tensors(Component::TextEncoder)) components[Part::Te1] = Component::TextEncoder2;
    }
    std::map<Component, LayerTable> tables;
    for (const auto & [p, c] : components) tables.emplace(c, layer_table(model, c));

    std::set<std::string> kinds;
    for (Grouped & g : groups) {
        auto reject = [&](const std::string & why) {
            for (const auto & [role, r] : g.parts) lf->ignored.emplace_back(r->name, why);
        };
        if (g.part == Part::Unknown) { reject("its name has no component this engine knows (lora_unet_, lora_te_, unet., text_encoder., ...)"); continue; }
        auto cit = components.find(g.part);
        if (cit == components.end()) { reject(std::string("the model has no ") + part_name(g.part)); continue; }
        if (!has_factors(g.parts)) { reject("a module without factors (only alpha / scale / dora_scale)"); continue; }
        const LayerTable & table = tables.at(cit->second);
        std::string inner = g.inner;
        const size_t processor = inner.find(".processor");  // diffusers' attention processors
        if (processor != std::string::npos) inner.erase(processor, 10);
        if (ends_with(inner, ".weight")) inner.erase(inner.size() - 7);
        auto it = table.by_flat.find(flat(inner));
        if (it == table.by_flat.end() && ends_with(flat(inner), "to_out")) it = table.by_flat.find(flat(inner) + "_0");
        if (it == table.by_flat.end()) {
            reject(std::string("no layer '") + inner + "' in the model's " + component_name(cit->second));
            continue;
        }
        LoraModule m;
        m.key = g.key;
        m.component = cit->second;
        const bool bias_only = g.parts.size() == 1 && g.parts.count("diff_b");
        m.target = it->second + (bias_only ? ".bias" : ".weight");
        ggml_tensor * t = table.weights->find(m.target);
        if (!t) { reject("the model's layer '" + it->second + "' has no " + (bias_only ? "bias" : "weight")); continue; }
        m.target_shape = torch_shape(t);
        if (m.target_shape.size() == 4 && ggml_n_dims(t) < 4) m.target_shape.resize(static_cast<size_t>(ggml_n_dims(t)));
        m.parts = std::move(g.parts);
        if (!bias_only && m.parts.count("diff_b")) {
            // A bias diff beside the weight's factors: its own module on the bias.
            LoraModule b;
            b.key = m.key;
            b.component = m.component;
            b.target = it->second + ".bias";
            if (ggml_tensor * bt = table.weights->find(b.target)) {
                b.target_shape = torch_shape(bt);
                b.parts["diff_b"] = m.parts.at("diff_b");
                check_module(path, b);
                lf->modules.push_back(std::move(b));
            } else {
                lf->ignored.emplace_back(m.parts.at("diff_b")->name, "the model's layer '" + it->second + "' has no bias");
            }
            m.parts.erase("diff_b");
        }
        check_module(path, m);
        kinds.insert(m.kind);
        if (m.dora) kinds.insert("dora");
        if (m.rank > 0) {
            lf->rank_min = lf->rank_min ? std::min(lf->rank_min, m.rank) : m.rank;
            lf->rank_max = std::max(lf->rank_max, m.rank);
        }
        lf->modules.push_back(std::move(m));
    }
    if (lf->modules.empty()) {
        const std::string sample = lf->file.tensors.empty() ? "" : ", e.g. '" + lf->file.tensors.front().name + "'";
        throw_unsupported(path, "adapts nothing in this " + std::string(arch_name(model.arch())) + " model: none of its " +
                                    std::to_string(lf->file.tensors.size()) + " tensors names one of its layers" + sample +
                                    (lf->ignored.empty() ? "" : " (" + lf->ignored.front().second + ")") +
                                    "; is it a LoRA for another architecture?");
    }
    lf->naming = join(namings, "+");
    lf->kinds.assign(kinds.begin(), kinds.end());
    return lf;
}

LoraReport inspect_lora(const std::string & path, const Model * model) {
    LoraReport report;
    report.path = path;
    if (model) {
        std::shared_ptr<const LoraFile> lf = open_lora(path, *model);
        report.format = lf->file.format;
        report.naming = lf->naming;
        report.kinds = lf->kinds;
        report.rank_min = lf->rank_min;
        report.rank_max = lf->rank_max;
        report.tensor_count = lf->file.tensors.size();
        report.metadata = lf->file.metadata;
        report.ignored = lf->ignored;
        for (const LoraModule & m : lf->modules) {
            report.targets.push_back({m.key, component_name(m.component), m.target, m.kind, m.rank, m.target_shape});
        }
        return report;
    }
    ModelFile file = open_model_file(path);
    report.format = file.format;
    report.tensor_count = file.tensors.size();
    report.metadata = file.metadata;
    std::set<std::string> namings, kinds;
    for (const Grouped & g : group_modules(file, report.ignored, namings)) {
        if (g.part == Part::Unknown) {
            for (const auto & [role, r] : g.parts) report.ignored.emplace_back(r->name, "its name has no component this engine knows");
            continue;
        }
        if (!has_factors(g.parts)) continue;
        std::string kind = g.parts.count("lora_up") ? "lora" : g.parts.count("hada_w1_a") ? "loha"
                           : (g.parts.count("lokr_w1") || g.parts.count("lokr_w1_a")) ? "lokr" : "diff";
        int rank = 0;
        if (const auto it = g.parts.find("lora_down"); it != g.parts.end() && !it->second->shape.empty()) {
            rank = static_cast<int>(it->second->shape[0]);
            if (it->second->shape.size() == 4 && it->second->shape[2] * it->second->shape[3] > 1) kind = "locon";
        }
        if (g.parts.count("lora_mid")) kind = "locon";
        if (const auto it = g.parts.find("hada_w1_b"); it != g.parts.end() && !it->second->shape.empty()) rank = static_cast<int>(it->second->shape[0]);
        kinds.insert(kind);
        if (g.parts.count("dora_scale")) kinds.insert("dora");
        if (rank > 0) {
            report.rank_min = report.rank_min ? std::min(report.rank_min, rank) : rank;
            report.rank_max = std::max(report.rank_max, rank);
        }
        report.targets.push_back({g.key, part_name(g.part), g.inner, kind, rank, {}});
    }
    report.naming = join(namings, "+");
    report.kinds.assign(kinds.begin(), kinds.end());
    return report;
}

}  // namespace sd
