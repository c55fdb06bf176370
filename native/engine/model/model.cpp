#include "model/model.h"

#include <cstdlib>

#include "runtime/backend.h"
#include "core/errors.h"
#include "core/log.h"

namespace sd {

ggml_backend_ptr init_backend(const std::string & device) {
    init_backends();
    ggml_backend_dev_t chosen = nullptr;
    std::string names;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const std::string name = ggml_backend_dev_name(dev);
        const auto type = ggml_backend_dev_type(dev);
        names += (names.empty() ? "" : ", ") + name;
        if (device == "auto") {
            if (!chosen && (type == GGML_BACKEND_DEVICE_TYPE_GPU || type == GGML_BACKEND_DEVICE_TYPE_IGPU)) chosen = dev;
        } else if (device == "cpu") {
            if (!chosen && type == GGML_BACKEND_DEVICE_TYPE_CPU) chosen = dev;
        } else if (name == device) {
            chosen = dev;
        }
    }
    if (!chosen && device == "auto") chosen = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!chosen) throw_invalid("backend must be \"auto\", \"cpu\" or one of the devices (" + names + "); received \"" + device + "\"");
    ggml_backend_ptr backend(ggml_backend_dev_init(chosen, nullptr));
    if (!backend) throw Error(ErrorCode::Internal, std::string("cannot initialize the ") + ggml_backend_dev_name(chosen) + " backend");
    return backend;
}

Model::~Model() = default;

std::string Model::device_name() const {
    ggml_backend_dev_t dev = ggml_backend_get_device(backend_.get());
    return dev ? ggml_backend_dev_name(dev) : ggml_backend_name(backend_.get());
}

uint64_t Model::weight_bytes() const {
    return text_encoder_weights_.bytes() + unet_weights_.bytes() + vae_weights_.bytes();
}

namespace {

// SDNODE_MMAP=0 copies every weight into process memory instead (e.g. to change the model file
// while it is loaded, which a mapped file does not allow).
bool mmap_disabled() {
    const char * v = std::getenv("SDNODE_MMAP");
    return v && std::string(v) == "0";
}

}  // namespace

uint64_t Model::mapped_weight_bytes() const {
    return text_encoder_weights_.mapped_bytes() + unet_weights_.mapped_bytes() + vae_weights_.mapped_bytes();
}

std::unique_ptr<Model> Model::load(const std::string & path, const ModelLoadOptions & options) {
    if (options.threads < 1) throw_invalid("threads must be at least 1; received " + std::to_string(options.threads));
    std::unique_ptr<Model> m(new Model());
    m->threads_ = options.threads;
    m->file_ = open_model_file(path);
    m->canonical_ = canonicalize(m->file_);
    m->info_ = detect_architecture(m->file_, m->canonical_);
    const ModelInfo & info = m->info_;

    // txt2img needs all three parts; say which is missing.
    std::string missing;
    if (!info.unet.present) missing += " a UNet";
    if (!info.vae.present || !info.vae.has_decoder) missing += missing.empty() ? " a VAE decoder" : ", a VAE decoder";
    if (!info.text_encoder.present) missing += missing.empty() ? " a text encoder" : ", a text encoder";
    if (!missing.empty()) throw_unsupported(m->file_.path, "cannot generate images: the model has no" + missing);
    if (info.arch != Arch::SD1 && info.arch != Arch::SD2) {
        throw_unsupported(m->file_.path, std::string("text-to-image runs SD1.x and SD2.x models; this one is ") + arch_name(info.arch));
    }

    m->backend_ = init_backend(options.device);
    log(LogLevel::Info, "loading " + m->file_.path + " on " + m->device_name());

    // Progress by bytes across the three components.
    uint64_t total = 0;
    for (const auto & t : m->canonical_.tensors) total += t.nbytes;
    uint64_t base = 0;
    auto load = [&](Component c) {
        WeightLoadOptions wo;
        wo.weight_type = options.weight_type;
        wo.threads = options.threads;
        wo.abort = options.abort;
        // On the CPU, weights stored as they run are used from the mapped file (no copy, and
        // the graphs drop their pages after each use: see blocks.h release_after_use).
        ggml_backend_dev_t dev = ggml_backend_get_device(m->backend_.get());
        wo.map_from_file = dev && ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU && !mmap_disabled();
        if (options.progress && total > 0) {
            wo.progress = [&, base](uint64_t done, uint64_t) { options.progress(double(base + done) / double(total)); };
        }
        ComponentWeights w = load_component(m->canonical_, c, m->backend_.get(), wo);
        for (const auto & t : m->canonical_.tensors) base += t.component == c ? t.nbytes : 0;
        return w;
    };
    m->text_encoder_weights_ = load(Component::TextEncoder);
    m->unet_weights_ = load(Component::Unet);
    m->vae_weights_ = load(Component::Vae);

    m->text_encoder_tensors_ = std::make_unique<ComponentTensors>(m->text_encoder_weights_);
    m->unet_tensors_ = std::make_unique<ComponentTensors>(m->unet_weights_);
    m->vae_tensors_ = std::make_unique<ComponentTensors>(m->vae_weights_);
    // SD2's OpenCLIP pads prompts with 0, CLIP-L with the end token.
    m->tokenizer_ = &clip_tokenizer(info.arch == Arch::SD2 ? 0 : kClipEosToken);
    m->text_encoder_ = std::make_unique<TextEncoder>(*m->text_encoder_tensors_, info.text_encoder);
    m->unet_ = std::make_unique<Unet>(*m->unet_tensors_, info.unet);
    m->vae_ = std::make_unique<VaeDecoder>(*m->vae_tensors_, info.vae);
    // Every weight now lives on the backend or in the mapped ranges the weights keep: drop the
    // model file's own references (metadata and names stay).
    for (auto & t : m->file_.tensors) t.file.reset();
    m->file_.files.clear();
    if (options.progress) options.progress(1.0);
    return m;
}

}  // namespace sd
