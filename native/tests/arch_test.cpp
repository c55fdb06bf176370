// Architecture detection on in-memory tensor lists (names and shapes only).
#include <map>
#include <set>
#include <tuple>

#include "model/arch.h"
#include "check.h"
#include "core/errors.h"
#include "sd-layouts.h"

using namespace layouts;

namespace {

sd::ModelInfo detect(const sd::ModelFile & file) {
    return sd::detect_architecture(file, sd::canonicalize(file));
}

// (component, canonical name, canonical shape) of every canonical tensor.
std::set<std::tuple<int, std::string, Shape>> canonical_set(const sd::ModelFile & file) {
    std::set<std::tuple<int, std::string, Shape>> out;
    for (const auto & t : sd::canonicalize(file).tensors) out.insert({(int)t.component, t.name, t.shape});
    return out;
}

bool has_warning(const sd::ModelInfo & info, const std::string & part) {
    for (const auto & w : info.warnings)
        if (w.find(part) != std::string::npos) return true;
    return false;
}

std::string error_of(const sd::ModelFile & file) {
    try {
        detect(file);
    } catch (const sd::Error & e) {
        return std::string(sd::error_code_name(e.code())) + ": " + e.what();
    }
    return "no error";
}

// The SD1.5 checkpoint exactly as make-sd15-random.py writes it (plus the buffers real files carry).
Builder sd15_ldm() {
    Builder b;
    hf_clip(b, ClipConfig{}, "cond_stage_model.transformer.");
    ldm_unet(b, UnetConfig{});
    ldm_vae(b, VaeConfig{});
    return b;
}

Builder sd15_diffusers() {
    Builder b;
    hf_clip(b, ClipConfig{}, "text_encoder/");
    diffusers_unet(b, UnetConfig{}, "unet/");
    diffusers_vae(b, VaeConfig{}, "vae/");
    b.file.format = "diffusers";
    return b;
}

void test_sd15() {
    Builder b = sd15_ldm();
    CHECK(b.file.tensors.size() == 196 + 686 + 248);  // the script's counts
    b.add("cond_stage_model.transformer.text_model.embeddings.position_ids", {1, 77});
    b.add("alphas_cumprod", {1000});
    const auto model = sd::canonicalize(b.file);
    CHECK(model.ignored.size() == 2);
    CHECK(model.unknown.empty());
    const auto info = sd::detect_architecture(b.file, model);
    CHECK(info.arch == sd::Arch::SD1);
    CHECK(std::string(sd::arch_name(info.arch)) == "sd1");
    CHECK(info.parameters.unet == 859520964);
    CHECK(info.parameters.vae == 83653863);
    CHECK(info.parameters.text_encoder == 123060480);
    CHECK(info.parameters.text_encoder_2 == 0);
    const auto & u = info.unet;
    CHECK(u.present && u.model_channels == 320 && u.in_channels == 4 && u.out_channels == 4);
    CHECK(u.channel_mult == (std::vector<int>{1, 2, 4, 4}));
    CHECK(u.num_res_blocks == (std::vector<int>{2, 2, 2, 2}));
    CHECK(u.num_res_blocks_out == (std::vector<int>{3, 3, 3, 3}));
    CHECK(u.transformer_depth == (std::vector<int>{1, 1, 1, 0}));
    CHECK(u.transformer_depth_out == (std::vector<int>{1, 1, 1, 0}));
    CHECK(u.has_middle_block && u.transformer_depth_middle == 1);
    CHECK(u.context_dim == 768 && u.num_heads == 8 && u.num_head_channels == -1);
    CHECK(!u.use_linear_projection && u.adm_in_channels == 0 && u.time_embed_dim == 1280);
    CHECK(u.prediction == sd::Prediction::Eps && u.variant.empty());
    const auto & v = info.vae;
    CHECK(v.present && v.has_encoder && v.has_decoder && v.ch == 128 && v.num_res_blocks == 2 && v.z_channels == 4);
    CHECK(v.channel_mult == (std::vector<int>{1, 2, 4, 4}) && v.in_channels == 3);
    CHECK_NEAR(v.scale_factor, 0.18215, 1e-7);
    const auto & t = info.text_encoder;
    CHECK(t.present && t.kind == "clip-vit-l-14" && t.width == 768 && t.layers == 12 && t.heads == 12);
    CHECK(t.intermediate == 3072 && t.vocab == 49408 && t.max_positions == 77 && t.projection_dim == 0);
    CHECK(t.activation == "quick_gelu");
    CHECK(!info.text_encoder_2.present);
    CHECK(info.dtypes.size() == 1 && info.dtypes.at("f16") == 196 + 686 + 248);
    CHECK(info.warnings.empty());
}

void test_sd15_diffusers_matches() {
    const Builder ldm = sd15_ldm(), diff = sd15_diffusers();
    CHECK(canonical_set(ldm.file) == canonical_set(diff.file));
    const auto info = detect(diff.file);
    CHECK(info.arch == sd::Arch::SD1);
    CHECK(info.parameters.unet == 859520964 && info.parameters.vae == 83653863 && info.parameters.text_encoder == 123060480);
    // Standalone diffusers files (no component prefix) too.
    Builder unet, vae;
    diffusers_unet(unet, UnetConfig{}, "");
    diffusers_vae(vae, VaeConfig{}, "", /*old_attention=*/true);
    Builder ldm_unet_only, ldm_vae_only;
    ldm_unet(ldm_unet_only, UnetConfig{}, "");
    ldm_vae(ldm_vae_only, VaeConfig{}, "");
    CHECK(canonical_set(unet.file) == canonical_set(ldm_unet_only.file));
    CHECK(canonical_set(vae.file) == canonical_set(ldm_vae_only.file));
}

void test_diffusers_config_heads() {
    Builder b = sd15_diffusers();
    b.file.metadata.push_back({"unet/config.json", "{\n  \"act_fn\": \"silu\",\n  \"attention_head_dim\": 8,\n  \"cross_attention_dim\": 768\n}"});
    auto info = detect(b.file);
    CHECK(info.unet.num_heads == 8 && info.unet.num_head_channels == -1);

    Builder s;
    diffusers_unet(s, sd2_unet(), "unet/");
    s.file.metadata.push_back({"unet/config.json", "{\"attention_head_dim\": [5, 10, 20, 20], \"num_attention_heads\": null}"});
    info = detect(s.file);
    CHECK(info.arch == sd::Arch::SD2);
    CHECK(info.unet.num_heads == -1 && info.unet.num_head_channels == 64);
}

void test_sd2() {
    Builder b;
    ldm_unet(b, sd2_unet());
    ldm_vae(b, VaeConfig{});
    openclip(b, vit_h(), "cond_stage_model.model.");
    auto info = detect(b.file);
    CHECK(info.arch == sd::Arch::SD2);
    CHECK(info.unet.context_dim == 1024 && info.unet.use_linear_projection);
    CHECK(info.unet.num_heads == -1 && info.unet.num_head_channels == 64);
    CHECK(info.unet.prediction == sd::Prediction::Eps && has_warning(info, "prediction type"));
    // 865,910,724: the published SD2 UNet size.
    CHECK(info.parameters.unet == 865910724);
    const auto & t = info.text_encoder;
    CHECK(t.kind == "openclip-vit-h-14" && t.width == 1024 && t.layers == 24 && t.heads == 16);
    CHECK(t.intermediate == 4096 && t.projection_dim == 1024 && t.activation == "gelu");
    // Fused qkv counted once: 24 layers of [3072, 1024] + [3072] are in the total exactly once.
    int64_t expected = 49408 * 1024 + 77 * 1024 + 2 * 1024 + 1024 * 1024;
    expected += 24 * (3 * 1024 * 1024 + 3 * 1024 + 1024 * 1024 + 1024 + 4 * 1024 + 4096 * 1024 + 4096 + 1024 * 4096 + 1024);
    CHECK(info.parameters.text_encoder == expected);
    CHECK(info.dtypes.at("f16") == (int64_t)b.file.tensors.size() - 1);  // all but the ignored logit_scale

    b.file.metadata.push_back({"modelspec.prediction_type", "v"});
    info = detect(b.file);
    CHECK(info.unet.prediction == sd::Prediction::V && !has_warning(info, "prediction type"));

    // diffusers SD2: the text encoder keeps 23 layers.
    Builder d;
    diffusers_unet(d, sd2_unet(), "unet/");
    ClipConfig h = vit_h();
    h.layers = 23;
    h.projection = 0;
    hf_clip(d, h, "text_encoder/");
    d.file.metadata.push_back({"text_encoder/config.json", "{\"hidden_act\": \"gelu\", \"num_attention_heads\": 16}"});
    info = detect(d.file);
    CHECK(info.arch == sd::Arch::SD2 && info.text_encoder.layers == 23 && info.text_encoder.activation == "gelu");
    CHECK(info.parameters.unet == 865910724);
}

void test_sdxl() {
    Builder b;
    ldm_unet(b, sdxl_unet());
    ldm_vae(b, VaeConfig{});
    hf_clip(b, ClipConfig{}, "conditioner.embedders.0.transformer.");
    openclip(b, vit_bigg(), "conditioner.embedders.1.model.");
    const auto info = detect(b.file);
    CHECK(info.arch == sd::Arch::SDXL);
    const auto & u = info.unet;
    CHECK(u.context_dim == 2048 && u.adm_in_channels == 2816 && u.model_channels == 320);
    CHECK(u.channel_mult == (std::vector<int>{1, 2, 4}));
    CHECK(u.transformer_depth == (std::vector<int>{0, 2, 10}) && u.transformer_depth_middle == 10);
    CHECK(u.num_head_channels == 64 && u.use_linear_projection && u.variant.empty());
    CHECK(info.parameters.unet == 2567463684);  // the published SDXL UNet size
    CHECK_NEAR(info.vae.scale_factor, 0.13025, 1e-7);
    CHECK(info.text_encoder.kind == "clip-vit-l-14" && info.text_encoder_2.kind == "openclip-vit-bigg-14");
    CHECK(info.text_encoder_2.layers == 32 && info.text_encoder_2.projection_dim == 1280);
    CHECK(info.warnings.empty());

    Builder d;
    diffusers_unet(d, sdxl_unet(), "unet/");
    diffusers_vae(d, VaeConfig{}, "vae/");
    hf_clip(d, ClipConfig{}, "text_encoder/");
    hf_clip(d, vit_bigg(), "text_encoder_2/");
    CHECK(canonical_set(b.file) == canonical_set(d.file));
    CHECK(detect(d.file).arch == sd::Arch::SDXL);
}

void test_refiner() {
    Builder b;
    ldm_unet(b, refiner_unet());
    ldm_vae(b, VaeConfig{});
    openclip(b, vit_bigg(), "conditioner.embedders.0.model.");
    const auto info = detect(b.file);
    CHECK(info.arch == sd::Arch::SDXLRefiner);
    CHECK(std::string(sd::arch_name(info.arch)) == "sdxl-refiner");
    CHECK(info.unet.model_channels == 384 && info.unet.adm_in_channels == 2560 && info.unet.context_dim == 1280);
    CHECK(info.unet.transformer_depth == (std::vector<int>{0, 4, 4, 0}));
    CHECK(!info.text_encoder.present && info.text_encoder_2.present && info.text_encoder_2.width == 1280);
    CHECK(info.parameters.text_encoder == 0 && info.parameters.text_encoder_2 > 0);
    CHECK_NEAR(info.vae.scale_factor, 0.13025, 1e-7);
}

void test_in_channels_variants() {
    UnetConfig c;
    c.in = 9;
    Builder b;
    ldm_unet(b, c);
    auto info = detect(b.file);
    CHECK(info.arch == sd::Arch::SD1 && info.unet.in_channels == 9 && info.unet.variant == "inpaint");
    CHECK(!info.vae.present && !info.text_encoder.present);

    c.in = 8;
    Builder p;
    ldm_unet(p, c);
    info = detect(p.file);
    CHECK(info.unet.in_channels == 8 && info.unet.variant == "instruct-pix2pix");
}

// A BK-SDM-like distilled UNet: one res block per input level, two per output level, no middle.
UnetConfig tiny_unet() {
    UnetConfig c;
    c.res = {1, 1, 1, 1};
    c.res_out = {2, 2, 2, 2};
    c.middle = false;
    return c;
}

// Renames contiguous LDM indices to the gapped 3*i+j arithmetic of diffusers' and
// stable-diffusion.cpp's converters, which puts the upsampler in a block of its own.
Builder gapped_ldm(const Builder & contiguous) {
    const std::map<int, int> in{{1, 1}, {2, 3}, {3, 4}, {4, 6}, {5, 7}, {6, 9}, {7, 10}};
    const std::map<int, int> out{{0, 0}, {1, 1}, {2, 3}, {3, 4}, {4, 6}, {5, 7}, {6, 9}, {7, 10}};
    Builder b;
    for (auto t : contiguous.file.tensors) {
        const std::string pin = "model.diffusion_model.input_blocks.", pout = "model.diffusion_model.output_blocks.";
        for (const auto & group : {std::make_pair(pin, &in), std::make_pair(pout, &out)}) {
            if (t.name.compare(0, group.first.size(), group.first) != 0) continue;
            const size_t dot = t.name.find('.', group.first.size());
            const int index = std::stoi(t.name.substr(group.first.size(), dot - group.first.size()));
            std::string rest = t.name.substr(dot + 1);
            int renamed = index == 0 ? 0 : group.second->at(index);
            if (group.second == &out && (rest.find(".conv.") != std::string::npos) && rest.compare(0, 2, "0.") != 0) {
                ++renamed;  // the upsampler moves to the next index
            }
            t.name = group.first + std::to_string(renamed) + "." + rest;
        }
        b.file.tensors.push_back(t);
    }
    return b;
}

void test_tiny() {
    Builder ldm;
    ldm_unet(ldm, tiny_unet());
    auto info = detect(ldm.file);
    CHECK(info.arch == sd::Arch::SD1);
    CHECK(info.unet.num_res_blocks == (std::vector<int>{1, 1, 1, 1}));
    CHECK(info.unet.num_res_blocks_out == (std::vector<int>{2, 2, 2, 2}));
    CHECK(!info.unet.has_middle_block && info.unet.transformer_depth_middle == 0);
    CHECK(info.unet.variant == "tiny");

    Builder diff;
    diffusers_unet(diff, tiny_unet(), "unet/");
    CHECK(canonical_set(ldm.file) == canonical_set(diff.file));

    const Builder gapped = gapped_ldm(ldm);
    CHECK(gapped.file.find("model.diffusion_model.output_blocks.2.1.conv.weight"));
    CHECK(gapped.file.find("model.diffusion_model.input_blocks.10.0.in_layers.2.weight"));
    CHECK(canonical_set(ldm.file) == canonical_set(gapped.file));

    UnetConfig small = tiny_unet();
    small.middle = true;
    Builder s;
    ldm_unet(s, small);
    CHECK(detect(s.file).unet.variant == "small");
}

void test_standalone() {
    Builder v;
    ldm_vae(v, VaeConfig{}, "");
    auto info = detect(v.file);
    CHECK(info.arch == sd::Arch::Unknown && info.vae.present && !info.unet.present);
    CHECK(info.parameters.vae == 83653863);
    CHECK(info.vae.ch == 128 && info.vae.z_channels == 4 && info.vae.channel_mult == (std::vector<int>{1, 2, 4, 4}));

    // Decoder only (e.g. a TAESD-less "decoder" export): sizes from the decoder.
    Builder d;
    for (const auto & t : v.file.tensors)
        if (t.name.compare(0, 8, "decoder.") == 0 || t.name.compare(0, 16, "post_quant_conv.") == 0) d.file.tensors.push_back(t);
    info = detect(d.file);
    CHECK(!info.vae.has_encoder && info.vae.has_decoder && info.vae.ch == 128 && info.vae.num_res_blocks == 2);
    CHECK(info.vae.channel_mult == (std::vector<int>{1, 2, 4, 4}) && info.vae.z_channels == 4);

    Builder c;
    hf_clip(c, ClipConfig{}, "");
    info = detect(c.file);
    CHECK(info.arch == sd::Arch::Unknown && info.text_encoder.present && info.parameters.text_encoder == 123060480);

    // A standalone bigG with projection (CLIPTextModelWithProjection) is SDXL's second encoder.
    Builder g;
    hf_clip(g, vit_bigg(), "");
    info = detect(g.file);
    CHECK(info.text_encoder_2.present && !info.text_encoder.present && info.text_encoder_2.projection_dim == 1280);
}

void test_errors() {
    Builder empty;
    CHECK_THROWS_CODE(detect(empty.file), sd::ErrorCode::UnsupportedModel);

    Builder other;
    other.add("fc.weight", {10, 10});
    other.add("fc.bias", {10});
    const std::string msg = error_of(other.file);
    CHECK(msg.find("UnsupportedModel") == 0 && msg.find("no Stable Diffusion tensors found (2 tensors, e.g. 'fc.weight', 'fc.bias')") != std::string::npos);

    Builder llm;
    llm.add("token_embd.weight", {32000, 4096});
    llm.add("blk.0.attn_q.weight", {4096, 4096});
    CHECK(error_of(llm.file).find("looks like a language model") != std::string::npos);
    CHECK_THROWS_CODE(detect(llm.file), sd::ErrorCode::UnsupportedModel);

    Builder lora;
    lora.add("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", {4, 320});
    CHECK(error_of(lora.file).find("LoRA") != std::string::npos);

    // A UNet missing a required tensor names it.
    Builder b = sd15_ldm();
    b.file.tensors.erase(b.file.tensors.begin() + (b.file.find("model.diffusion_model.out.2.weight") - b.file.tensors.data()));
    const std::string missing = error_of(b.file);
    CHECK(missing.find("ModelFormat") == 0 && missing.find("'out.2.weight'") != std::string::npos);

    Builder c = sd15_ldm();
    c.file.tensors.erase(c.file.tensors.begin() + (c.file.find("model.diffusion_model.input_blocks.0.0.weight") - c.file.tensors.data()));
    CHECK(error_of(c.file).find("'input_blocks.0.0.weight'") != std::string::npos);

    Builder t = sd15_ldm();
    t.file.tensors.erase(t.file.tensors.begin() +
                         (t.file.find("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight") - t.file.tensors.data()));
    CHECK_THROWS_CODE(detect(t.file), sd::ErrorCode::ModelFormat);

    // An empty dimension is reported, not divided by.
    Builder z;
    z.add("encoder.conv_in.weight", {0, 3, 3, 3});
    z.add("encoder.conv_out.weight", {8, 512, 3, 3});
    CHECK_THROWS_CODE(detect(z.file), sd::ErrorCode::ModelFormat);

    // A context width no standard architecture has: the family comes from the structure (no
    // label embedding, conv projection → SD1) and a warning says so.
    UnetConfig odd;
    odd.context = 512;
    Builder u;
    ldm_unet(u, odd);
    sd::ModelInfo oi = detect(u.file);
    CHECK(oi.arch == sd::Arch::SD1);
    CHECK(!oi.warnings.empty() && oi.warnings[0].find("context width 512") != std::string::npos);
}

void test_small_shapes() {
    // Shapes only: a toy config exercises the same code path quickly.
    UnetConfig c;
    c.ch = 32;
    c.mult = {1, 2};
    c.res = {1, 1};
    c.res_out = {2, 2};
    c.depth = {1, 2};
    c.depth_out = {1, 2};
    c.depth_mid = 3;
    Builder b;
    diffusers_unet(b, c, "");
    const auto info = detect(b.file);
    CHECK(info.unet.model_channels == 32 && info.unet.channel_mult == (std::vector<int>{1, 2}));
    CHECK(info.unet.transformer_depth == (std::vector<int>{1, 2}) && info.unet.transformer_depth_middle == 3);
    CHECK(info.unet.time_embed_dim == 128);
}

}  // namespace

int main() {
    test_sd15();
    test_sd15_diffusers_matches();
    test_diffusers_config_heads();
    test_sd2();
    test_sdxl();
    test_refiner();
    test_in_channels_variants();
    test_tiny();
    test_standalone();
    test_errors();
    test_small_shapes();
    return sdtest::finish("arch_test");
}
