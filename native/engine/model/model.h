// A loaded model: the immutable part shared by every session — canonical names,
// hyperparameters, weights on the device, the tokenizer and the component table. Per-run state
// (compute backends and buffers, reserved graphs, the run's thread) lives in a Session
// (runtime/session.h), so one Model can serve several sessions.
#pragma once
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "adapters/embeddings.h"
#include "components/components.h"
#include "components/taesd.h"
#include "diffusion/schedule.h"
#include "ggml-backend.h"
#include "ggml-cpp.h"
#include "io/model-file.h"
#include "model/arch.h"
#include "model/names.h"
#include "model/weights.h"
#include "text/tokenizer.h"

namespace sd {

struct ModelLoadOptions {
    std::optional<ggml_type> weight_type;  // linear weights converted on load; nullopt = keep the file's
    int threads = 1;
    // "auto" (the first GPU if any, else the CPU), "cpu", or a device name from system_info().
    std::string device = "auto";
    const std::atomic<bool> * abort = nullptr;
    // Loading progress in [0, 1], from the loading thread.
    std::function<void(double)> progress;
    // A TAESD file (diffusers AutoencoderTiny names, e.g. madebyollin/taesd) loaded next to the
    // model: decode_latents / encode_image can then use it (decoder "taesd"). Empty: none.
    std::string taesd_path;
    // A standalone VAE file (LDM "encoder.*"/"decoder.*" names, with or without
    // "first_stage_model.", or diffusers AutoencoderKL names) used instead of the checkpoint's
    // VAE; its latent channels must be the UNet's. The model's own VAE tensors are then unused
    // and not loaded. Empty: the checkpoint's VAE.
    std::string vae_path;
    // What the UNet predicts ("eps", "v", "edm_v": diffusion/prediction.h), overriding the file's
    // metadata and markers. Unset: as detected (arch.cpp).
    std::optional<std::string> prediction;
    // A folder of textual-inversion embeddings (adapters/embeddings.h): each file's name without
    // its extension is a trigger word in prompts. Listed again for every generation, files read
    // when a prompt first uses them. Empty: none. Io error at load when it is not a folder.
    std::string embeddings_dir;
};

class Model {
public:
    // Opens, checks and loads everything a txt2img run needs (UNet, VAE decoder, text encoder).
    // Every tensor a component uses is checked for shape before any weight is read. Throws
    // ModelFormat / UnsupportedModel (what is missing or wrong), Io, OutOfMemory, Aborted,
    // InvalidArgument (an unknown device, threads out of range).
    static std::shared_ptr<const Model> load(const std::string & path, const ModelLoadOptions & options);
    ~Model();
    Model(const Model &) = delete;
    Model & operator=(const Model &) = delete;

    const ModelInfo & info() const { return info_; }
    Arch arch() const { return info_.arch; }
    // The device the weights live on; each session starts its own backend on it.
    ggml_backend_dev_t device() const { return device_; }
    std::string device_name() const;
    int default_threads() const { return threads_; }

    const ClipTokenizer & tokenizer() const { return *tokenizer_; }
    const Components & components() const { return components_; }
    const TextEncoder & text_encoder() const { return *components_.text_encoders.front(); }
    // SDXL's second encoder (OpenCLIP bigG), null for one-encoder models (the refiner's only
    // encoder, bigG, is text_encoder()).
    const TextEncoder * text_encoder_2() const {
        return components_.text_encoders.size() > 1 ? components_.text_encoders[1].get() : nullptr;
    }
    // The encoder whose pooled output goes into the UNet's y (SDXL, refiner), null for SD1/SD2.
    const TextEncoder * pooled_encoder() const {
        if (info_.arch == Arch::SDXLRefiner) return &text_encoder();
        return text_encoder_2();
    }
    const Unet & unet() const { return *components_.unet; }
    // The noise levels the UNet was trained with: what sigmas are drawn from and turned into its
    // timesteps (EDM for edm_v, else the CompVis table, the file's own when it has one).
    const NoiseSchedule & schedule() const { return schedule_; }
    const Vae & vae() const { return *components_.vae; }
    // The TAESD loaded from ModelLoadOptions::taesd_path, null when none was given.
    const Taesd * taesd() const { return taesd_.get(); }

    // The loaded weights of a component as the graphs see them (null when the model has none), and
    // the canonical names of its tensors.
    const TensorSource * tensors(Component c) const;
    std::vector<std::string> tensor_names(Component c) const;

    // Canonical tensors no component uses ("<component>.<name>"), and load warnings.
    const std::vector<std::string> & unused_tensors() const { return unused_; }
    const std::vector<std::string> & warnings() const { return info_.warnings; }

    // Bytes of weights held on the device (for memory accounting).
    uint64_t weight_bytes() const;         // copied into device buffers
    uint64_t mapped_weight_bytes() const;  // used in place from the mapped model file
    // Throws Io when a file whose mapped weights the model uses in place has changed since it was
    // loaded (replaced, truncated, rewritten: reading it would fault or compute with other
    // numbers). A stat() per file; nothing when every weight was copied (SDNODE_MMAP=0, GPU).
    void check_files_unchanged() const;

    // Textual-inversion embeddings: ModelLoadOptions::embeddings_dir, and the files read so far
    // (a cache with its own lock: reading embeddings leaves the model's weights as they are).
    const std::string & embeddings_dir() const { return embeddings_dir_; }
    EmbeddingCache & embedding_cache() const { return *embedding_cache_; }

private:
    Model() = default;

    // One file the model's weights come from: the checkpoint, and the optional VAE and TAESD.
    struct Source {
        ModelFile file;
        CanonicalModel canonical;
    };
    ModelFile file_;
    CanonicalModel canonical_;
    Source vae_file_, taesd_file_;
    ModelInfo info_;
    NoiseSchedule schedule_;
    ggml_backend_ptr load_backend_;  // allocates and fills the weight buffers
    ggml_backend_dev_t device_ = nullptr;
    int threads_ = 1;
    std::map<Component, ComponentWeights> weights_;
    std::map<Component, std::unique_ptr<ComponentTensors>> tensors_;
    const ClipTokenizer * tokenizer_ = nullptr;  // shared, built in (text/tokenizer.h)
    Components components_;
    std::unique_ptr<Taesd> taesd_;
    std::vector<std::string> unused_;
    std::string embeddings_dir_;
    std::unique_ptr<EmbeddingCache> embedding_cache_ = std::make_unique<EmbeddingCache>();
};

// Picks and initializes a backend: "auto" → first GPU/iGPU device, else CPU; "cpu"; or an
// exact device name (e.g. "CUDA0"). Throws InvalidArgument listing the devices for an unknown name.
ggml_backend_ptr init_backend(const std::string & device);

}  // namespace sd
