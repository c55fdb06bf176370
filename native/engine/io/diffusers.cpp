// Diffusers folders: one subfolder per component, each with its weights and config.json.
//   model_index.json            (optional)
//   unet/config.json + diffusion_pytorch_model[.fp16].safetensors (or sharded, or .bin)
//   vae/ ...  text_encoder/ model[.fp16].safetensors ...  text_encoder_2/ ...
// Tensor names get a "<component>/" prefix; configs land in metadata as "<component>/config.json".
#include <filesystem>

#include "core/json.h"
#include "io/model-file-internal.h"

namespace sd {
namespace detail {

namespace {

const char * const kComponents[] = {"unet", "vae", "text_encoder", "text_encoder_2"};

// Weight files in order of preference (full precision before fp16 variants, single before sharded).
const char * const kWeightFiles[] = {
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors.index.json",
    "model.fp16.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
    "pytorch_model.fp16.bin",
    "diffusion_pytorch_model.bin.index.json",
    "pytorch_model.bin.index.json",
};

bool is_file(const std::string & path) {
    std::error_code ec;
    return std::filesystem::is_regular_file(std::filesystem::u8path(path), ec);
}

// A whole small file as text, checked to be valid JSON.
std::string read_json_text(const std::string & path) {
    MappedFile file(path);
    std::string text(reinterpret_cast<const char *>(file.data()), size_t(file.size()));
    parse_json(text, path);
    return text;
}

}  // namespace

void read_diffusers(const std::string & dir_in, ModelFile & out) {
    std::string dir = dir_in;
    while (dir.size() > 1 && (dir.back() == '/' || dir.back() == '\\')) dir.pop_back();

    if (is_file(dir + "/model_index.json")) out.metadata.emplace_back("model_index.json", read_json_text(dir + "/model_index.json"));
    // The prediction type (eps / v) is only stated by the scheduler's config.
    const std::string scheduler = dir + "/scheduler/scheduler_config.json";
    if (is_file(scheduler)) out.metadata.emplace_back("scheduler/scheduler_config.json", read_json_text(scheduler));

    std::unordered_set<std::string> names;
    bool any = false;
    for (const char * component : kComponents) {
        const std::string sub = dir + "/" + component + "/";
        std::string weights;
        for (const char * candidate : kWeightFiles) {
            if (is_file(sub + candidate)) { weights = sub + candidate; break; }
        }
        if (weights.empty()) continue;
        any = true;

        auto file = std::make_shared<const MappedFile>(weights);
        ModelFile part;
        read_any_file(file, part);
        for (auto & t : part.tensors) {
            t.name = std::string(component) + "/" + t.name;
            claim_name(names, t.name, weights);
            out.tensors.push_back(std::move(t));
        }
        for (auto & kv : part.metadata) {
            // sdnode's own keys describe the whole model; keep them unprefixed too (first wins).
            if (kv.first.rfind("sdnode.", 0) == 0 && !out.meta(kv.first)) out.metadata.emplace_back(kv.first, kv.second);
            out.metadata.emplace_back(std::string(component) + "/" + kv.first, std::move(kv.second));
        }
        for (auto & f : part.files) out.files.push_back(std::move(f));
        if (is_file(sub + "config.json"))
            out.metadata.emplace_back(std::string(component) + "/config.json", read_json_text(sub + "config.json"));
    }
    if (!any)
        throw_format(dir, "no unet/, vae/, text_encoder/ or text_encoder_2/ weights found in " + dir +
                              " (expected e.g. unet/diffusion_pytorch_model.safetensors)");
}

}  // namespace detail
}  // namespace sd
