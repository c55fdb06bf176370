#include "components/components.h"

#include "core/errors.h"
#include "model/weights.h"
#include "text/tokenizer.h"

namespace sd {

namespace {

// Records which names a graph looks up.
class RecordingSource : public TensorSource {
public:
    explicit RecordingSource(const TensorSource & inner) : inner_(inner) {}
    ggml_tensor * find(const std::string & name) const override {
        ggml_tensor * t = inner_.find(name);
        if (t) used_.insert(name);
        return t;
    }
    bool quantized() const override { return inner_.quantized(); }
    std::set<std::string> & used() const { return used_; }

private:
    const TensorSource & inner_;
    mutable std::set<std::string> used_;
};

// A metadata-only context for one traced graph.
ggml_context_ptr trace_context() {
    ggml_init_params params{ggml_tensor_overhead() * kMaxGraphNodes * 2, nullptr, true};
    ggml_context_ptr ctx(ggml_init(params));
    if (!ctx) throw Error(ErrorCode::OutOfMemory, "cannot allocate a graph context to check the model");
    return ctx;
}

}  // namespace

ShapeSource::ShapeSource(const CanonicalModel & model, Component component, std::optional<ggml_type> weight_type) {
    size_t count = 0;
    for (const auto & t : model.tensors) count += t.component == component;
    ggml_init_params params{ggml_tensor_overhead() * (count + 1), nullptr, true};
    ctx_.reset(ggml_init(params));
    if (!ctx_) throw Error(ErrorCode::OutOfMemory, "cannot allocate tensor metadata");
    for (const auto & t : model.tensors) {
        if (t.component != component || t.shape.empty() || t.shape.size() > 4) continue;
        const ggml_type type = placed_type(component, t.name, t.shape, stored_ggml_type(*t.source), weight_type);
        int64_t ne[4] = {1, 1, 1, 1};
        for (size_t d = 0; d < t.shape.size(); ++d) ne[d] = t.shape[t.shape.size() - 1 - d];
        ggml_tensor * g = ggml_new_tensor(ctx_.get(), type, static_cast<int>(t.shape.size()), ne);
        ggml_set_name(g, t.name.c_str());
        tensors_[t.name] = g;
        quantized_ |= ggml_is_quantized(type);
    }
}

ggml_tensor * ShapeSource::find(const std::string & name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : it->second;
}

std::set<std::string> trace_component(const TensorSource & weights, Component component, const ModelInfo & info) {
    RecordingSource rec(weights);
    ggml_context_ptr owned = trace_context();
    ggml_context * ctx = owned.get();
    // The kernels' graph nodes are part of what is traced (their builders check layouts too).
    Graph g{ctx, rec, {}};
    try {
        switch (component) {
            case Component::TextEncoder:
            case Component::TextEncoder2: {
                const TextEncoderParams & p = component == Component::TextEncoder ? info.text_encoder : info.text_encoder_2;
                TextEncoder te(rec, p);
                te.build(g, ggml_new_tensor_2d(ctx, GGML_TYPE_I32, kClipChunkLength, 1), 1);  // every layer
                // SDXL's bigG also gives the pooled output (through text_projection).
                if (component == Component::TextEncoder2 && is_sdxl_family(info.arch)) {
                    te.build_pooled(g, ggml_new_tensor_2d(ctx, GGML_TYPE_I32, kClipChunkLength, 1), ggml_new_tensor_1d(ctx, GGML_TYPE_I32, 1));
                }
                break;
            }
            case Component::Unet: {
                const UnetParams & p = info.unet;
                Unet unet(rec, p);
                const int m = unet.spatial_multiple();
                Unet::GraphInputs in;
                in.x = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, m, m, p.in_channels, 1);
                in.timesteps = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 1);
                in.context = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, p.context_dim, kClipChunkLength, 1);
                if (p.adm_in_channels > 0) in.y = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, p.adm_in_channels, 1);
                unet.build(g, in);
                break;
            }
            case Component::Taesd: {
                Taesd taesd(rec, info.taesd);
                if (taesd.can_decode()) taesd.build_decoder(g, ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 1, 1, info.taesd.z_channels, 1));
                if (taesd.can_encode()) {
                    const int f = taesd.upscale();
                    taesd.build_encoder(g, ggml_new_tensor_4d(ctx, GGML_TYPE_F32, f, f, info.taesd.image_channels, 1));
                }
                break;
            }
            case Component::ControlNet:
                throw Error(ErrorCode::Internal, "ControlNet files are traced by ControlNet::load (trace_graph)");
            case Component::Vae: {
                Vae vae(rec, info.vae);
                if (vae.can_decode()) vae.build_decoder(g, ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 1, 1, info.vae.z_channels, 1));
                if (vae.can_encode()) {
                    const int f = vae.upscale();
                    vae.build_encoder(g, ggml_new_tensor_4d(ctx, GGML_TYPE_F32, f, f, info.vae.in_channels, 1));
                }
                break;
            }
        }
    } catch (const Error & e) {
        if (e.code() != ErrorCode::ModelFormat && e.code() != ErrorCode::InvalidArgument) throw;
        throw Error(ErrorCode::ModelFormat, std::string(component_name(component)) + ": " + e.what());
    }
    return std::move(rec.used());
}

std::set<std::string> trace_graph(const TensorSource & weights, const std::string & what,
                                  const std::function<void(Graph &)> & build) {
    RecordingSource rec(weights);
    ggml_context_ptr owned = trace_context();
    Graph g{owned.get(), rec, {}};
    try {
        build(g);
    } catch (const Error & e) {
        if (e.code() != ErrorCode::ModelFormat && e.code() != ErrorCode::InvalidArgument) throw;
        throw Error(ErrorCode::ModelFormat, what + ": " + e.what());
    }
    return std::move(rec.used());
}

std::vector<std::string> unused_tensors(const CanonicalModel & model, Component component, const std::set<std::string> & used) {
    std::vector<std::string> out;
    for (const auto & t : model.tensors) {
        if (t.component == component && !used.count(t.name)) out.push_back(std::string(component_name(component)) + "." + t.name);
    }
    return out;
}

}  // namespace sd
