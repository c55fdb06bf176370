// Test helpers for the graph tests: weights created in memory on a backend (no model file),
// filled from a seeded generator, and host copies of them for naive reference loops.
#pragma once
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "nn/blocks.h"
#include "model/weights.h"
#include "core/errors.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"

namespace sdtest {

class MemoryWeights : public sd::TensorSource {
public:
    MemoryWeights() {
        ggml_init_params p{ggml_tensor_overhead() * 8192, nullptr, true};
        ctx_ = ggml_init(p);
    }
    ~MemoryWeights() override {
        if (buffer_) ggml_backend_buffer_free(buffer_);
        ggml_free(ctx_);
    }
    MemoryWeights(const MemoryWeights &) = delete;
    MemoryWeights & operator=(const MemoryWeights &) = delete;

    // shape: torch order (outermost first). Types as the engine places them: conv kernels (4-D)
    // f16, 1-D f32, 2-D `matrix_type`. Values: uniform in [center - spread, center + spread].
    void add(const std::string & name, std::vector<int64_t> shape, float spread, float center = 0.0f,
             ggml_type matrix_type = GGML_TYPE_F16) {
        int64_t ne[4] = {1, 1, 1, 1};
        for (size_t d = 0; d < shape.size(); ++d) ne[d] = shape[shape.size() - 1 - d];
        ggml_type type = shape.size() >= 3 ? GGML_TYPE_F16 : shape.size() == 1 ? GGML_TYPE_F32 : matrix_type;
        ggml_tensor * t = ggml_new_tensor(ctx_, type, static_cast<int>(shape.size()), ne);
        ggml_set_name(t, name.c_str());
        map_[name] = t;
        order_.push_back({name, spread, center});
    }
    // A linear layer with bias, weights scaled by 1/sqrt(in) so activations stay O(1).
    void linear(const std::string & p, int64_t out, int64_t in, bool bias = true) {
        add(p + ".weight", {out, in}, 1.7f / std::sqrt(static_cast<float>(in)));
        if (bias) add(p + ".bias", {out}, 0.1f);
    }
    void conv(const std::string & p, int64_t out, int64_t in, int64_t k) {
        add(p + ".weight", {out, in, k, k}, 1.7f / std::sqrt(static_cast<float>(in * k * k)));
        add(p + ".bias", {out}, 0.1f);
    }
    void norm(const std::string & p, int64_t c) {
        add(p + ".weight", {c}, 0.2f, 1.0f);
        add(p + ".bias", {c}, 0.1f);
    }

    // Allocates every tensor on `backend` and fills it (deterministically for `seed`).
    void finish(ggml_backend_t backend, uint32_t seed) {
        buffer_ = ggml_backend_alloc_ctx_tensors(ctx_, backend);
        std::mt19937 rng(seed);
        for (const auto & e : order_) {
            ggml_tensor * t = map_[e.name];
            std::uniform_real_distribution<float> u(e.center - e.spread, e.center + e.spread);
            std::vector<float> v(static_cast<size_t>(ggml_nelements(t)));
            for (float & x : v) x = u(rng);
            if (t->type == GGML_TYPE_F16) {
                std::vector<ggml_fp16_t> h(v.size());
                ggml_fp32_to_fp16_row(v.data(), h.data(), static_cast<int64_t>(v.size()));
                ggml_backend_tensor_set(t, h.data(), 0, ggml_nbytes(t));
                ggml_fp16_to_fp32_row(h.data(), v.data(), static_cast<int64_t>(v.size()));
            } else {
                ggml_backend_tensor_set(t, v.data(), 0, ggml_nbytes(t));
            }
            host_[e.name] = std::move(v);
        }
    }

    ggml_tensor * find(const std::string & name) const override {
        auto it = map_.find(name);
        return it == map_.end() ? nullptr : it->second;
    }
    bool quantized() const override { return sd::any_quantized(map_); }
    // The values as the backend holds them (after f16 rounding), torch order flattened.
    const std::vector<float> & host(const std::string & name) const { return host_.at(name); }
    size_t count() const { return map_.size(); }

private:
    struct Entry {
        std::string name;
        float spread, center;
    };
    ggml_context * ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    std::unordered_map<std::string, ggml_tensor *> map_;
    std::unordered_map<std::string, std::vector<float>> host_;
    std::vector<Entry> order_;
};

inline std::vector<float> random_vector(size_t n, uint32_t seed, float spread = 1.0f) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-spread, spread);
    std::vector<float> v(n);
    for (float & x : v) x = u(rng);
    return v;
}

inline double relative_l2(const std::vector<float> & a, const std::vector<float> & ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size() && i < ref.size(); ++i) {
        num += (double(a[i]) - ref[i]) * (double(a[i]) - ref[i]);
        den += double(ref[i]) * ref[i];
    }
    if (a.size() != ref.size()) return 1e9;
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace sdtest
