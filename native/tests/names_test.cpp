// The name table: every spelling maps to the canonical set; splits, reshapes and collisions.
#include <set>
#include <tuple>

#include "check.h"
#include "core/errors.h"
#include "model/names.h"
#include "sd-layouts.h"

using namespace layouts;

namespace {

const sd::CanonicalTensor * find(const sd::CanonicalModel & m, sd::Component c, const std::string & name) {
    return m.find(c, name);
}

bool contains(const std::vector<std::string> & list, const std::string & s) {
    for (const auto & x : list)
        if (x == s) return true;
    return false;
}

void test_component_names() {
    CHECK(std::string(sd::component_name(sd::Component::Unet)) == "unet");
    CHECK(std::string(sd::component_name(sd::Component::Vae)) == "vae");
    CHECK(std::string(sd::component_name(sd::Component::TextEncoder)) == "text_encoder");
    CHECK(std::string(sd::component_name(sd::Component::TextEncoder2)) == "text_encoder_2");
}

// LDM names are canonical already: stripping the prefix is the whole mapping.
void test_ldm_round_trip() {
    Builder b;
    ldm_unet(b, UnetConfig{});
    ldm_vae(b, VaeConfig{});
    hf_clip(b, ClipConfig{}, "cond_stage_model.transformer.");
    const auto m = sd::canonicalize(b.file);
    CHECK(m.unknown.empty());
    CHECK(m.ignored.empty());
    CHECK(m.tensors.size() == b.file.tensors.size());
    int mismatched = 0;
    for (const auto & t : m.tensors) {
        const std::string & stored = t.source->name;
        const char * prefix = t.component == sd::Component::Unet ? "model.diffusion_model."
                              : t.component == sd::Component::Vae ? "first_stage_model."
                                                                  : "cond_stage_model.transformer.";
        if (stored != prefix + t.name || t.shape != t.source->shape || t.offset != 0 || t.nbytes != t.source->nbytes)
            ++mismatched;
    }
    CHECK(mismatched == 0);
}

void test_ignored() {
    Builder b;
    ldm_vae(b, VaeConfig{});
    for (const char * n : {"betas", "alphas_cumprod", "model_ema.decay", "model_ema.num_updates",
                           "cond_stage_model.transformer.text_model.embeddings.position_ids",
                           "cond_stage_model.model.logit_scale", "cond_stage_model.model.attn_mask",
                           "lora_unet_down_blocks_0.lora_down.weight"})
        b.add(n, {1});
    b.add("some.other.thing", {2});
    const auto m = sd::canonicalize(b.file);
    CHECK(m.ignored.size() == 8);
    CHECK(contains(m.ignored, "model_ema.decay"));
    CHECK(contains(m.ignored, "cond_stage_model.model.attn_mask"));
    CHECK(m.unknown.size() == 1 && m.unknown[0] == "some.other.thing");
}

// OpenCLIP: fused in_proj split into q/k/v views, renames, projection orientation.
void test_openclip_split() {
    Builder b;
    ClipConfig c = vit_h();
    c.layers = 2;
    openclip(b, c, "cond_stage_model.model.");
    const auto m = sd::canonicalize(b.file);
    CHECK(m.unknown.empty());
    CHECK(contains(m.ignored, "cond_stage_model.model.logit_scale"));
    const auto * fused = b.file.find("cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight");
    const auto * fused_bias = b.file.find("cond_stage_model.model.transformer.resblocks.1.attn.in_proj_bias");
    const char * parts[] = {"q", "k", "v"};
    for (int i = 0; i < 3; ++i) {
        const std::string base = std::string("text_model.encoder.layers.1.self_attn.") + parts[i] + "_proj.";
        const auto * w = find(m, sd::Component::TextEncoder, base + "weight");
        const auto * bias = find(m, sd::Component::TextEncoder, base + "bias");
        CHECK(w && w->source == fused && w->shape == (Shape{1024, 1024}));
        CHECK(w && w->offset == (uint64_t)i * fused->nbytes / 3 && w->nbytes == fused->nbytes / 3);
        CHECK(w && w->offset + w->nbytes <= fused->nbytes);
        CHECK(bias && bias->source == fused_bias && bias->shape == (Shape{1024}));
        CHECK(bias && bias->offset == (uint64_t)i * 1024 * 2 && bias->nbytes == 1024 * 2);
    }
    const std::pair<const char *, const char *> renames[] = {
        {"token_embedding.weight", "text_model.embeddings.token_embedding.weight"},
        {"positional_embedding", "text_model.embeddings.position_embedding.weight"},
        {"ln_final.bias", "text_model.final_layer_norm.bias"},
        {"transformer.resblocks.0.ln_1.weight", "text_model.encoder.layers.0.layer_norm1.weight"},
        {"transformer.resblocks.0.ln_2.bias", "text_model.encoder.layers.0.layer_norm2.bias"},
        {"transformer.resblocks.0.mlp.c_fc.weight", "text_model.encoder.layers.0.mlp.fc1.weight"},
        {"transformer.resblocks.0.mlp.c_proj.bias", "text_model.encoder.layers.0.mlp.fc2.bias"},
        {"transformer.resblocks.0.attn.out_proj.weight", "text_model.encoder.layers.0.self_attn.out_proj.weight"}};
    for (const auto & rn : renames) {
        const auto * t = find(m, sd::Component::TextEncoder, rn.second);
        CHECK(t && t->source->name == std::string("cond_stage_model.model.") + rn.first && !t->transpose);
    }
    const auto * proj = find(m, sd::Component::TextEncoder, "text_projection.weight");
    // Square (1024 x 1024): read as stored, as stable-diffusion.cpp does (see openclip_projection).
    CHECK(proj && !proj->transpose && proj->source->name == "cond_stage_model.model.text_projection");
}

void test_projection_orientation() {
    // OpenCLIP [width, proj] -> canonical [proj, width], marked transpose (when not square); HF
    // [proj, width] as is.
    Builder b;
    b.add("text_model.embeddings.token_embedding.weight", {100, 64});
    b.add("text_projection.weight", {32, 64});
    auto m = sd::canonicalize(b.file);
    const auto * hf = find(m, sd::Component::TextEncoder, "text_projection.weight");
    CHECK(hf && !hf->transpose && hf->shape == (Shape{32, 64}));

    Builder o;
    o.add("cond_stage_model.model.token_embedding.weight", {100, 64});
    o.add("cond_stage_model.model.text_projection", {64, 32});
    m = sd::canonicalize(o.file);
    const auto * oc = find(m, sd::Component::TextEncoder, "text_projection.weight");
    CHECK(oc && oc->transpose && oc->shape == (Shape{32, 64}) && oc->nbytes == oc->source->nbytes);
}

// stable-diffusion.cpp GGUF spellings: HF names with a still-fused in_proj, "cond_stage_model.1."
// for SDXL's second encoder, "text_model.text_projection".
void test_sdcpp_spellings() {
    Builder b;
    b.add("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", {100, 64});
    b.add("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.in_proj.weight", {192, 64});
    b.add("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.in_proj.bias", {192});
    b.add("cond_stage_model.1.transformer.text_model.embeddings.token_embedding.weight", {100, 1280});
    b.add("cond_stage_model.1.transformer.text_model.text_projection", {1280, 1280});
    const auto m = sd::canonicalize(b.file);
    CHECK(m.unknown.empty());
    const auto * k = find(m, sd::Component::TextEncoder, "text_model.encoder.layers.0.self_attn.k_proj.weight");
    CHECK(k && k->shape == (Shape{64, 64}) && k->offset == 64 * 64 * 2);
    const auto * vb = find(m, sd::Component::TextEncoder, "text_model.encoder.layers.0.self_attn.v_proj.bias");
    CHECK(vb && vb->offset == 2 * 64 * 2 && vb->nbytes == 64 * 2);
    const auto * proj = find(m, sd::Component::TextEncoder2, "text_projection.weight");
    CHECK(proj && !proj->transpose);  // square: as stored, the reference's reading
    CHECK(find(m, sd::Component::TextEncoder2, "text_model.embeddings.token_embedding.weight"));
}

void test_bad_split() {
    Builder b;
    b.add("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", {100, 64});
    CHECK_THROWS_CODE(sd::canonicalize(b.file), sd::ErrorCode::ModelFormat);
}

// Old transformers checkpoints lack the "text_model." level; both spellings of one tensor collide.
void test_collisions() {
    Builder b;
    b.add("cond_stage_model.transformer.final_layer_norm.weight", {768});
    auto m = sd::canonicalize(b.file);
    CHECK(find(m, sd::Component::TextEncoder, "text_model.final_layer_norm.weight"));

    b.add("cond_stage_model.transformer.text_model.final_layer_norm.weight", {768});
    bool named_both = false;
    try {
        sd::canonicalize(b.file);
    } catch (const sd::Error & e) {
        const std::string msg = e.what();
        named_both = e.code() == sd::ErrorCode::ModelFormat &&
                     msg.find("'cond_stage_model.transformer.final_layer_norm.weight'") != std::string::npos &&
                     msg.find("'cond_stage_model.transformer.text_model.final_layer_norm.weight'") != std::string::npos &&
                     msg.find("test.safetensors") != std::string::npos;
    }
    CHECK(named_both);

    // A diffusers VAE attention in both the new and the old spelling.
    Builder v;
    v.add("vae/encoder.mid_block.attentions.0.to_q.weight", {8, 8});
    v.add("vae/encoder.mid_block.attentions.0.query.weight", {8, 8});
    CHECK_THROWS_CODE(sd::canonicalize(v.file), sd::ErrorCode::ModelFormat);

    // A UNet spelled both ways.
    Builder u;
    u.add("unet/conv_in.weight", {32, 4, 3, 3});
    u.add("model.diffusion_model.input_blocks.0.0.weight", {32, 4, 3, 3});
    CHECK_THROWS_CODE(sd::canonicalize(u.file), sd::ErrorCode::ModelFormat);
}

void test_vae_diffusers() {
    Builder b;
    diffusers_vae(b, VaeConfig{}, "vae/");
    const auto m = sd::canonicalize(b.file);
    CHECK(m.unknown.empty());
    // The decoder's diffusers levels run deepest first.
    const auto * up = find(m, sd::Component::Vae, "decoder.up.3.block.0.conv1.weight");
    CHECK(up && up->source->name == "vae/decoder.up_blocks.0.resnets.0.conv1.weight");
    const auto * ups = find(m, sd::Component::Vae, "decoder.up.1.upsample.conv.weight");
    CHECK(ups && ups->source->name == "vae/decoder.up_blocks.2.upsamplers.0.conv.weight");
    const auto * q = find(m, sd::Component::Vae, "encoder.mid.attn_1.q.weight");
    CHECK(q && q->shape == (Shape{512, 512, 1, 1}) && q->nbytes == q->source->nbytes && q->source->shape.size() == 2);
    const auto * proj = find(m, sd::Component::Vae, "decoder.mid.attn_1.proj_out.weight");
    CHECK(proj && proj->source->name == "vae/decoder.mid_block.attentions.0.to_out.0.weight");
    const auto * norm = find(m, sd::Component::Vae, "decoder.mid.attn_1.norm.weight");
    CHECK(norm && norm->shape == (Shape{512}));
    const auto * shortcut = find(m, sd::Component::Vae, "encoder.down.1.block.0.nin_shortcut.weight");
    CHECK(shortcut && shortcut->source->name == "vae/encoder.down_blocks.1.resnets.0.conv_shortcut.weight");
    CHECK(find(m, sd::Component::Vae, "encoder.norm_out.weight"));
    CHECK(find(m, sd::Component::Vae, "encoder.mid.block_2.conv2.weight"));
}

void test_unet_diffusers_indices() {
    Builder b;
    diffusers_unet(b, sdxl_unet(), "");
    const auto m = sd::canonicalize(b.file);
    CHECK(m.unknown.empty());
    const std::pair<const char *, const char *> cases[] = {
        {"conv_in.weight", "input_blocks.0.0.weight"},
        {"time_embedding.linear_2.bias", "time_embed.2.bias"},
        {"add_embedding.linear_1.weight", "label_emb.0.0.weight"},
        {"down_blocks.0.resnets.1.conv1.weight", "input_blocks.2.0.in_layers.2.weight"},
        {"down_blocks.0.downsamplers.0.conv.weight", "input_blocks.3.0.op.weight"},
        {"down_blocks.1.resnets.0.conv_shortcut.weight", "input_blocks.4.0.skip_connection.weight"},
        {"down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k.weight", "input_blocks.5.1.transformer_blocks.1.attn2.to_k.weight"},
        {"down_blocks.2.resnets.0.time_emb_proj.weight", "input_blocks.7.0.emb_layers.1.weight"},
        {"mid_block.resnets.1.norm2.weight", "middle_block.2.out_layers.0.weight"},
        {"mid_block.attentions.0.proj_in.weight", "middle_block.1.proj_in.weight"},
        {"up_blocks.0.resnets.2.norm1.bias", "output_blocks.2.0.in_layers.0.bias"},
        {"up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.2.conv.weight"},
        {"up_blocks.1.upsamplers.0.conv.weight", "output_blocks.5.2.conv.weight"},
        {"up_blocks.2.resnets.0.conv2.weight", "output_blocks.6.0.out_layers.3.weight"},
        {"conv_norm_out.weight", "out.0.weight"},
        {"conv_out.bias", "out.2.bias"}};
    for (const auto & c : cases) {
        const auto * t = find(m, sd::Component::Unet, c.second);
        CHECK(t && t->source->name == c.first);
        if (!t || t->source->name != c.first) std::fprintf(stderr, "  expected %s -> %s\n", c.first, c.second);
    }
    CHECK(!find(m, sd::Component::Unet, "output_blocks.8.1.conv.weight"));
}

void test_standalone_routing() {
    Builder b;
    b.add("encoder.conv_in.weight", {128, 3, 3, 3});
    b.add("post_quant_conv.weight", {4, 4, 1, 1});
    b.add("text_model.final_layer_norm.weight", {768});
    b.add("out.2.weight", {4, 320, 3, 3});
    auto m = sd::canonicalize(b.file);
    CHECK(find(m, sd::Component::Vae, "encoder.conv_in.weight"));
    CHECK(find(m, sd::Component::Vae, "post_quant_conv.weight"));
    CHECK(find(m, sd::Component::TextEncoder, "text_model.final_layer_norm.weight"));
    CHECK(find(m, sd::Component::Unet, "out.2.weight"));
}

void test_refiner_encoder_is_second() {
    Builder b;
    ClipConfig c = vit_bigg();
    c.layers = 1;
    openclip(b, c, "conditioner.embedders.0.model.");
    const auto m = sd::canonicalize(b.file);
    CHECK(!m.has(sd::Component::TextEncoder));
    CHECK(m.has(sd::Component::TextEncoder2));
    CHECK(find(m, sd::Component::TextEncoder2, "text_model.encoder.layers.0.self_attn.q_proj.weight"));
}

}  // namespace

int main() {
    test_component_names();
    test_ldm_round_trip();
    test_ignored();
    test_openclip_split();
    test_projection_orientation();
    test_sdcpp_spellings();
    test_bad_split();
    test_collisions();
    test_vae_diffusers();
    test_unet_diffusers_indices();
    test_standalone_routing();
    test_refiner_encoder_is_second();
    return sdtest::finish("names_test");
}
