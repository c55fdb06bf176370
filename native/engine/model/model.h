// A loaded model: the immutable part shared by every run — mapped file, canonical names,
// hyperparameters, weights on the compute backend, tokenizer, and the component graphs' params.
// Per-run state (compute buffers, RNG, sampler) lives in a Session (pipeline.h), so one Model
// can serve runs one after another without reloading.
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "model/arch.h"
#include "ggml-backend.h"
#include "ggml-cpp.h"
#include "io/model-file.h"
#include "model/names.h"
#include "components/text-encoder.h"
#include "text/tokenizer.h"
#include "components/unet.h"
#include "components/vae.h"
#include "model/weights.h"

namespace sd {

struct ModelLoadOptions {
    std::optional<ggml_type> weight_type;  // linear weights converted on load; nullopt = keep the file's
    int threads = 1;
    // "auto" (the first GPU if any, else the CPU), "cpu", or a device name from system_info().
    std::string device = "auto";
    const std::atomic<bool> * abort = nullptr;
    // Loading progress in [0, 1], from the loading thread.
    std::function<void(double)> progress;
};

class Model {
public:
    // Opens, checks and loads everything a txt2img run needs (UNet, VAE decoder, text encoder).
    // Throws ModelFormat / UnsupportedModel (what is missing or wrong), Io, OutOfMemory,
    // Aborted, InvalidArgument (an unknown device).
    static std::unique_ptr<Model> load(const std::string & path, const ModelLoadOptions & options);
    ~Model();

    const ModelFile & file() const { return file_; }
    const ModelInfo & info() const { return info_; }
    Arch arch() const { return info_.arch; }
    ggml_backend_t backend() const { return backend_.get(); }
    std::string device_name() const;
    int default_threads() const { return threads_; }

    const ClipTokenizer & tokenizer() const { return *tokenizer_; }
    const TextEncoder & text_encoder() const { return *text_encoder_; }
    const Unet & unet() const { return *unet_; }
    const VaeDecoder & vae() const { return *vae_; }

    // Bytes of weights held on the backend (for memory accounting).
    uint64_t weight_bytes() const;         // copied into backend buffers
    uint64_t mapped_weight_bytes() const;  // used in place from the mapped model file

private:
    Model() = default;

    ModelFile file_;
    CanonicalModel canonical_;
    ModelInfo info_;
    ggml_backend_ptr backend_;
    int threads_ = 1;
    ComponentWeights text_encoder_weights_, unet_weights_, vae_weights_;
    std::unique_ptr<ComponentTensors> text_encoder_tensors_, unet_tensors_, vae_tensors_;
    const ClipTokenizer * tokenizer_ = nullptr;  // shared, built in (text/tokenizer.h)
    std::unique_ptr<TextEncoder> text_encoder_;
    std::unique_ptr<Unet> unet_;
    std::unique_ptr<VaeDecoder> vae_;
};

// Picks and initializes a backend: "auto" → first GPU/iGPU device, else CPU; "cpu"; or an
// exact device name (e.g. "CUDA0"). Throws InvalidArgument listing the devices for an unknown name.
ggml_backend_ptr init_backend(const std::string & device);

}  // namespace sd
