// inspect_model(): what a file holds, read from its headers, with each present component traced
// on metadata (components/components.h) to find tensors that do not fit or that nothing uses.
#include "sd.h"

namespace sd {

ModelReport inspect_model(const std::string & path) {
    ModelReport r;
    const ModelFile file = open_model_file(path);
    const CanonicalModel canonical = canonicalize(file);
    r.info = detect_architecture(file, canonical);
    r.format = file.format;
    r.tensor_count = file.tensors.size();
    r.metadata.assign(file.metadata.begin(), file.metadata.end());
    r.unknown_tensors = canonical.unknown;
    r.ignored_tensors = canonical.ignored.size();
    const std::pair<Component, bool> parts[] = {
        {Component::Unet, r.info.unet.present},
        {Component::Vae, r.info.vae.present},
        {Component::TextEncoder, r.info.text_encoder.present},
        {Component::TextEncoder2, r.info.text_encoder_2.present},
        {Component::Taesd, r.info.taesd.present},
    };
    for (const auto & [c, present] : parts) {
        if (!present) continue;
        try {
            const ShapeSource shapes(canonical, c, std::nullopt);
            for (std::string & name : unused_tensors(canonical, c, trace_component(shapes, c, r.info))) {
                r.unused_tensors.push_back(std::move(name));
            }
        } catch (const Error & e) {
            if (e.code() != ErrorCode::ModelFormat) throw;
            r.info.warnings.push_back(std::string("cannot run as it is: ") + e.what());
        }
    }
    return r;
}

}  // namespace sd
