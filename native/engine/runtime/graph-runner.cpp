#include "runtime/graph-runner.h"

#include "nn/blocks.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "core/errors.h"

namespace sd {

namespace {

// The backend's own setter, found through its registry so that it also works when the CPU
// backend is a dynamically loaded module (portable builds link no ggml-cpu symbols).
void * backend_proc(ggml_backend_t backend, const char * name) {
    ggml_backend_dev_t dev = ggml_backend_get_device(backend);
    ggml_backend_reg_t reg = dev ? ggml_backend_dev_backend_reg(dev) : nullptr;
    return reg ? ggml_backend_reg_get_proc_address(reg, name) : nullptr;
}

bool abort_requested(void * data) { return static_cast<const std::atomic<bool> *>(data)->load(); }

ggml_tensor * declare_input(ggml_tensor * t, const char * name) {
    ggml_set_name(t, name);
    ggml_set_input(t);
    return t;
}

HostTensor read_tensor(const ggml_tensor * t) {
    if (t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t)) {
        throw Error(ErrorCode::Internal, std::string("graph output '") + t->name + "' is not a contiguous f32 tensor");
    }
    HostTensor out;
    for (int d = 0; d < 4; ++d) out.ne[d] = t->ne[d];
    out.data.resize(static_cast<size_t>(ggml_nelements(t)));
    ggml_backend_tensor_get(t, out.data.data(), 0, ggml_nbytes(t));
    return out;
}

// SDNODE_PROFILE_OPS=1 (a development aid): nodes run one at a time and each graph prints, to
// stderr, the time per op and name pattern (digits as '#'), largest first. Slower overall (each
// node starts the threads), but shows where a graph's time goes.
bool profile_ops() {
    static const bool on = [] {
        const char * env = std::getenv("SDNODE_PROFILE_OPS");
        return env && *env && std::string(env) != "0";
    }();
    return on;
}

ggml_status compute_profiled(ggml_backend_t backend, ggml_cgraph * gf, const std::string & shape_key) {
    std::vector<uint8_t> meta(ggml_graph_overhead_custom(1, false) + ggml_tensor_overhead());
    ggml_init_params params{meta.size(), meta.data(), true};
    ggml_context_ptr ctx(ggml_init(params));
    ggml_cgraph * one = ggml_new_graph_custom(ctx.get(), 1, false);
    struct Entry {
        double ms = 0;
        int count = 0;
    };
    std::map<std::string, Entry> per_key;
    double total = 0;
    ggml_status status = GGML_STATUS_SUCCESS;
    for (int i = 0; i < ggml_graph_n_nodes(gf) && status == GGML_STATUS_SUCCESS; ++i) {
        ggml_tensor * node = ggml_graph_node(gf, i);
        ggml_graph_clear(one);
        ggml_graph_add_node(one, node);
        const auto t0 = std::chrono::steady_clock::now();
        status = ggml_backend_graph_compute(backend, one);
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        // Unnamed nodes by shape, named ones by name pattern.
        std::string key = node->name;
        if (key.rfind("node_", 0) == 0) {
            key = "[";
            for (int d = 0; d < 4; ++d) key += std::to_string(node->ne[d]) + (d < 3 ? "," : "]");
        } else {
            for (char & c : key) {
                if (c >= '0' && c <= '9') c = '#';
            }
        }
        for (const std::string & k : {std::string(ggml_op_desc(node)) + " " + key, std::string("= ") + ggml_op_desc(node)}) {
            per_key[k].ms += ms;
            per_key[k].count += 1;
        }
        total += ms;
    }
    std::vector<std::pair<std::string, Entry>> rows(per_key.begin(), per_key.end());
    std::sort(rows.begin(), rows.end(), [](const auto & a, const auto & b) { return a.second.ms > b.second.ms; });
    std::fprintf(stderr, "[sdnode profile] %s: %.1f ms, %d nodes\n", shape_key.c_str(), total, ggml_graph_n_nodes(gf));
    for (const auto & [key, e] : rows) {
        if (e.ms < total * 0.002) break;
        std::fprintf(stderr, "  %8.2f ms %5.1f%% %5d  %s\n", e.ms, 100 * e.ms / total, e.count, key.c_str());
    }
    return status;
}

}  // namespace

ggml_tensor * GraphBuilder::input_f32(const char * name, const float * data, int64_t ne0, int64_t ne1, int64_t ne2,
                                      int64_t ne3) {
    ggml_tensor * t = declare_input(ggml_new_tensor_4d(ctx_, GGML_TYPE_F32, ne0, ne1, ne2, ne3), name);
    inputs_.push_back({t, data});
    return t;
}

ggml_tensor * GraphBuilder::input_i32(const char * name, const int32_t * data, int64_t ne0, int64_t ne1) {
    ggml_tensor * t = declare_input(ggml_new_tensor_2d(ctx_, GGML_TYPE_I32, ne0, ne1), name);
    inputs_.push_back({t, data});
    return t;
}

GraphRunner::GraphRunner(ggml_backend_t backend, int threads) : backend_(backend) {
    if (!backend_) throw Error(ErrorCode::Internal, "GraphRunner needs a backend");
    backends_.push_back(backend_);
    ggml_backend_dev_t dev = ggml_backend_get_device(backend_);
    if (!dev || ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_CPU) {
        // The scheduler needs the CPU last: it runs what the backend cannot.
        cpu_fallback_.reset(ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr));
        if (!cpu_fallback_) throw Error(ErrorCode::Internal, "cannot initialize a CPU backend for the ops other backends lack");
        backends_.push_back(cpu_fallback_.get());
    }
    sched_.reset(ggml_backend_sched_new(backends_.data(), nullptr, static_cast<int>(backends_.size()), kMaxGraphNodes,
                                        false, false));
    if (!sched_) throw Error(ErrorCode::OutOfMemory, "cannot create a graph scheduler");
    set_threads(threads);
}

GraphRunner::~GraphRunner() = default;

void GraphRunner::set_threads(int threads) {
    threads_ = std::max(1, threads);
    apply_threads();
}

void GraphRunner::apply_threads() {
    for (ggml_backend_t b : backends_) {
        auto set = reinterpret_cast<ggml_backend_set_n_threads_t>(backend_proc(b, "ggml_backend_set_n_threads"));
        if (set) set(b, threads_);
    }
}

// Raised mid-graph, the CPU backends stop at the next node (and sdnode's kernels inside theirs).
void GraphRunner::set_abort_callbacks(bool on) {
    kernel_abort_.point_at(on ? abort_ : nullptr);
    for (ggml_backend_t b : backends_) {
        auto set = reinterpret_cast<ggml_backend_set_abort_callback_t>(backend_proc(b, "ggml_backend_set_abort_callback"));
        if (!set) continue;
        if (on && abort_) set(b, abort_requested, const_cast<std::atomic<bool> *>(abort_));
        else set(b, nullptr, nullptr);
    }
}

size_t GraphRunner::compute_buffer_bytes() const {
    size_t total = 0;
    for (ggml_backend_t b : backends_) total += ggml_backend_sched_get_buffer_size(sched_.get(), b);
    return total;
}

size_t GraphRunner::measure(const BuildFn & build) {
    const size_t meta = ggml_tensor_overhead() * kMaxGraphNodes + ggml_graph_overhead_custom(kMaxGraphNodes, false);
    if (meta_.size() < meta) meta_.resize(meta);
    ggml_init_params params{meta_.size(), meta_.data(), true};
    ggml_context_ptr owned(ggml_init(params));
    if (!owned) throw Error(ErrorCode::OutOfMemory, "cannot allocate a graph context");
    GraphBuilder builder(owned.get());
    ggml_tensor * out = build(builder);
    if (!out) throw Error(ErrorCode::Internal, "graph builder returned no output");
    ggml_set_output(out);
    ggml_cgraph * gf = ggml_new_graph_custom(owned.get(), kMaxGraphNodes, false);
    ggml_build_forward_expand(gf, out);
    std::vector<size_t> sizes(backends_.size(), 0);
    ggml_backend_sched_reserve_size(sched_.get(), gf, sizes.data());
    ggml_backend_sched_reset(sched_.get());
    // Measuring plans the allocator for the measured graph; the next run of any shape must plan
    // (reserve) again rather than reuse the allocator's state (it then writes outside it).
    reserved_.clear();
    size_t total = 0;
    for (size_t s : sizes) total += s;
    return total;
}

HostTensor GraphRunner::run(const std::string & graph_key, const BuildFn & build) {
    // Graphs built under an adapter differ from the plain ones (extra nodes, other tensors).
    const std::string shape_key = adapter_ ? graph_key + "|" + adapter_->key() : graph_key;
    if (abort_ && abort_->load()) throw Error(ErrorCode::Aborted, "generation was aborted");

    // The context only holds tensor and graph metadata; data lives in the scheduler's buffers.
    const size_t meta = ggml_tensor_overhead() * kMaxGraphNodes + ggml_graph_overhead_custom(kMaxGraphNodes, false);
    if (meta_.size() < meta) meta_.resize(meta);
    ggml_init_params params{meta_.size(), meta_.data(), true};
    ggml_context_ptr owned(ggml_init(params));
    if (!owned) throw Error(ErrorCode::OutOfMemory, "cannot allocate a graph context");
    ggml_context * ctx = owned.get();

    GraphBuilder builder(ctx);
    ggml_tensor * out = build(builder);
    if (!out) throw Error(ErrorCode::Internal, "graph builder returned no output");
    ggml_set_output(out);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx, kMaxGraphNodes, false);
    ggml_build_forward_expand(gf, out);

    std::vector<ggml_tensor *> debug;
    for (const auto & name : debug_names_) {
        ggml_tensor * t = ggml_graph_get_tensor(gf, name.c_str());
        if (t) {
            ggml_set_output(t);
            debug.push_back(t);
        }
    }

    if (reserved_.count(shape_key) == 0) {
        // Grows the buffers to this shape's needs (never shrinks), so later runs of any shape
        // reserved so far allocate nothing.
        if (!ggml_backend_sched_reserve(sched_.get(), gf)) {
            throw Error(ErrorCode::OutOfMemory, "cannot reserve the compute buffer for " + shape_key + " on " +
                                                    ggml_backend_name(backend_));
        }
        reserved_.insert(shape_key);
    }
    ggml_backend_sched_reset(sched_.get());
    if (!ggml_backend_sched_alloc_graph(sched_.get(), gf)) {
        throw Error(ErrorCode::OutOfMemory, "cannot allocate the compute graph for " + shape_key + " on " +
                                                ggml_backend_name(backend_));
    }
    for (const auto & in : builder.inputs_) ggml_backend_tensor_set(in.tensor, in.data, 0, ggml_nbytes(in.tensor));

    set_abort_callbacks(true);
    apply_threads();
    // Profiling runs node by node on the one backend (a CPU-only development aid).
    const ggml_status status = profile_ops() && backends_.size() == 1 ? compute_profiled(backend_, gf, shape_key)
                                                                      : ggml_backend_sched_graph_compute(sched_.get(), gf);
    set_abort_callbacks(false);
    if (status == GGML_STATUS_ABORTED || (abort_ && abort_->load())) {
        throw Error(ErrorCode::Aborted, "generation was aborted");
    }
    if (status != GGML_STATUS_SUCCESS) {
        throw Error(ErrorCode::Internal, "graph " + shape_key + " failed on " + ggml_backend_name(backend_) +
                                             " (ggml status " + std::to_string(static_cast<int>(status)) + ")");
    }

    debug_values_.clear();
    for (ggml_tensor * t : debug) {
        if (t->type == GGML_TYPE_F32 && ggml_is_contiguous(t)) debug_values_[t->name] = read_tensor(t);
    }
    return read_tensor(out);
}

}  // namespace sd
