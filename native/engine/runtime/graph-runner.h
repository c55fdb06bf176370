// Runs ggml graphs: builds a graph from a callback, schedules it with ggml_backend_sched on the
// session's backend and the CPU (an op the backend cannot run falls back to the CPU instead of
// aborting), allocates its activations (reserved once per shape key, so the sampler loop reuses
// the same buffers), copies host inputs in, computes, and copies outputs back as f32.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpp.h"
#include "kernels/cpu-kernels.h"
#include "ggml.h"

namespace sd {

class WeightAdapter;

// A host tensor: flat data in ggml order (ne[0] fastest), i.e. torch's contiguous layout with
// the shape reversed.
struct HostTensor {
    std::vector<float> data;
    int64_t ne[4] = {1, 1, 1, 1};
    int64_t numel() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

// What a build callback gets: the graph's context and a way to declare inputs, whose host data
// the runner copies in once the graph is allocated.
class GraphBuilder {
public:
    explicit GraphBuilder(ggml_context * ctx) : ctx_(ctx) {}
    ggml_context * ctx() const { return ctx_; }

    // `data` must stay alive until GraphRunner::run returns; it holds ggml_nelements floats/ints.
    ggml_tensor * input_f32(const char * name, const float * data, int64_t ne0, int64_t ne1 = 1, int64_t ne2 = 1,
                            int64_t ne3 = 1);
    ggml_tensor * input_i32(const char * name, const int32_t * data, int64_t ne0, int64_t ne1 = 1);

private:
    friend class GraphRunner;
    struct Pending {
        ggml_tensor * tensor;
        const void * data;
    };
    ggml_context * ctx_;
    std::vector<Pending> inputs_;
};

class GraphRunner {
public:
    // `backend` is not owned and must outlive the runner. Off the CPU, the runner adds a CPU
    // backend of its own for the ops `backend` does not support.
    GraphRunner(ggml_backend_t backend, int threads = 1);
    ~GraphRunner();
    GraphRunner(const GraphRunner &) = delete;
    GraphRunner & operator=(const GraphRunner &) = delete;

    ggml_backend_t backend() const { return backend_; }
    void set_threads(int threads);
    // Raised mid-graph, compute stops at the next node and run() throws Aborted.
    void set_abort_flag(const std::atomic<bool> * flag) { abort_ = flag; }
    // Whether the abort flag is raised (work split over several runs checks it between them).
    bool aborted() const { return abort_ && abort_->load(); }
    // The kernel abort slot of this runner's graphs (CpuKernels::abort_slot).
    uint16_t abort_slot() const { return kernel_abort_.id(); }

    // The adapters (LoRA) the graphs built from now on see their weights through (nn/blocks.h
    // component_graph); null: the model's weights as loaded. Not owned.
    void set_weight_adapter(const WeightAdapter * adapter) { adapter_ = adapter; }
    const WeightAdapter * weight_adapter() const { return adapter_; }

    // Tensor names (ggml_format_name) to keep and return from the next runs, for comparisons.
    void set_debug_outputs(std::vector<std::string> names) { debug_names_ = std::move(names); }
    const std::map<std::string, HostTensor> & debug_values() const { return debug_values_; }

    using BuildFn = std::function<ggml_tensor *(GraphBuilder &)>;
    // Builds, allocates (reserving when `shape_key` is new), computes and returns the tensor the
    // callback returned. Throws Aborted, OutOfMemory, Internal (compute failure).
    HostTensor run(const std::string & shape_key, const BuildFn & build);

    // Bytes of compute buffer (activations, every backend) the graph `build` makes would need on
    // its own, measured by ggml's allocator without allocating or computing anything (inputs'
    // data is not read). Leaves the reservations of run() as they were.
    size_t measure(const BuildFn & build);

    // Bytes of the compute buffers (activations) reserved so far, on every backend.
    size_t compute_buffer_bytes() const;

private:
    void apply_threads();
    void set_abort_callbacks(bool on);

    ggml_backend_t backend_;
    ggml_backend_ptr cpu_fallback_;       // off the CPU only
    std::vector<ggml_backend_t> backends_;  // backend_, then the CPU fallback if any
    int threads_ = 1;
    const std::atomic<bool> * abort_ = nullptr;
    const WeightAdapter * adapter_ = nullptr;
    KernelAbortSlot kernel_abort_;  // points at abort_ while a graph computes
    ggml_backend_sched_ptr sched_;
    std::set<std::string> reserved_;
    std::vector<uint8_t> meta_;  // graph context metadata, reused by every run (no page faults per step)
    std::vector<std::string> debug_names_;
    std::map<std::string, HostTensor> debug_values_;
};

// Points a runner at a job's abort flag for one scope, and back at none when it ends (thrown
// errors included).
class ScopedAbort {
public:
    ScopedAbort(GraphRunner & runner, const std::atomic<bool> * flag) : runner_(runner) { runner_.set_abort_flag(flag); }
    ~ScopedAbort() { runner_.set_abort_flag(nullptr); }
    ScopedAbort(const ScopedAbort &) = delete;
    ScopedAbort & operator=(const ScopedAbort &) = delete;

private:
    GraphRunner & runner_;
};

// Clears a runner's weight adapter when the scope ends (thrown errors included).
class ScopedWeightAdapter {
public:
    explicit ScopedWeightAdapter(GraphRunner & runner) : runner_(runner) {}
    ~ScopedWeightAdapter() { runner_.set_weight_adapter(nullptr); }
    ScopedWeightAdapter(const ScopedWeightAdapter &) = delete;
    ScopedWeightAdapter & operator=(const ScopedWeightAdapter &) = delete;

private:
    GraphRunner & runner_;
};

// Largest graph a component builds (nodes); SDXL's UNet is the biggest at ~10k.
constexpr size_t kMaxGraphNodes = 32768;

}  // namespace sd
