// The components of a model, held in one table by role: any number of text encoders (SD1/SD2
// one, SDXL two), the UNet, the VAE (encoder optional), and room for auxiliary models later.
//
// Checks at load: trace_component() builds a component's graph once on tensor metadata only
// (nothing is computed or allocated), through the same blocks that run later. Every weight the
// component will use is then looked up and its shape checked against its input there (a bad
// shape is a ModelFormat error naming the tensor, the expected and the found shape, before any
// weight is read), and the names it did not look up are the file's unused tensors.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "components/taesd.h"
#include "components/text-encoder.h"
#include "components/unet.h"
#include "components/vae.h"
#include "ggml-cpp.h"
#include "model/names.h"

namespace sd {

struct Components {
    std::vector<std::unique_ptr<TextEncoder>> text_encoders;  // in conditioning order
    std::unique_ptr<Unet> unet;
    std::unique_ptr<Vae> vae;
};

// The canonical tensors of one component as metadata-only ggml tensors (shape and the type they
// would be placed in under `weight_type`), for tracing before anything is loaded.
class ShapeSource : public TensorSource {
public:
    ShapeSource(const CanonicalModel & model, Component component, std::optional<ggml_type> weight_type);
    ggml_tensor * find(const std::string & name) const override;
    bool quantized() const override { return quantized_; }

private:
    ggml_context_ptr ctx_;
    std::map<std::string, ggml_tensor *> tensors_;
    bool quantized_ = false;
};

// Builds `component`'s graph (every layer it runs at any clip skip or size) on metadata only and
// returns the canonical names it used. Throws ModelFormat ("<component>: ...") for a tensor that
// is missing or has the wrong shape.
std::set<std::string> trace_component(const TensorSource & weights, Component component, const ModelInfo & info);

// trace_component's machinery for a graph outside the component table (a ControlNet): builds
// `build`'s graph on metadata only over `weights` and returns the canonical names it used.
// Throws ModelFormat ("<what>: ...") for a tensor that is missing or has the wrong shape.
std::set<std::string> trace_graph(const TensorSource & weights, const std::string & what,
                                  const std::function<void(Graph &)> & build);

// The canonical tensors of present components that no component uses, as "<component>.<name>".
std::vector<std::string> unused_tensors(const CanonicalModel & model, Component component, const std::set<std::string> & used);

}  // namespace sd
