#include "components/controlnet.h"

#include <algorithm>
#include <array>
#include <set>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "components/components.h"
#include "core/errors.h"
#include "core/log.h"
#include "model/model.h"
#include "model/options.h"
#include "runtime/backend.h"

namespace sd {

namespace {

std::atomic<uint64_t> next_id{1};

std::string str(int v) { return std::to_string(v); }

std::string list_text(const std::vector<int> & v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + str(v[i]);
    return s + "]";
}

const CanonicalTensor & require(const ModelFile & file, const CanonicalModel & m, const std::string & name, size_t dims) {
    const CanonicalTensor * t = m.find(Component::ControlNet, name);
    if (!t) throw_format(file.path, "ControlNet tensor '" + name + "' is missing");
    if (t->shape.size() != dims) {
        throw_format(file.path, "ControlNet tensor '" + name + "' has " + str(static_cast<int>(t->shape.size())) +
                                    " dimensions; expected " + str(static_cast<int>(dims)));
    }
    return *t;
}

bool has_prefix(const CanonicalModel & m, const std::string & prefix) {
    for (const auto & t : m.tensors)
        if (t.name.compare(0, prefix.size(), prefix) == 0) return true;
    return false;
}

int count_prefix(const CanonicalModel & m, const std::string & prefix, const std::string & suffix) {
    int n = 0;
    while (m.find(Component::ControlNet, prefix + str(n) + suffix)) ++n;
    return n;
}

bool meta_int(const ModelFile & file, const char * key, int & out) {
    const std::string * v = file.meta(key);
    if (!v || v->empty() || v->size() > 16) return false;
    char * end = nullptr;
    const long x = std::strtol(v->c_str(), &end, 10);
    if (end != v->c_str() + v->size() || x < 1 || x > 100000) return false;
    out = static_cast<int>(x);
    return true;
}

// The encoder's structure from its tensors, as arch.cpp reads a UNet's.
UnetParams detect(const ModelFile & file, const CanonicalModel & m, int & hint_channels) {
    UnetParams p;
    p.present = true;
    const auto & conv_in = require(file, m, "input_blocks.0.0.weight", 4);  // [mc, in, 3, 3]
    const auto & temb = require(file, m, "time_embed.0.weight", 2);       // [temb, mc]
    hint_channels = static_cast<int>(require(file, m, "input_hint_block.0.weight", 4).shape[1]);
    p.model_channels = static_cast<int>(conv_in.shape[0]);
    p.in_channels = static_cast<int>(conv_in.shape[1]);
    p.out_channels = p.in_channels;
    p.time_embed_dim = static_cast<int>(temb.shape[0]);
    if (m.find(Component::ControlNet, "label_emb.0.0.weight")) {
        p.adm_in_channels = static_cast<int>(require(file, m, "label_emb.0.0.weight", 2).shape[1]);
    }
    if (p.model_channels <= 0) throw_format(file.path, "ControlNet input_blocks.0.0.weight has no output channels");
    p.channel_mult = {0};
    p.num_res_blocks = {0};
    p.transformer_depth = {0};
    for (int index = 1; has_prefix(m, "input_blocks." + str(index) + "."); ++index) {
        const std::string block = "input_blocks." + str(index) + ".";
        if (has_prefix(m, block + "0.op.")) {
            p.channel_mult.push_back(0);
            p.num_res_blocks.push_back(0);
            p.transformer_depth.push_back(0);
            continue;
        }
        if (p.num_res_blocks.back() == 0) {
            const auto & conv = require(file, m, block + "0.in_layers.2.weight", 4);
            if (conv.shape[0] % p.model_channels != 0) {
                throw_format(file.path, "ControlNet block '" + block + "0' has " + std::to_string(conv.shape[0]) +
                                            " channels; expected a multiple of model_channels " + str(p.model_channels));
            }
            p.channel_mult.back() = static_cast<int>(conv.shape[0] / p.model_channels);
        }
        ++p.num_res_blocks.back();
        p.transformer_depth.back() = std::max(p.transformer_depth.back(), count_prefix(m, block + "1.transformer_blocks.", ".norm1.weight"));
        if (p.channel_mult.size() > 8) throw_format(file.path, "ControlNet has more than 8 resolution levels");
    }
    if (p.num_res_blocks.back() == 0) throw_format(file.path, "ControlNet's last level has no resnet block");
    p.num_res_blocks_out = p.num_res_blocks;
    p.has_middle_block = has_prefix(m, "middle_block.");
    p.transformer_depth_middle = p.has_middle_block ? count_prefix(m, "middle_block.1.transformer_blocks.", ".norm1.weight") : 0;
    p.context_dim = 0;
    for (const auto & t : m.tensors) {
        const std::string & n = t.name;
        if (p.context_dim == 0 && n.size() > 17 && n.compare(n.size() - 17, 17, "attn2.to_k.weight") == 0 && t.shape.size() == 2) {
            p.context_dim = static_cast<int>(t.shape[1]);
        }
        if (n.size() > 14 && n.compare(n.size() - 14, 14, "proj_in.weight") == 0) p.use_linear_projection = t.shape.size() == 2;
    }
    if (p.context_dim == 0) throw_format(file.path, "ControlNet has no cross-attention (no attn2.to_k.weight tensor)");
    // Heads as a UNet of this context width has them (the file cannot say; sdnode metadata can).
    if (p.context_dim == 768) { p.num_heads = 8; p.num_head_channels = -1; }
    else { p.num_heads = -1; p.num_head_channels = 64; }
    int v = 0;
    if (meta_int(file, "sdnode.unet.num_heads", v)) { p.num_heads = v; p.num_head_channels = -1; }
    if (meta_int(file, "sdnode.unet.num_head_channels", v)) { p.num_head_channels = v; p.num_heads = -1; }
    return p;
}

// Stride of the hint block's convolution 2k (three of them halve the image).
int hint_stride(int k) { return (k == 2 || k == 4 || k == 6) ? 2 : 1; }
constexpr int kHintConvs = 8;

}  // namespace

ControlNet::~ControlNet() = default;

const char * ControlNet::family() const {
    switch (params_.context_dim) {
        case 768: return "sd1";
        case 1024: return "sd2";
        case 2048: return "sdxl";
        default: return "unknown";
    }
}

int ControlNet::control_count() const {
    int blocks = 1;
    for (int n : params_.num_res_blocks) blocks += n;
    blocks += static_cast<int>(params_.channel_mult.size()) - 1;
    return blocks + (params_.has_middle_block ? 1 : 0);
}

void ControlNet::check_files_unchanged() const {
    for (const auto & f : weights_.mapped_files()) {
        const std::string what = f->changed_since_open();
        if (!what.empty()) {
            throw Error(ErrorCode::Io, f->path() + " changed since the ControlNet was loaded: " + what + "; load it again", f->path());
        }
    }
}

void ControlNet::check_fits(const UnetParams & u, const std::string & what) const {
    const UnetParams & c = params_;
    auto refuse = [&](const std::string & detail) {
        throw_invalid(what + " (" + path_ + ", a " + family() + " ControlNet) does not fit this model's UNet: " + detail);
    };
    if (c.context_dim != u.context_dim) {
        refuse("its context width is " + str(c.context_dim) + ", the UNet's " + str(u.context_dim));
    }
    if (c.in_channels != u.out_channels) {
        refuse("it takes " + str(c.in_channels) + " latent channels, the UNet works on " + str(u.out_channels));
    }
    if (c.model_channels != u.model_channels || c.channel_mult != u.channel_mult) {
        refuse("its channels are " + str(c.model_channels) + " x " + list_text(c.channel_mult) + ", the UNet's " +
               str(u.model_channels) + " x " + list_text(u.channel_mult));
    }
    if (c.num_res_blocks != u.num_res_blocks) {
        refuse("its res blocks per level are " + list_text(c.num_res_blocks) + ", the UNet's " + list_text(u.num_res_blocks));
    }
    if (c.has_middle_block != u.has_middle_block) {
        refuse(std::string("it has ") + (c.has_middle_block ? "a" : "no") + " middle block, the UNet " + (u.has_middle_block ? "has one" : "none"));
    }
    if ((c.adm_in_channels > 0) != (u.adm_in_channels > 0) || (c.adm_in_channels > 0 && c.adm_in_channels != u.adm_in_channels)) {
        refuse("its label embedding takes " + str(c.adm_in_channels) + " values, the UNet's " + str(u.adm_in_channels));
    }
}

ggml_tensor * ControlNet::build_hint(Graph & g, ggml_tensor * hint) const {
    if (hint->ne[2] != hint_channels_ || hint->ne[0] % 8 != 0 || hint->ne[1] % 8 != 0) {
        throw_invalid("ControlNet hint must be " + str(hint_channels_) + " channels at a multiple of 8 in size; received " +
                      std::to_string(hint->ne[0]) + "x" + std::to_string(hint->ne[1]) + "x" + std::to_string(hint->ne[2]));
    }
    ggml_tensor * h = hint;
    for (int k = 0; k < kHintConvs; ++k) {
        if (k > 0) h = ggml_silu(g.ctx, h);
        h = conv2d(g, h, "input_hint_block." + str(2 * k), hint_stride(k), 1);
    }
    if (h->ne[2] != params_.model_channels) {
        throw Error(ErrorCode::ModelFormat, "input_hint_block.14 gives " + std::to_string(h->ne[2]) + " channels; input_blocks.0.0 " +
                                                str(params_.model_channels));
    }
    return named(h, "controlnet.guided_hint");
}

std::vector<ggml_tensor *> ControlNet::build(Graph & g, const Unet::GraphInputs & in, ggml_tensor * guided, float strength) const {
    const UnetParams & p = params_;
    ggml_tensor * emb = unet_time_embedding(g, p, in.timesteps, in.y);
    ggml_tensor * h = conv2d(g, in.x, "input_blocks.0.0", 1, 1);
    if (guided->ne[0] != h->ne[0] || guided->ne[1] != h->ne[1] || guided->ne[2] != h->ne[2] || guided->ne[3] != 1) {
        throw_invalid("ControlNet guided hint " + std::to_string(guided->ne[0]) + "x" + std::to_string(guided->ne[1]) + "x" +
                      std::to_string(guided->ne[2]) + " does not match the latent's first block " + std::to_string(h->ne[0]) + "x" +
                      std::to_string(h->ne[1]) + "x" + std::to_string(h->ne[2]));
    }
    h = named(ggml_add(g.ctx, h, guided), "controlnet.input_blocks.0");  // the hint broadcast over the batch
    std::vector<ggml_tensor *> blocks = {h};
    ggml_tensor * mid = unet_encoder(g, p, h, emb, in.context, blocks);
    std::vector<ggml_tensor *> outs;
    for (size_t i = 0; i < blocks.size(); ++i) {
        outs.push_back(conv2d(g, blocks[i], "zero_convs." + std::to_string(i) + ".0"));
    }
    if (p.has_middle_block) outs.push_back(conv2d(g, mid, "middle_block_out.0"));
    for (size_t i = 0; i < outs.size(); ++i) {
        // What the reference's UNet does to each (ggml_ext_scale): the same f32 product.
        outs[i] = named(ggml_scale(g.ctx, outs[i], strength), "controlnet.out." + std::to_string(i));
    }
    return outs;
}

HostTensor ControlNet::hint(GraphRunner & runner, const HostTensor & image) const {
    const std::string key = "controlnet" + std::to_string(id_) + ":hint:" + std::to_string(image.ne[0]) + "x" + std::to_string(image.ne[1]);
    return runner.run(key, [&](GraphBuilder & b) {
        Graph g = component_graph(b, *tensors_, runner);
        ggml_tensor * x = b.input_f32("hint", image.data.data(), image.ne[0], image.ne[1], image.ne[2], 1);
        return build_hint(g, x);
    });
}

std::vector<HostTensor> ControlNet::forward(GraphRunner & runner, const UnetInput & in, const HostTensor & guided, float strength) const {
    const HostTensor & x = in.x;
    if (x.ne[2] != params_.in_channels) {
        throw_invalid("ControlNet takes " + str(params_.in_channels) + " latent channels; received " + std::to_string(x.ne[2]));
    }
    if (in.context.ne[0] != params_.context_dim) {
        throw_invalid("ControlNet context width is " + str(params_.context_dim) + "; received " + std::to_string(in.context.ne[0]));
    }
    if ((params_.adm_in_channels > 0) != !in.y.data.empty()) throw_invalid("ControlNet label vector y does not match its label embedding");
    if (static_cast<int64_t>(in.timesteps.size()) != x.ne[3] || in.context.ne[2] != x.ne[3]) {
        throw_invalid("ControlNet needs one timestep and one context per batch item");
    }
    std::string key = "controlnet" + std::to_string(id_) + ":" + std::to_string(x.ne[0]) + "x" + std::to_string(x.ne[1]) + "x" +
                      std::to_string(x.ne[3]) + ":" + std::to_string(in.context.ne[1]);
    // Every residual, flattened and concatenated into the graph's one output; split here.
    std::vector<std::array<int64_t, 4>> shapes;
    HostTensor all = runner.run(key, [&](GraphBuilder & b) {
        Graph g = component_graph(b, *tensors_, runner);
        Unet::GraphInputs gi;
        gi.x = b.input_f32("x", x.data.data(), x.ne[0], x.ne[1], x.ne[2], x.ne[3]);
        declare_unet_inputs(b, g, in, gi);
        ggml_tensor * gh = b.input_f32("guided_hint", guided.data.data(), guided.ne[0], guided.ne[1], guided.ne[2], guided.ne[3]);
        std::vector<ggml_tensor *> outs = build(g, gi, gh, strength);
        shapes.clear();
        ggml_tensor * cat = nullptr;
        for (ggml_tensor * o : outs) {
            shapes.push_back({o->ne[0], o->ne[1], o->ne[2], o->ne[3]});
            ggml_tensor * flat = ggml_reshape_1d(g.ctx, o, ggml_nelements(o));
            cat = cat ? ggml_concat(g.ctx, cat, flat, 0) : flat;
        }
        return cat;
    });
    std::vector<HostTensor> out;
    size_t offset = 0;
    for (const auto & s : shapes) {
        HostTensor t;
        for (int d = 0; d < 4; ++d) t.ne[d] = s[d];
        const size_t n = static_cast<size_t>(t.numel());
        if (offset + n > all.data.size()) throw Error(ErrorCode::Internal, "ControlNet outputs are shorter than their shapes");
        t.data.assign(all.data.begin() + static_cast<std::ptrdiff_t>(offset), all.data.begin() + static_cast<std::ptrdiff_t>(offset + n));
        offset += n;
        out.push_back(std::move(t));
    }
    return out;
}

std::shared_ptr<const ControlNet> ControlNet::load(const std::string & path, const ControlNetLoadOptions & options) {
    if (options.threads < limits::kThreadsMin || options.threads > limits::kThreadsMax) {
        throw_invalid("threads must be an integer from " + std::to_string(limits::kThreadsMin) + " to " +
                      std::to_string(limits::kThreadsMax) + "; received " + std::to_string(options.threads));
    }
    std::shared_ptr<ControlNet> c(new ControlNet());
    c->id_ = next_id++;
    c->file_ = open_model_file(path);
    c->path_ = c->file_.path;
    c->canonical_ = canonicalize_controlnet(c->file_);
    if (!c->canonical_.find(Component::ControlNet, "input_hint_block.0.weight")) {
        const bool checkpoint = canonicalize(c->file_).has(Component::Unet);
        throw_unsupported(c->path_, std::string("is not a ControlNet: no input_hint_block.0.weight (LDM) or "
                                                "controlnet_cond_embedding.conv_in.weight (diffusers) among its ") +
                                        std::to_string(c->file_.tensors.size()) + " tensors" +
                                        (checkpoint ? "; it looks like a Stable Diffusion checkpoint (load it with loadModel)" : ""));
    }
    c->params_ = detect(c->file_, c->canonical_, c->hint_channels_);
    // Every tensor the graphs use, checked for shape on metadata before any weight is read.
    {
        const ShapeSource shapes(c->canonical_, Component::ControlNet, options.weight_type);
        std::set<std::string> used;
        const UnetParams & p = c->params_;
        const int64_t m = int64_t(1) << (p.channel_mult.size() - 1);
        try {
            used = trace_graph(shapes, "controlnet", [&](Graph & g) {
                ggml_tensor * image = ggml_new_tensor_4d(g.ctx, GGML_TYPE_F32, 8 * m, 8 * m, c->hint_channels_, 1);
                ggml_tensor * guided = c->build_hint(g, image);
                Unet::GraphInputs in;
                in.x = ggml_new_tensor_4d(g.ctx, GGML_TYPE_F32, m, m, p.in_channels, 1);
                in.timesteps = ggml_new_tensor_1d(g.ctx, GGML_TYPE_F32, 1);
                in.context = ggml_new_tensor_3d(g.ctx, GGML_TYPE_F32, p.context_dim, 77, 1);
                if (p.adm_in_channels > 0) in.y = ggml_new_tensor_2d(g.ctx, GGML_TYPE_F32, p.adm_in_channels, 1);
                c->build(g, in, guided, 1.0f);
            });
        } catch (const Error & e) {
            if (e.code() == ErrorCode::ModelFormat) throw_format(c->path_, e.what());
            throw;
        }
        c->unused_ = sd::unused_tensors(c->canonical_, Component::ControlNet, used);
    }
    if (!c->canonical_.unknown.empty()) {
        c->warnings_.push_back(std::to_string(c->canonical_.unknown.size()) + " tensor(s) the name table does not know were ignored, e.g. '" +
                               c->canonical_.unknown.front() + "'");
    }
    if (!c->unused_.empty()) c->warnings_.push_back(std::to_string(c->unused_.size()) + " tensor(s) the ControlNet does not use were ignored, e.g. '" + c->unused_.front() + "'");
    c->load_backend_ = init_backend(options.device);
    c->device_ = ggml_backend_get_device(c->load_backend_.get());
    log(LogLevel::Info, "loading ControlNet " + c->path_ + " on " + std::string(ggml_backend_dev_name(c->device_)));
    WeightLoadOptions wo;
    wo.weight_type = options.weight_type;
    wo.threads = std::min(options.threads, logical_cpu_count());
    wo.abort = options.abort;
    const char * mmap = std::getenv("SDNODE_MMAP");
    wo.map_from_file = ggml_backend_dev_type(c->device_) == GGML_BACKEND_DEVICE_TYPE_CPU && !(mmap && std::string(mmap) == "0");
    if (options.progress) wo.progress = [&](uint64_t done, uint64_t total) { options.progress(total ? double(done) / double(total) : 1.0); };
    c->weights_ = load_component(c->canonical_, Component::ControlNet, c->load_backend_.get(), wo);
    c->tensors_ = std::make_unique<ComponentTensors>(c->weights_);
    for (auto & t : c->file_.tensors) t.file.reset();
    c->file_.files.clear();
    if (options.progress) options.progress(1.0);
    return c;
}

// ---------------------------------------------------------------- Canny

namespace {

constexpr float kPi = 3.14159265358979323846f;

// A single-channel float image, x fastest.
struct Plane {
    int w, h;
    std::vector<float> v;
    Plane(int w_, int h_) : w(w_), h(h_), v(static_cast<size_t>(w_) * h_, 0.0f) {}
    float & at(int x, int y) { return v[static_cast<size_t>(y) * w + x]; }
    float at(int x, int y) const { return v[static_cast<size_t>(y) * w + x]; }
};

// Correlation with a k x k kernel (kernel[ky * k + kx]), zeros outside, sums in kernel order.
Plane correlate(const Plane & in, const std::vector<float> & kernel, int k, int padding) {
    Plane out(in.w, in.h);
    for (int y = 0; y < in.h; ++y) {
        for (int x = 0; x < in.w; ++x) {
            float sum = 0.0f;
            for (int ky = 0; ky < k; ++ky) {
                const int iy = y + ky - padding;
                if (iy < 0 || iy >= in.h) continue;
                for (int kx = 0; kx < k; ++kx) {
                    const int ix = x + kx - padding;
                    if (ix < 0 || ix >= in.w) continue;
                    sum += in.at(ix, iy) * kernel[static_cast<size_t>(ky) * k + kx];
                }
            }
            out.at(x, y) = sum;
        }
    }
    return out;
}

float max_of(const Plane & p) {
    float m = -std::numeric_limits<float>::infinity();
    for (float x : p.v) m = std::max(m, x);
    return m;
}

}  // namespace

void preprocess_canny(std::vector<uint8_t> & pixels, int width, int height, int channels, const CannyParams & params) {
    if (width <= 0 || height <= 0 || (channels != 1 && channels != 3 && channels != 4) ||
        pixels.size() != static_cast<size_t>(width) * height * channels) {
        throw_invalid("canny needs a 1-, 3- or 4-channel image of width * height pixels");
    }
    const float high = static_cast<float>(params.high_threshold), low = static_cast<float>(params.low_threshold);
    const float weak = static_cast<float>(params.weak), strong = static_cast<float>(params.strong);
    // Gray, in the reference's weights, from values / 255.
    Plane gray(width, height);
    for (int y = 0; y < height; ++y) {
        for (int x = 0; x < width; ++x) {
            const uint8_t * px = &pixels[(static_cast<size_t>(y) * width + x) * channels];
            const float r = px[0] / 255.0f, g = px[channels >= 3 ? 1 : 0] / 255.0f, b = px[channels >= 3 ? 2 : 0] / 255.0f;
            gray.at(x, y) = 0.2989f * r + 0.5870f * g + 0.1140f * b;
        }
    }
    // 5x5 Gaussian, sigma 1.4, not renormalized (the reference's).
    const float sigma = 1.4f;
    const float normal = 1.f / (2.0f * kPi * std::pow(sigma, 2.0f));
    std::vector<float> gauss(25);
    for (int ky = 0; ky < 5; ++ky) {
        for (int kx = 0; kx < 5; ++kx) {
            const float a = static_cast<float>(ky - 2), b = static_cast<float>(kx - 2);
            gauss[static_cast<size_t>(ky) * 5 + kx] = std::exp(-((a * a + b * b) / (2.0f * std::pow(sigma, 2.0f)))) * normal;
        }
    }
    gray = correlate(gray, gauss, 5, 2);
    const Plane ix = correlate(gray, {-1, 0, 1, -2, 0, 2, -1, 0, 1}, 3, 1);
    const Plane iy = correlate(gray, {1, 2, 1, 0, 0, 0, -1, -2, -1}, 3, 1);
    Plane mag(width, height), theta(width, height);
    for (size_t i = 0; i < mag.v.size(); ++i) {
        mag.v[i] = std::sqrt(ix.v[i] * ix.v[i] + iy.v[i] * iy.v[i]);
        theta.v[i] = std::atan2(iy.v[i], ix.v[i]);
    }
    const float mmax = max_of(mag);
    if (mmax != 0.0f && std::isfinite(mmax)) {
        const float inv = 1.0f / mmax;
        for (float & v : mag.v) v *= inv;
    }
    // Non-maximum suppression with the reference's angle tests, as written there (its first test
    // holds for every angle up to 157.5 degrees; past it a pixel is compared with 1).
    Plane edges(width, height);
    for (int y = 1; y < height - 1; ++y) {
        for (int x = 1; x < width - 1; ++x) {
            float angle = theta.at(x, y) * 180.0f / kPi;
            angle = angle < 0.0f ? angle + 180.0f : angle;
            float q = 1.0f, r = 1.0f;
            if ((0 >= angle && angle < 22.5f) || (157.5f >= angle && angle <= 180.0f)) {
                q = mag.at(x, y + 1);
                r = mag.at(x, y - 1);
            } else if (22.5f >= angle && angle < 67.5f) {
                q = mag.at(x + 1, y - 1);
                r = mag.at(x - 1, y + 1);
            } else if (67.5f >= angle && angle < 112.5f) {
                q = mag.at(x + 1, y);
                r = mag.at(x - 1, y);
            } else if (112.5f >= angle && angle < 157.5f) {
                q = mag.at(x - 1, y - 1);
                r = mag.at(x + 1, y + 1);
            }
            const float cur = mag.at(x, y);
            edges.at(x, y) = (cur >= q && cur >= r) ? cur : 0.0f;
        }
    }
    // Double threshold, a 3-pixel border cleared, then weak pixels next to strong ones kept.
    const float ht = max_of(edges) * high;
    const float lt = ht * low;
    for (float & v : edges.v) {
        if (v >= ht) v = strong;
        else if (v <= ht && v >= lt) v = weak;
    }
    for (int y = 0; y < height; ++y) {
        for (int x = 0; x < width; ++x) {
            if (!(x >= 3 && x <= width - 3 && y >= 3 && y <= height - 3)) edges.at(x, y) = 0.0f;
        }
    }
    for (int y = 1; y < height - 1; ++y) {
        for (int x = 1; x < width - 1; ++x) {
            if (edges.at(x, y) != weak) continue;
            const bool strong_neighbor = edges.at(x + 1, y - 1) == strong || edges.at(x + 1, y) == strong ||
                                         edges.at(x, y - 1) == strong || edges.at(x, y + 1) == strong ||
                                         edges.at(x - 1, y - 1) == strong || edges.at(x - 1, y) == strong;
            edges.at(x, y) = strong_neighbor ? strong : 0.0f;
        }
    }
    const int colors = channels == 4 ? 3 : channels;
    for (int y = 0; y < height; ++y) {
        for (int x = 0; x < width; ++x) {
            float v = edges.at(x, y);
            if (params.inverse) v = 1.0f - v;
            const uint8_t byte = v <= 0.0f ? 0 : v >= 1.0f ? 255 : static_cast<uint8_t>(v * 255.0f + 0.5f);
            uint8_t * px = &pixels[(static_cast<size_t>(y) * width + x) * channels];
            for (int c = 0; c < colors; ++c) px[c] = byte;
        }
    }
}

}  // namespace sd
