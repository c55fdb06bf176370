// Opt-in: the graphs against stable-diffusion.cpp's numbers on the full-size random SD1.5
// checkpoint (../shared/reference/README.md). Runs only when SDNODE_SD15_CHECKPOINT points at
// the file written by make-sd15-random.py; SDNODE_REFERENCE_DIR overrides the cases folder.
//
// Per case: cond/uncond conditioning (relative L2 < 0.5%), the step-0 UNet output for both
// (< 0.5%), and the VAE decode of final_latent vs image.png (PSNR > 40 dB; the PNG is decoded
// by tools/png-to-rgb8.py through python3, skipped when python3 is missing).
//
// The checkpoint is read by a minimal safetensors reader below (SD1 LDM prefixes only), placed
// with the engine's type rules (sd::placed_type), so it does not depend on the model-file reader.
//
// These random-weight networks are chaotic: a 1e-5 relative nudge to the UNet input moves its
// output ~0.4% (f16) or ~1.2% (q8_0, whose activations are re-quantized per layer). So the bounds
// hold only when ggml computes bit for bit as the reference did, or nearly: on CPUs with AMX the
// f16 models' products sum in another order (~1e-7 apart), which these networks turn into
// ~0.04% (text encoder) and ~0.1% (step-0 UNet); quantized models keep ggml's arithmetic. With
// matching placement, f32-accumulating f16 dot products and SDNODE_CPU_AMX=0 every figure here
// is 0.0000%. ggml compiled with
// AVX512-FP16 (-march=native on Sapphire Rapids and later) accumulates f16 dot products in f16:
// the f16 cases then land near 0.3% and q8_0 near 1.1%; main() probes for it and says so.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <map>
#include <sstream>

#include "check.h"
#include "core/errors.h"
#include "ggml-alloc.h"
#include "ggml-cpu.h"
#include "graph-fixtures.h"
#include "runtime/graph-runner.h"
#include "components/text-encoder.h"
#include "text/tokenizer.h"
#include "components/controlnet.h"
#include "components/unet.h"
#include "components/taesd.h"
#include "components/vae.h"
#include "model/weights.h"

namespace {

std::string read_text(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return {};
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

// The string value of "key": "..." in a flat JSON object (handles \" and \\ only).
std::string json_string(const std::string & json, const std::string & key) {
    size_t at = json.find("\"" + key + "\"");
    if (at == std::string::npos) return {};
    at = json.find('"', json.find(':', at) + 1);
    std::string out;
    for (size_t i = at + 1; i < json.size() && json[i] != '"'; ++i) {
        if (json[i] == '\\' && i + 1 < json.size()) ++i;
        out += json[i];
    }
    return out;
}

std::vector<float> read_f32(const std::string & path) {
    std::string bytes = read_text(path);
    std::vector<float> v(bytes.size() / 4);
    std::memcpy(v.data(), bytes.data(), v.size() * 4);
    return v;
}

std::vector<int64_t> read_shape(const std::string & path) {
    std::istringstream s(read_text(path));
    std::vector<int64_t> ne;
    int64_t d;
    while (s >> d) ne.push_back(d);
    while (ne.size() < 4) ne.push_back(1);
    return ne;
}

sd::HostTensor read_tensor(const std::string & stem) {
    sd::HostTensor t;
    t.data = read_f32(stem + ".f32");
    auto ne = read_shape(stem + ".shape");
    for (int i = 0; i < 4; ++i) t.ne[i] = ne[i];
    return t;
}

// One component's tensors, read from a safetensors file and placed on the backend.
class FileWeights : public sd::TensorSource {
public:
    ~FileWeights() override {
        if (buffer_) ggml_backend_buffer_free(buffer_);
        if (ctx_) ggml_free(ctx_);
    }
    bool quantized() const override { return sd::any_quantized(map_); }
    ggml_tensor * find(const std::string & name) const override {
        auto it = map_.find(name);
        return it == map_.end() ? nullptr : it->second;
    }

    struct Record {
        std::string name;
        std::vector<int64_t> shape;
        uint64_t begin, end;
    };
    void load(std::ifstream & file, uint64_t data_start, const std::vector<Record> & records, sd::Component component,
              ggml_backend_t backend, std::optional<ggml_type> requested) {
        ggml_init_params p{ggml_tensor_overhead() * (records.size() + 1), nullptr, true};
        ctx_ = ggml_init(p);
        std::vector<ggml_tensor *> tensors;
        for (const auto & r : records) {
            int64_t ne[4] = {1, 1, 1, 1};
            for (size_t d = 0; d < r.shape.size(); ++d) ne[d] = r.shape[r.shape.size() - 1 - d];
            ggml_type type = sd::placed_type(component, r.name, r.shape, GGML_TYPE_F16, requested);
            ggml_tensor * t = ggml_new_tensor(ctx_, type, static_cast<int>(r.shape.size()), ne);
            ggml_set_name(t, r.name.c_str());
            map_[r.name] = t;
            tensors.push_back(t);
        }
        buffer_ = ggml_backend_alloc_ctx_tensors(ctx_, backend);
        std::vector<ggml_fp16_t> half;
        std::vector<float> f32;
        std::vector<uint8_t> packed;
        for (size_t i = 0; i < records.size(); ++i) {
            const auto & r = records[i];
            ggml_tensor * t = tensors[i];
            half.resize((r.end - r.begin) / 2);
            file.seekg(static_cast<std::streamoff>(data_start + r.begin));
            file.read(reinterpret_cast<char *>(half.data()), static_cast<std::streamsize>(r.end - r.begin));
            if (t->type == GGML_TYPE_F16) {
                ggml_backend_tensor_set(t, half.data(), 0, ggml_nbytes(t));
                continue;
            }
            f32.resize(half.size());
            ggml_fp16_to_fp32_row(half.data(), f32.data(), static_cast<int64_t>(half.size()));
            if (t->type == GGML_TYPE_F32) {
                ggml_backend_tensor_set(t, f32.data(), 0, ggml_nbytes(t));
            } else {
                packed.resize(ggml_nbytes(t));
                ggml_quantize_chunk(t->type, f32.data(), packed.data(), 0, ggml_nelements(t) / t->ne[0], t->ne[0], nullptr);
                ggml_backend_tensor_set(t, packed.data(), 0, packed.size());
            }
        }
    }

private:
    ggml_context * ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    std::map<std::string, ggml_tensor *> map_;
};

struct Sd15 {
    FileWeights unet, vae, text;
};

// The tensors of a safetensors file the make-*.py scripts write (F16 only), with full names;
// data_start: where their bytes begin.
std::vector<FileWeights::Record> read_records(std::ifstream & file, uint64_t & data_start) {
    uint64_t header_len = 0;
    file.read(reinterpret_cast<char *>(&header_len), 8);
    std::string header(header_len, '\0');
    file.read(&header[0], static_cast<std::streamsize>(header_len));
    std::vector<FileWeights::Record> records;
    // Entries: "name":{"dtype":"F16","shape":[...],"data_offsets":[a,b]}
    size_t pos = 0;
    while ((pos = header.find("\"dtype\"", pos)) != std::string::npos) {
        size_t name_end = header.rfind("\":{", pos);
        size_t name_begin = header.rfind('"', name_end - 1) + 1;
        std::string name = header.substr(name_begin, name_end - name_begin);
        size_t shape_at = header.find('[', header.find("\"shape\"", pos)) + 1;
        size_t shape_end = header.find(']', shape_at);
        std::vector<int64_t> shape;
        std::istringstream ss(header.substr(shape_at, shape_end - shape_at));
        for (std::string part; std::getline(ss, part, ',');) shape.push_back(std::stoll(part));
        size_t off_at = header.find('[', header.find("\"data_offsets\"", pos)) + 1;
        uint64_t a = std::stoull(header.substr(off_at)), b = std::stoull(header.substr(header.find(',', off_at) + 1));
        pos = shape_end;
        records.push_back({name, shape, a, b});
    }
    data_start = 8 + header_len;
    return records;
}

// Reads the SD1 checkpoint the script writes and places each component.
void load_sd15(const std::string & path, ggml_backend_t backend, std::optional<ggml_type> requested, Sd15 & out) {
    std::ifstream file(path, std::ios::binary);
    uint64_t data_start = 0;
    std::vector<FileWeights::Record> unet, vae, text;
    for (const auto & r : read_records(file, data_start)) {
        auto take = [&](const char * prefix, std::vector<FileWeights::Record> & into) {
            if (r.name.rfind(prefix, 0) != 0) return false;
            into.push_back({r.name.substr(std::strlen(prefix)), r.shape, r.begin, r.end});
            return true;
        };
        take("model.diffusion_model.", unet) || take("first_stage_model.", vae) ||
            take("cond_stage_model.transformer.", text);
    }
    out.unet.load(file, data_start, unet, sd::Component::Unet, backend, requested);
    out.vae.load(file, data_start, vae, sd::Component::Vae, backend, requested);
    out.text.load(file, data_start, text, sd::Component::TextEncoder, backend, requested);
}

sd::UnetParams sd15_unet() {
    sd::UnetParams p;
    p.present = true;
    p.channel_mult = {1, 2, 4, 4};
    p.num_res_blocks = {2, 2, 2, 2};
    p.transformer_depth = {1, 1, 1, 0};
    return p;
}

sd::VaeParams sd15_vae() {
    sd::VaeParams p;
    p.present = p.has_decoder = p.has_encoder = true;
    p.channel_mult = {1, 2, 4, 4};
    return p;
}

sd::TextEncoderParams clip_l() {
    sd::TextEncoderParams p;
    p.present = true;
    p.kind = "clip-vit-l-14";
    p.activation = "quick_gelu";
    return p;
}

// Relative error of one f16 x f32 dot product of length 4096 on `backend`: ~1e-7 when ggml
// accumulates in f32 (as the reference's build did), ~1e-3 when it accumulates in f16.
double f16_dot_error(ggml_backend_t backend) {
    constexpr int64_t k = 4096;
    ggml_init_params p{ggml_tensor_overhead() * 4 + ggml_graph_overhead(), nullptr, true};
    ggml_context * ctx = ggml_init(p);
    ggml_tensor * a = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, k, 1);
    ggml_tensor * b = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, 1);
    ggml_tensor * y = ggml_mul_mat(ctx, a, b);
    ggml_cgraph * graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(graph, y);
    ggml_backend_buffer_t buffer = ggml_backend_alloc_ctx_tensors(ctx, backend);
    std::vector<ggml_fp16_t> av(k);
    std::vector<float> bv(k);
    double exact = 0;
    for (int64_t i = 0; i < k; ++i) {
        av[i] = ggml_fp32_to_fp16(0.3f + 0.01f * static_cast<float>(i % 7));
        // f16-representable, so ggml's conversion of b to f16 is exact and so is every product.
        bv[i] = ggml_fp16_to_fp32(ggml_fp32_to_fp16(1.1f - 0.001f * static_cast<float>(i % 13)));
        exact += static_cast<double>(ggml_fp16_to_fp32(av[i])) * bv[i];
    }
    ggml_backend_tensor_set(a, av.data(), 0, ggml_nbytes(a));
    ggml_backend_tensor_set(b, bv.data(), 0, ggml_nbytes(b));
    ggml_backend_graph_compute(backend, graph);
    float got = 0;
    ggml_backend_tensor_get(y, &got, 0, sizeof(got));
    ggml_backend_buffer_free(buffer);
    ggml_free(ctx);
    return std::fabs(got - exact) / exact;
}

double psnr(const std::vector<uint8_t> & a, const std::string & b) {
    if (a.size() != b.size() || a.empty()) return -1;
    double se = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        const double d = double(a[i]) - double(static_cast<uint8_t>(b[i]));
        se += d * d;
    }
    const double mse = se / a.size();
    return mse == 0 ? 99.0 : 10.0 * std::log10(255.0 * 255.0 / mse);
}

void run_case(const std::string & dir, const std::string & name, ggml_backend_t backend, const sd::ClipTokenizer & tok,
              Sd15 & weights) {
    const std::string json = read_text(dir + "/case.json");
    const std::string prompt = json_string(json, "prompt"), negative = json_string(json, "negativePrompt");
    sd::GraphRunner runner(backend, 2);
    sd::TextEncoder text(weights.text, clip_l());
    sd::Unet unet(weights.unet, sd15_unet());
    sd::Vae vae(weights.vae, sd15_vae());

    const sd::HostTensor cond = sd::encode_prompt(runner, text, tok.tokenize(prompt), 1);
    const sd::HostTensor uncond = sd::encode_prompt(runner, text, tok.tokenize(negative), 1);
    const double e_cond = sdtest::relative_l2(cond.data, read_f32(dir + "/cond_crossattn.f32"));
    const double e_uncond = sdtest::relative_l2(uncond.data, read_f32(dir + "/uncond_crossattn.f32"));

    const sd::HostTensor x = read_tensor(dir + "/step0_unet_input");
    const std::vector<float> t = read_f32(dir + "/step0_timestep.f32");
    const double e_unet_cond = sdtest::relative_l2(unet.forward(runner, {x, t, cond}).data, read_f32(dir + "/step0_unet_out_cond.f32"));
    const double e_unet_uncond = sdtest::relative_l2(unet.forward(runner, {x, t, uncond}).data, read_f32(dir + "/step0_unet_out_uncond.f32"));

    double image_psnr = -1;
    const std::string raw = "/tmp/sdnode-ref-" + name + ".rgb8";
    const std::string cmd = "python3 native/tests/tools/png-to-rgb8.py '" + dir + "/image.png' '" + raw + "' > /dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) {
        const sd::HostTensor image = vae.decode(runner, read_tensor(dir + "/final_latent"));
        image_psnr = psnr(sd::image_to_rgb8(image), read_text(raw));
        std::remove(raw.c_str());
    }
    std::printf("%-18s cond %.4f%%  uncond %.4f%%  unet-cond %.4f%%  unet-uncond %.4f%%  vae %s dB\n", name.c_str(),
                100 * e_cond, 100 * e_uncond, 100 * e_unet_cond, 100 * e_unet_uncond,
                image_psnr < 0 ? "(skipped)" : std::to_string(image_psnr).c_str());
    std::fflush(stdout);
    CHECK(e_cond < 0.005);
    CHECK(e_uncond < 0.005);
    CHECK(e_unet_cond < 0.005);
    CHECK(e_unet_uncond < 0.005);
    if (image_psnr >= 0) CHECK(image_psnr > 40.0);
}

// The ControlNet case (sd15-adapters/controlnet-euler): the 13 step-0 ControlNet outputs for the
// prompt (strength 1: the reference dumps them before the strength), then the step-0 UNet outputs
// with the residuals times 0.9 added, for the prompt and the negative prompt (each pass's own
// ControlNet run, with its own context, as the reference runs them).
void controlnet_case(const std::string & reference, const std::string & controlnet_path, ggml_backend_t backend,
                     const sd::ClipTokenizer & tok, Sd15 & weights) {
    const std::string dir = reference + "/sd15-adapters/controlnet-euler";
    std::ifstream probe(controlnet_path);
    if (!probe || !std::ifstream(dir + "/case.json")) {
        std::printf("controlnet: skipped (no %s or no %s)\n", controlnet_path.c_str(), dir.c_str());
        return;
    }
    const std::string raw = "/tmp/sdnode-ref-control.rgb8";
    const std::string cmd = "python3 native/tests/tools/png-to-rgb8.py '" + reference + "/images/control.png' '" + raw + "' > /dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) {
        std::printf("controlnet: skipped (python3 could not decode the control image)\n");
        return;
    }
    const std::string rgb = read_text(raw);
    std::remove(raw.c_str());
    const auto net = sd::ControlNet::load(controlnet_path, sd::ControlNetLoadOptions{});
    sd::GraphRunner runner(backend, 2);
    sd::TextEncoder text(weights.text, clip_l());
    sd::Unet unet(weights.unet, sd15_unet());
    const std::string json = read_text(dir + "/case.json");
    const sd::HostTensor cond = sd::encode_prompt(runner, text, tok.tokenize(json_string(json, "prompt")), 1);
    const sd::HostTensor uncond = sd::encode_prompt(runner, text, tok.tokenize(json_string(json, "negativePrompt")), 1);
    sd::HostTensor image;  // [1, 3, 128, 128] in [0, 1]
    image.ne[0] = image.ne[1] = 128;
    image.ne[2] = 3;
    image.data.resize(128 * 128 * 3);
    if (rgb.size() != image.data.size()) {
        CHECK(false);
        return;
    }
    for (int c = 0; c < 3; ++c)
        for (size_t i = 0; i < 128 * 128; ++i) image.data[c * 128 * 128 + i] = static_cast<uint8_t>(rgb[i * 3 + c]) / 255.0f;
    const sd::HostTensor guided = net->hint(runner, image);
    const sd::HostTensor x = read_tensor(dir + "/step0_unet_input");
    const std::vector<float> t = read_f32(dir + "/step0_timestep.f32");
    sd::UnetInput in{x, t, cond};
    const std::vector<sd::HostTensor> outs = net->forward(runner, in, guided, 1.0f);
    CHECK(outs.size() == 13);
    double worst = 0;
    std::string figures;
    for (size_t i = 0; i < outs.size() && i < 13; ++i) {
        char stem[64];
        std::snprintf(stem, sizeof stem, "/step0_control_cond_%02zu", i);
        const double e = sdtest::relative_l2(outs[i].data, read_f32(dir + stem + ".f32"));
        worst = std::max(worst, e);
        char f[32];
        std::snprintf(f, sizeof f, "%s%.4f", i ? " " : "", 100 * e);
        figures += f;
    }
    double e_unet[2] = {0, 0};
    const sd::HostTensor * contexts[2] = {&cond, &uncond};
    const char * outputs[2] = {"/step0_unet_out_cond.f32", "/step0_unet_out_uncond.f32"};
    for (int k = 0; k < 2; ++k) {
        sd::UnetInput u{x, t, *contexts[k]};
        u.control = net->forward(runner, u, guided, 0.9f);
        e_unet[k] = sdtest::relative_l2(unet.forward(runner, u).data, read_f32(dir + outputs[k]));
    }
    std::printf("controlnet-euler   control outputs (%%): %s; worst rel L2 %.2e  unet-cond %.2e  unet-uncond %.2e\n", figures.c_str(),
                worst, e_unet[0], e_unet[1]);
    std::fflush(stdout);
    CHECK(worst < 0.005);
    CHECK(e_unet[0] < 0.005);
    CHECK(e_unet[1] < 0.005);
}

// img2img's init latent: the VAE encoder's posterior sample of img/init.png times the scale
// factor, against sd15-img2img/img2img-eulera/init_latent. Which generator the posterior noise
// comes from decides the match, so the candidates are printed: the run's generator seeded with
// the seed (before the initial noise), and the mean alone.
void encoder_case(const std::string & reference, ggml_backend_t backend, Sd15 & weights) {
    const std::string dir = reference + "/sd15-img2img/img2img-eulera";
    const std::string raw = "/tmp/sdnode-ref-init.rgb8";
    const std::string cmd = "python3 native/tests/tools/png-to-rgb8.py '" + reference + "/images/init.png' '" + raw + "' > /dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) return;
    const std::string rgb = read_text(raw);
    std::remove(raw.c_str());
    const int w = 128, h = 128;
    if (rgb.size() != size_t(w) * h * 3) return;
    sd::HostTensor image;
    image.ne[0] = w;
    image.ne[1] = h;
    image.ne[2] = 3;
    image.ne[3] = 1;
    image.data.resize(size_t(w) * h * 3);
    for (int c = 0; c < 3; ++c) {
        for (int i = 0; i < w * h; ++i) {
            image.data[size_t(c) * w * h + i] = float(uint8_t(rgb[size_t(i) * 3 + c])) / 255.0f * 2.0f - 1.0f;
        }
    }
    sd::GraphRunner runner(backend, 2);
    sd::Vae vae(weights.vae, sd15_vae());
    const std::vector<float> want = read_f32(dir + "/init_latent.f32");
    auto rng = sd::make_rng(sd::RngKind::Cuda, 9);
    const double e_seeded = sdtest::relative_l2(vae.encode(runner, image, rng.get()).data, want);
    const double e_mean = sdtest::relative_l2(vae.encode(runner, image, nullptr).data, want);
    std::printf("%-18s init latent: seeded posterior %.4f%%  mean %.4f%%\n", "img2img-eulera", 100 * e_seeded, 100 * e_mean);
    CHECK(std::min(e_seeded, e_mean) < 0.005);
}

// init.png as [1, 3, 128, 128] with values x / 255 * mul + add; empty without python3.
sd::HostTensor init_image(const std::string & reference, float mul, float add) {
    const std::string raw = "/tmp/sdnode-ref-init.rgb8";
    const std::string cmd = "python3 native/tests/tools/png-to-rgb8.py '" + reference + "/images/init.png' '" + raw + "' > /dev/null 2>&1";
    sd::HostTensor image;
    if (std::system(cmd.c_str()) != 0) return image;
    const std::string rgb = read_text(raw);
    std::remove(raw.c_str());
    const int w = 128, h = 128;
    if (rgb.size() != size_t(w) * h * 3) return image;
    image.ne[0] = w;
    image.ne[1] = h;
    image.ne[2] = 3;
    image.ne[3] = 1;
    image.data.resize(size_t(w) * h * 3);
    for (int c = 0; c < 3; ++c)
        for (int i = 0; i < w * h; ++i) image.data[size_t(c) * w * h + i] = float(uint8_t(rgb[size_t(i) * 3 + c])) / 255.0f * mul + add;
    return image;
}

// An image.png's bytes (interleaved RGB); empty without python3.
std::string reference_png(const std::string & dir, const std::string & name) {
    const std::string raw = "/tmp/sdnode-ref-" + name + ".rgb8";
    const std::string cmd = "python3 native/tests/tools/png-to-rgb8.py '" + dir + "/image.png' '" + raw + "' > /dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) return {};
    std::string bytes = read_text(raw);
    std::remove(raw.c_str());
    return bytes;
}

// The same image made bytes with rounding instead of truncation, for comparison only.
std::vector<uint8_t> rounded_rgb8(const sd::HostTensor & image, bool unit) {
    const int64_t plane = image.ne[0] * image.ne[1];
    std::vector<uint8_t> out(static_cast<size_t>(plane * 3));
    for (int64_t c = 0; c < 3; ++c)
        for (int64_t p = 0; p < plane; ++p) {
            float v = image.data[static_cast<size_t>(c * plane + p)];
            if (!unit) v = (v + 1.0f) * 0.5f;
            v = std::min(std::max(v, 0.0f), 1.0f);
            out[static_cast<size_t>(p * 3 + c)] = static_cast<uint8_t>(v * 255.0f + 0.5f);
        }
    return out;
}

// TAESD (make-taesd-random.py) against the reference's --taesd cases: the decode of
// taesd-txt2img-eulera's final latent vs its image.png (PSNR > 40 dB), and the encoder's output
// for img/init.png vs taesd-img2img-euler's init latent (relative L2 < 0.5%).
void taesd_cases(const std::string & reference, const std::string & taesd_path, ggml_backend_t backend) {
    std::ifstream file(taesd_path, std::ios::binary);
    if (!file) {
        std::printf("taesd cases: skipped: no %s (write it with make-taesd-random.py, or set SDNODE_TAESD_CHECKPOINT)\n",
                    taesd_path.c_str());
        return;
    }
    uint64_t data_start = 0;
    const std::vector<FileWeights::Record> records = read_records(file, data_start);
    FileWeights weights;
    weights.load(file, data_start, records, sd::Component::Taesd, backend, std::nullopt);
    sd::TaesdParams params;
    params.present = params.has_encoder = params.has_decoder = true;
    sd::Taesd taesd(weights, params);
    sd::GraphRunner runner(backend, 2);

    const std::string dec_dir = reference + "/sd15-img2img/taesd-txt2img-eulera";
    const std::string png = reference_png(dec_dir, "taesd-txt2img");
    if (!png.empty()) {
        const sd::HostTensor image = taesd.decode(runner, read_tensor(dec_dir + "/final_latent"));
        const double p = psnr(sd::image_to_rgb8(image, sd::PixelRange::ZeroToOne), png);
        std::printf("%-18s taesd decode %.2f dB (rounded bytes: %.2f dB)\n", "taesd-txt2img", p, psnr(rounded_rgb8(image, true), png));
        CHECK(p > 40.0);
    }
    const sd::HostTensor init = init_image(reference, 1.0f, 0.0f);
    if (!init.data.empty()) {
        const std::vector<float> want = read_f32(reference + "/sd15-img2img/taesd-img2img-euler/init_latent.f32");
        const sd::HostTensor got = taesd.encode(runner, init);
        const double e = sdtest::relative_l2(got.data, want);
        std::printf("%-18s taesd init latent %.4f%%\n", "taesd-img2img", 100 * e);
        CHECK(e < 0.005);
    }
    std::fflush(stdout);
}

// --vae-tiling: vae-tiling's 40x40 final latent decoded by the full VAE in the reference's default
// tiles (32 latent pixels, overlap 0.5: 2 x 2 tiles, 24 latent pixels shared) vs its image.png.
void tiled_vae_case(const std::string & reference, ggml_backend_t backend, Sd15 & weights) {
    const std::string dir = reference + "/sd15-img2img/vae-tiling";
    const std::string png = reference_png(dir, "vae-tiling");
    if (png.empty()) return;
    sd::GraphRunner runner(backend, 2);
    sd::Vae vae(weights.vae, sd15_vae());
    sd::VaeTiling tiling;
    tiling.enabled = true;
    const sd::HostTensor latent = read_tensor(dir + "/final_latent");
    const sd::HostTensor tiled = vae.decode(runner, latent, tiling);
    const double p = psnr(sd::image_to_rgb8(tiled), png);
    const sd::HostTensor whole = vae.decode(runner, latent);
    const double p_whole = psnr(sd::image_to_rgb8(whole), png);
    std::printf("%-18s tiled vae %.2f dB (rounded bytes: %.2f dB; untiled decode: %.2f dB)\n", "vae-tiling", p,
                psnr(rounded_rgb8(tiled, false), png), p_whole);
    std::fflush(stdout);
    CHECK(p > 40.0);
}

}  // namespace

int main() {
    const char * checkpoint = std::getenv("SDNODE_SD15_CHECKPOINT");
    if (!checkpoint || !*checkpoint) {
        std::printf("reference_test: skipped: set SDNODE_SD15_CHECKPOINT\n");
        return 0;
    }
    const std::string reference = sdtest::reference_root();
    const std::string root = (reference.empty() ? std::string("../shared/reference") : reference) + "/sd15-random";
    const sd::ClipTokenizer & tok = sd::clip_tokenizer(sd::kClipEosToken);
    ggml_backend_t backend = ggml_backend_cpu_init();
    const double dot_error = f16_dot_error(backend);
    if (dot_error > 1e-4) {
        std::printf("reference_test: note: this ggml accumulates f16 dot products in f16 (probe error %.1e; built with "
                    "AVX512-FP16, e.g. -march=native on Sapphire Rapids or later). The reference used f32 "
                    "accumulators: expect ~0.3%% (f16) and ~1.1%% (q8_0) step-0 UNet errors; build ggml-cpu with "
                    "-mno-avx512fp16 to match.\n",
                    dot_error);
    }

    std::vector<std::string> cases;
    if (DIR * d = opendir(root.c_str())) {
        while (dirent * e = readdir(d)) {
            if (e->d_name[0] != '.') cases.push_back(e->d_name);
        }
        closedir(d);
    }
    std::sort(cases.begin(), cases.end());
    const char * only = std::getenv("SDNODE_REFERENCE_CASE");
    std::map<bool, std::unique_ptr<Sd15>> loaded;  // by "q8_0 requested"
    for (const auto & name : cases) {
        if (only && name != only) continue;
        const std::string json = read_text(root + "/" + name + "/case.json");
        const bool q8 = json.find("--type q8_0") != std::string::npos;
        if (!loaded[q8]) {
            loaded.clear();  // one copy of the weights at a time (2 GB)
            loaded[q8] = std::make_unique<Sd15>();
            load_sd15(checkpoint, backend, q8 ? std::optional<ggml_type>(GGML_TYPE_Q8_0) : std::nullopt, *loaded[q8]);
        }
        run_case(root + "/" + name, name, backend, tok, *loaded[q8]);
    }
    if (!only || std::string(only) == "img2img-eulera") {
        if (!loaded[false]) {
            loaded.clear();
            loaded[false] = std::make_unique<Sd15>();
            load_sd15(checkpoint, backend, std::nullopt, *loaded[false]);
        }
        encoder_case(reference.empty() ? std::string("../shared/reference") : reference, backend, *loaded[false]);
    }
    const std::string ref = reference.empty() ? std::string("../shared/reference") : reference;
    if (!only || std::string(only) == "vae-tiling") {
        if (!loaded[false]) {
            loaded.clear();
            loaded[false] = std::make_unique<Sd15>();
            load_sd15(checkpoint, backend, std::nullopt, *loaded[false]);
        }
        tiled_vae_case(ref, backend, *loaded[false]);
    }
    if (!only || std::string(only) == "controlnet-euler") {
        if (!loaded[false]) {
            loaded.clear();
            loaded[false] = std::make_unique<Sd15>();
            load_sd15(checkpoint, backend, std::nullopt, *loaded[false]);
        }
        const char * cn_env = std::getenv("SDNODE_CONTROLNET_CHECKPOINT");
        const char * home_dir = std::getenv("HOME");
        const std::string cn_path = cn_env && *cn_env ? std::string(cn_env)
                                                      : std::string(home_dir ? home_dir : "") + "/.cache/sdnode/models/controlnet-random-f16.safetensors";
        controlnet_case(ref, cn_path, backend, tok, *loaded[false]);
    }
    if (!only || std::string(only) == "taesd") {
        const char * taesd_env = std::getenv("SDNODE_TAESD_CHECKPOINT");
        const char * home = std::getenv("HOME");
        const std::string taesd_path = taesd_env && *taesd_env ? std::string(taesd_env)
                                                               : std::string(home ? home : "") + "/.cache/sdnode/models/taesd-random-f16.safetensors";
        taesd_cases(ref, taesd_path, backend);
    }
    loaded.clear();
    ggml_backend_free(backend);
    return sdtest::finish("reference_test");
}
