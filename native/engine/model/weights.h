// Weight placement: one component's canonical tensors copied (and converted) from the mapped
// file into a ggml backend buffer, immutable afterwards and shared by every run.
//
// Type rules (as stable-diffusion.cpp types its weights, so quantized runs match it):
//   - convolution kernels (4-D) are f16, whatever type is asked for;
//   - 1-D tensors (norm weights, every bias) and scalars are f32, and so is OpenCLIP bigG's
//     text_projection (the reference's parameter type);
//   - linear (2-D) weights take the requested type, except token/position embeddings and the
//     time/label embedding MLPs, which keep their stored type (f32 if not a float type ggml runs),
//     and rows whose length is not a multiple of the requested type's block size (kept as stored);
//   - with no requested type every tensor keeps its stored type where ggml can run it
//     (f64/integer → f32), and conv kernels still become f16.
// The same rules hold for every requested type (q4_0, K-quants: the block size decides which rows
// qualify). Checked against the q8_0 reference case: its conditionings and step-0 UNet outputs
// match bit for bit when ggml's f16 dot products accumulate in f32 (native/tests/reference_test.cpp).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "ggml-backend.h"
#include "ggml-cpp.h"
#include "model/names.h"

namespace sd {

struct WeightLoadOptions {
    std::optional<ggml_type> weight_type;  // requested type for linear weights; nullopt = keep
    int threads = 1;                      // conversion threads
    // Use tensors whose stored bytes are what the backend runs (same type, no transpose, large)
    // straight from the mapped file instead of copying them (CPU backend only): the file stays
    // mapped while the weights live, and release_pages() can drop them from resident memory.
    bool map_from_file = false;
    const std::atomic<bool> * abort = nullptr;
    // Called after each tensor (from a loading thread, never concurrently): bytes done, bytes total.
    std::function<void(uint64_t, uint64_t)> progress;
};

// Parses "f32", "f16", "bf16", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1", "q2_K".."q6_K".
// Throws InvalidArgument naming the accepted names.
ggml_type parse_weight_type(const std::string & name);
std::vector<std::string> weight_type_names();  // the names parse_weight_type accepts, in order

// The ggml type the stored bytes are in, or GGML_TYPE_COUNT when they need a host conversion
// (f64, integers, bool) before ggml can use them.
ggml_type stored_ggml_type(const TensorRecord & r);

// A stored tensor's values as f32 (any stored type ggml or the readers know). Throws
// UnsupportedModel for a ggml type without a conversion.
std::vector<float> read_f32(const TensorRecord & r);
// f32 rows into `type` as the loader converts them (quantized types with stable-diffusion.cpp's
// importance matrix of ones), `rows` rows of `row_len` values (a multiple of the type's block).
void convert_from_f32(ggml_type type, const float * src, void * dst, int64_t rows, int64_t row_len);

// The type a canonical tensor gets under `options` (the rules above).
ggml_type placed_type(Component component, const std::string & name, const std::vector<int64_t> & shape,
                      ggml_type stored, std::optional<ggml_type> requested);

// Where a tensor used straight from the mapped file lives in it.
struct MappedRange {
    const MappedFile * file;
    uint64_t offset, size;
};

// Whether any of `tensors` (a map of name -> ggml_tensor *) is in a quantized type.
template <class Tensors>
bool any_quantized(const Tensors & tensors) {
    for (const auto & entry : tensors) {
        if (ggml_is_quantized(entry.second->type)) return true;
    }
    return false;
}

class ComponentWeights {
public:
    ComponentWeights() = default;
    ComponentWeights(ComponentWeights &&) = default;
    ComponentWeights & operator=(ComponentWeights &&) = default;

    // Throws ModelFormat "<component> has no tensor '<name>'" when absent.
    ggml_tensor * get(const std::string & name) const;
    ggml_tensor * find(const std::string & name) const;  // nullptr when absent
    bool has(const std::string & name) const { return find(name) != nullptr; }
    uint64_t bytes() const;  // copied to the backend
    uint64_t mapped_bytes() const;  // used from the mapped file
    // The files these weights use in place (empty when every weight was copied).
    const std::vector<std::shared_ptr<const MappedFile>> & mapped_files() const { return files_; }
    // The file range of `t` when it is used from the mapped file, else nullptr. Stable for the
    // lifetime of these weights.
    const MappedRange * mapped_range(const ggml_tensor * t) const;
    Component component() const { return component_; }
    bool quantized() const;  // any weight in a quantized type (q8_0, q4_0, k-quants)
    size_t count() const { return map_.size(); }

private:
    friend ComponentWeights load_component(const CanonicalModel &, Component, ggml_backend_t,
                                           const WeightLoadOptions &);
    Component component_ = Component::Unet;
    ggml_context_ptr ctx_;
    ggml_backend_buffer_ptr buffer_;
    std::vector<ggml_backend_buffer_ptr> file_buffers_;            // one per mapped file used
    std::vector<std::shared_ptr<const MappedFile>> files_;          // kept mapped while in use
    std::unordered_map<const ggml_tensor *, MappedRange> mapped_;
    std::unordered_map<std::string, ggml_tensor *> map_;
};

// Creates every canonical tensor of `component` on `backend` and fills it from the file,
// converting types as the rules above say. Throws Aborted when options.abort is raised,
// OutOfMemory when the backend buffer cannot be allocated, UnsupportedModel for stored types
// that cannot be converted.
ComponentWeights load_component(const CanonicalModel & model, Component component, ggml_backend_t backend,
                                const WeightLoadOptions & options);

}  // namespace sd
