#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "runtime/backend.h"
#include "core/errors.h"
#include "core/log.h"
#include "model/options.h"

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
    return device_ ? ggml_backend_dev_name(device_) : ggml_backend_name(load_backend_.get());
}

uint64_t Model::weight_bytes() const {
    uint64_t n = 0;
    for (const auto & [c, w] : weights_) n += w.bytes();
    return n;
}

namespace {

// SDNODE_MMAP=0 copies every weight into process memory instead (e.g. to change the model file
// while it is loaded, which a mapped file does not allow).
bool mmap_disabled() {
    const char * v = std::getenv("SDNODE_MMAP");
    return v && std::string(v) == "0";
}

// The noise levels the model was trained with (diffusion/schedule.h). EDM v-prediction: the range
// CosXL stores as edm_vpred.sigma_min / sigma_max (the reference's 0.002 and 120 when absent).
// Otherwise the checkpoint's own alphas_cumprod buffer when it holds a usable table, as
// stable-diffusion.cpp reads it, else the computed one. What is passed over is said in warnings.
NoiseSchedule noise_schedule(const ModelFile & file, ModelInfo & info) {
    auto warn = [&](const std::string & w) { info.warnings.push_back(w); };
    if (info.unet.prediction == Prediction::EdmV) {
        float range[2] = {NoiseSchedule::kEdmSigmaMin, NoiseSchedule::kEdmSigmaMax};
        const char * names[2] = {"edm_vpred.sigma_min", "edm_vpred.sigma_max"};
        for (int i = 0; i < 2; ++i) {
            const TensorRecord * r = file.find(names[i]);
            if (!r) continue;
            const std::vector<float> v = r->numel() == 1 ? read_f32(*r) : std::vector<float>{};
            if (v.size() == 1 && std::isfinite(v[0]) && v[0] > 0) range[i] = v[0];
            else warn(std::string(names[i]) + " is not one positive number; using " + number_text(range[i]));
        }
        if (!(range[0] < range[1])) {
            warn("edm_vpred.sigma_min is not below sigma_max; using " + number_text(NoiseSchedule::kEdmSigmaMin) + " and " +
                 number_text(NoiseSchedule::kEdmSigmaMax));
            range[0] = NoiseSchedule::kEdmSigmaMin;
            range[1] = NoiseSchedule::kEdmSigmaMax;
        }
        if (range[0] != NoiseSchedule::kEdmSigmaMin || range[1] != NoiseSchedule::kEdmSigmaMax) {
            warn("EDM sigma range " + number_text(range[0]) + " to " + number_text(range[1]) +
                 " from the file (stable-diffusion.cpp always uses " + number_text(NoiseSchedule::kEdmSigmaMin) + " to " +
                 number_text(NoiseSchedule::kEdmSigmaMax) + ")");
        }
        return NoiseSchedule::edm(range[0], range[1]);
    }
    const TensorRecord * r = file.find("alphas_cumprod");
    if (!r) return NoiseSchedule();
    std::vector<float> ac;
    if (r->numel() == kTimesteps) ac = read_f32(*r);
    const std::string why = r->numel() == kTimesteps ? NoiseSchedule::invalid_alphas_cumprod(ac)
                                                     : "has " + std::to_string(r->numel()) + " values; expected " +
                                                           std::to_string(kTimesteps);
    if (!why.empty()) {
        warn("the file's alphas_cumprod " + why + "; the standard noise schedule is used");
        return NoiseSchedule();
    }
    return NoiseSchedule(ac);
}

}  // namespace

const TensorSource * Model::tensors(Component c) const {
    auto it = tensors_.find(c);
    return it == tensors_.end() ? nullptr : it->second.get();
}

std::vector<std::string> Model::tensor_names(Component c) const {
    const CanonicalModel & source = c == Component::Vae && !vae_file_.canonical.tensors.empty() ? vae_file_.canonical
                                    : c == Component::Taesd ? taesd_file_.canonical : canonical_;
    std::vector<std::string> names;
    for (const CanonicalTensor & t : source.tensors) {
        if (t.component == c) names.push_back(t.name);
    }
    return names;
}

uint64_t Model::mapped_weight_bytes() const {
    uint64_t n = 0;
    for (const auto & [c, w] : weights_) n += w.mapped_bytes();
    return n;
}

void Model::check_files_unchanged() const {
    std::vector<const MappedFile *> files;
    for (const auto & [c, w] : weights_) {
        if (w.mapped_bytes() == 0) continue;
        for (const auto & f : w.mapped_files()) {
            if (std::find(files.begin(), files.end(), f.get()) == files.end()) files.push_back(f.get());
        }
    }
    for (const MappedFile * f : files) {
        const std::string what = f->changed_since_open();
        if (!what.empty()) {
            throw Error(ErrorCode::Io, f->path() + " changed since the model was loaded: " + what +
                                           "; load the model again (or load it with SDNODE_MMAP=0 to copy every weight)",
                        f->path());
        }
    }
}

std::shared_ptr<const Model> Model::load(const std::string & path, const ModelLoadOptions & options) {
    if (options.threads < limits::kThreadsMin || options.threads > limits::kThreadsMax) {
        throw_invalid("threads must be an integer from " + std::to_string(limits::kThreadsMin) + " to " +
                      std::to_string(limits::kThreadsMax) + "; received " + std::to_string(options.threads));
    }
    std::shared_ptr<Model> m(new Model());
    if (!options.embeddings_dir.empty()) {
        list_embeddings(options.embeddings_dir, {});  // a missing or unreadable folder fails the load
        m->embeddings_dir_ = options.embeddings_dir;
    }
    // More compute threads than logical CPUs only make them wait for each other (measured on 2
    // CPUs: a 2-step 64x64 run took 1.2 s at 2 threads, 28 s at 8, 84 s at 32).
    const int cpus = logical_cpu_count();
    m->threads_ = std::min(options.threads, cpus);
    m->file_ = open_model_file(path);
    m->canonical_ = canonicalize(m->file_);
    m->info_ = detect_architecture(m->file_, m->canonical_);
    if (options.threads > cpus) {
        m->info_.warnings.push_back("threads " + std::to_string(options.threads) + " is more than the " +
                                    std::to_string(cpus) + " logical CPUs this process can use; using " +
                                    std::to_string(cpus));
    }
    if (m->info_.taesd.present && !m->info_.unet.present) {
        throw_unsupported(m->file_.path, "is a TAESD (tiny autoencoder), not a Stable Diffusion model; load the model and pass "
                                         "this file as the taesd option");
    }
    // The latent channels the sampler works on (a separate VAE or TAESD must take the same).
    const int latent_channels = m->info_.unet.present ? m->info_.unet.out_channels : m->info_.vae.z_channels;

    if (!options.vae_path.empty()) {
        Source & src = m->vae_file_;
        src.file = open_model_file(options.vae_path);
        src.canonical = canonicalize(src.file);
        if (!src.canonical.has(Component::Vae)) {
            throw_unsupported(src.file.path, "is not a VAE: no encoder.* / decoder.* tensors (LDM or diffusers AutoencoderKL "
                                             "names) among its " + std::to_string(src.file.tensors.size()) + " tensors" +
                                             (src.file.tensors.empty() ? "" : ", e.g. '" + src.file.tensors.front().name + "'"));
        }
        VaeParams vae = detect_architecture(src.file, src.canonical).vae;
        // The scale factor belongs to the model's latent space: the checkpoint's (its architecture's
        // or its metadata's), unless the VAE file says otherwise in sdnode metadata.
        vae.scale_factor = m->info_.vae.scale_factor;
        if (const std::string * v = src.file.meta("sdnode.vae.scale_factor")) {
            const double f = std::atof(v->c_str());
            if (f > 0) vae.scale_factor = static_cast<float>(f);
        }
        if (vae.z_channels != latent_channels) {
            throw_format(src.file.path, "the VAE's latents have " + std::to_string(vae.z_channels) + " channels; the model's UNet works on " +
                                            std::to_string(latent_channels));
        }
        if (m->info_.vae.present) {
            m->info_.warnings.push_back("the checkpoint's VAE is replaced by " + src.file.path);
        }
        m->info_.vae = vae;
    }
    if (!options.taesd_path.empty()) {
        Source & src = m->taesd_file_;
        src.file = open_model_file(options.taesd_path);
        src.canonical = canonicalize(src.file);
        if (!src.canonical.has(Component::Taesd)) {
            throw_unsupported(src.file.path, "is not a TAESD file: expected diffusers AutoencoderTiny tensors encoder.layers.N.* / "
                                             "decoder.layers.N.*; found " + std::to_string(src.file.tensors.size()) + " tensors" +
                                             (src.file.tensors.empty() ? "" : ", e.g. '" + src.file.tensors.front().name + "'"));
        }
        m->info_.taesd = detect_architecture(src.file, src.canonical).taesd;
        if (m->info_.taesd.z_channels != latent_channels) {
            throw_format(src.file.path, "the TAESD's latents have " + std::to_string(m->info_.taesd.z_channels) +
                                            " channels; the model's UNet works on " + std::to_string(latent_channels));
        }
    } else {
        m->info_.taesd = TaesdParams{};
    }
    const ModelInfo & info = m->info_;

    // txt2img needs all three parts; say which is missing.
    std::vector<std::string> missing;
    if (!info.unet.present) missing.push_back("UNet");
    if (!info.vae.present || !info.vae.has_decoder) missing.push_back("VAE decoder");
    if (info.arch == Arch::SDXLRefiner) {
        if (!info.text_encoder_2.present) missing.push_back("text encoder (OpenCLIP bigG)");
    } else {
        if (!info.text_encoder.present) missing.push_back("text encoder");
        if (info.arch == Arch::SDXL && !info.text_encoder_2.present) missing.push_back("second text encoder (OpenCLIP bigG)");
    }
    if (!missing.empty()) {
        std::string list;
        for (size_t i = 0; i < missing.size(); ++i) list += (i ? (i + 1 == missing.size() ? " and " : ", ") : "") + missing[i];
        throw_unsupported(m->file_.path, "cannot generate images: the model has no " + list);
    }
    if (options.prediction) m->info_.unet.prediction = parse_prediction(*options.prediction);
    m->schedule_ = noise_schedule(m->file_, m->info_);
    if (info.arch == Arch::Unknown) {
        throw_unsupported(m->file_.path, "text-to-image runs SD1.x, SD2.x, SDXL and SDXL refiner models; this one is of an unknown architecture");
    }

    // The components a run uses, in the order they are loaded and reported, and the file each
    // comes from.
    std::vector<Component> parts = {Component::TextEncoder, Component::Unet, Component::Vae};
    if (info.arch == Arch::SDXL) parts.insert(parts.begin() + 1, Component::TextEncoder2);
    if (info.arch == Arch::SDXLRefiner) parts.front() = Component::TextEncoder2;  // bigG alone
    if (info.taesd.present) parts.push_back(Component::Taesd);
    auto source_of = [&](Component c) -> std::pair<const CanonicalModel *, const std::string *> {
        if (c == Component::Vae && !options.vae_path.empty()) return {&m->vae_file_.canonical, &m->vae_file_.file.path};
        if (c == Component::Taesd) return {&m->taesd_file_.canonical, &m->taesd_file_.file.path};
        return {&m->canonical_, &m->file_.path};
    };
    // Every tensor each component will use, checked for shape before any weight is read.
    for (Component c : parts) {
        const auto [canonical, file_path] = source_of(c);
        const ShapeSource shapes(*canonical, c, options.weight_type);
        std::set<std::string> used;
        try {
            used = trace_component(shapes, c, info);
        } catch (const Error & e) {
            if (e.code() == ErrorCode::ModelFormat) throw_format(*file_path, e.what());
            throw;
        }
        for (std::string & name : sd::unused_tensors(*canonical, c, used)) m->unused_.push_back(std::move(name));
    }
    for (const CanonicalModel * canonical : {&m->canonical_, &m->vae_file_.canonical, &m->taesd_file_.canonical}) {
        if (!canonical->unknown.empty()) {
            m->info_.warnings.push_back(std::to_string(canonical->unknown.size()) +
                                        " tensor(s) the name table does not know were ignored, e.g. '" + canonical->unknown.front() + "'");
        }
    }
    if (!m->unused_.empty()) {
        std::string sample;
        for (size_t i = 0; i < m->unused_.size() && i < 5; ++i) sample += (i ? ", " : "") + m->unused_[i];
        m->info_.warnings.push_back(std::to_string(m->unused_.size()) + " tensor(s) that no component uses were ignored: " + sample +
                                    (m->unused_.size() > 5 ? ", ..." : ""));
    }

    m->load_backend_ = init_backend(options.device);
    m->device_ = ggml_backend_get_device(m->load_backend_.get());
    log(LogLevel::Info, "loading " + m->file_.path + " on " + m->device_name());

    // Progress by bytes across the components.
    auto component_bytes = [&](Component c) {
        uint64_t n = 0;
        for (const auto & t : source_of(c).first->tensors) n += t.component == c ? t.nbytes : 0;
        return n;
    };
    uint64_t total = 0;
    for (Component c : parts) total += component_bytes(c);
    uint64_t base = 0;
    for (Component c : parts) {
        WeightLoadOptions wo;
        wo.weight_type = options.weight_type;
        wo.threads = m->threads_;
        wo.abort = options.abort;
        // On the CPU, weights stored as they run are used from the mapped file (no copy, and
        // the graphs drop their pages after each use: see blocks.h release_after_use).
        wo.map_from_file = m->device_ && ggml_backend_dev_type(m->device_) == GGML_BACKEND_DEVICE_TYPE_CPU && !mmap_disabled();
        if (options.progress && total > 0) {
            wo.progress = [&, base](uint64_t done, uint64_t) { options.progress(double(base + done) / double(total)); };
        }
        m->weights_[c] = load_component(*source_of(c).first, c, m->load_backend_.get(), wo);
        m->tensors_[c] = std::make_unique<ComponentTensors>(m->weights_[c]);
        base += component_bytes(c);
    }

    // SD2's OpenCLIP pads prompts with 0, CLIP-L (SD1, SDXL) with the end token.
    m->tokenizer_ = &clip_tokenizer(info.arch == Arch::SD2 ? 0 : kClipEosToken);
    // SDXL's encoders give their skipped layer without the final layer norm (the reference's).
    const bool sdxl_family = is_sdxl_family(info.arch);
    const bool final_ln = !sdxl_family;
    if (info.arch == Arch::SDXLRefiner) {
        m->components_.text_encoders.push_back(
            std::make_unique<TextEncoder>(*m->tensors_[Component::TextEncoder2], info.text_encoder_2, final_ln));
    } else {
        m->components_.text_encoders.push_back(std::make_unique<TextEncoder>(*m->tensors_[Component::TextEncoder], info.text_encoder, final_ln));
    }
    if (info.arch == Arch::SDXL) {
        m->components_.text_encoders.push_back(
            std::make_unique<TextEncoder>(*m->tensors_[Component::TextEncoder2], info.text_encoder_2, final_ln));
    }
    m->components_.unet = std::make_unique<Unet>(*m->tensors_[Component::Unet], info.unet);
    // SDXL's own VAE overflows f16 inside its convolutions: stable-diffusion.cpp scales their inputs
    // by 1/32 unless a VAE file is given (the fp16-fix VAE is the usual one).
    const float vae_conv_scale = sdxl_family && options.vae_path.empty() ? kSdxlVaeConvScale : 1.0f;
    m->components_.vae = std::make_unique<Vae>(*m->tensors_[Component::Vae], info.vae, vae_conv_scale);
    if (info.taesd.present) m->taesd_ = std::make_unique<Taesd>(*m->tensors_[Component::Taesd], info.taesd);
    // Every weight now lives on the device or in the mapped ranges the weights keep: drop the
    // files' own references (metadata and names stay).
    for (ModelFile * f : {&m->file_, &m->vae_file_.file, &m->taesd_file_.file}) {
        for (auto & t : f->tensors) t.file.reset();
        f->files.clear();
    }
    if (options.progress) options.progress(1.0);
    return m;
}

}  // namespace sd
