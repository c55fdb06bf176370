#include "pipelines/preview.h"

#include <algorithm>

#include "core/errors.h"
#include "model/model.h"
#include "sd.h"

namespace sd {

namespace {

// Latent channel -> (r, g, b) and the bias, fitted on decoded images of each latent space
// (stable-diffusion.cpp's latent-preview tables for SD1.x/SD2.x and SDXL).
struct LatentRgbProjection {
    float weight[4][3];
    float bias[3];
};
constexpr LatentRgbProjection kSdProjection = {
    {{0.337366f, 0.216344f, 0.257386f}, {0.165636f, 0.386828f, 0.046994f}, {-0.267803f, 0.237036f, 0.223517f},
     {-0.178022f, -0.200862f, -0.678514f}},
    {-0.017478f, -0.055834f, -0.105825f}};
constexpr LatentRgbProjection kSdxlProjection = {
    {{0.258303f, 0.277640f, 0.329699f}, {-0.299701f, 0.105446f, 0.014194f}, {0.050522f, 0.186163f, -0.143257f},
     {-0.211938f, -0.149892f, -0.080036f}},
    {0.144381f, -0.033313f, 0.007061f}};

const LatentRgbProjection * projection_for(Arch arch) {
    switch (arch) {
        case Arch::SD1:
        case Arch::SD2: return &kSdProjection;
        case Arch::SDXL:
        case Arch::SDXLRefiner: return &kSdxlProjection;
        default: return nullptr;
    }
}

}  // namespace

bool has_latent_rgb_projection(Arch arch) { return projection_for(arch) != nullptr; }

std::vector<uint8_t> project_latent_rgb8(const HostTensor & latent, Arch arch) {
    const LatentRgbProjection * proj = projection_for(arch);
    if (!proj) throw Error(ErrorCode::UnsupportedModel, std::string("no latent-to-RGB projection is known for ") + arch_name(arch));
    const int64_t w = latent.ne[0], h = latent.ne[1], c = latent.ne[2];
    if (c != 4 || static_cast<int64_t>(latent.data.size()) < w * h * c) throw_invalid("project_latent_rgb8 needs a [1, 4, h, w] latent");
    const size_t plane = static_cast<size_t>(w * h);
    std::vector<uint8_t> rgb(plane * 3);
    for (size_t i = 0; i < plane; ++i) {
        for (int k = 0; k < 3; ++k) {
            float v = proj->bias[k];
            for (int ch = 0; ch < 4; ++ch) v += latent.data[ch * plane + i] * proj->weight[ch][k];
            // [-1, 1] to [0, 1], clamped, then truncated to a byte as the reference's preview does.
            v = std::min(1.0f, std::max(0.0f, v * 0.5f + 0.5f));
            rgb[i * 3 + k] = static_cast<uint8_t>(v * 255.0f);
        }
    }
    return rgb;
}

std::vector<uint8_t> preview_rgb8(const Model & model, GraphRunner & runner, const HostTensor & latent, PreviewMode mode,
                                  const Codec & codec, int & width, int & height) {
    if (mode == PreviewMode::Proj) {
        width = static_cast<int>(latent.ne[0]);
        height = static_cast<int>(latent.ne[1]);
        return project_latent_rgb8(latent, model.arch());
    }
    Codec preview = codec;
    preview.decoder = mode == PreviewMode::Taesd ? Decoder::Taesd : Decoder::Vae;
    const int up = mode == PreviewMode::Taesd ? model.taesd()->upscale() : model.vae().upscale();
    width = static_cast<int>(latent.ne[0]) * up;
    height = static_cast<int>(latent.ne[1]) * up;
    return decode_latent_rgb8(model, runner, latent, preview);
}

}  // namespace sd
