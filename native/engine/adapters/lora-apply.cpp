// A set of LoRAs made active on a session: deltas computed on the host in f32 (torch layout,
// the weight's contiguous order), then either merged into copies of the weights they touch or
// uploaded as factors that the graphs add at run time (nn/blocks.h RuntimeTerm).
#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <thread>

#include "adapters/lora.h"
#include "core/enum-names.h"
#include "core/errors.h"
#include "model/model.h"
#include "model/weights.h"
#include "runtime/graph-runner.h"

namespace sd {

namespace {

// ---------------------------------------------------------------- host math

struct Mat {
    std::vector<float> v;
    std::vector<int64_t> shape;
    int64_t rows() const { return shape.empty() ? 1 : shape[0]; }
    int64_t cols() const { return rows() ? static_cast<int64_t>(v.size()) / rows() : 0; }
};

Mat load(const TensorRecord * r) { return {read_f32(*r), r->shape}; }

const TensorRecord * part(const LoraModule & m, const char * role) {
    auto it = m.parts.find(role);
    return it == m.parts.end() ? nullptr : it->second;
}

float scalar(const TensorRecord * r) { return read_f32(*r).at(0); }

// c [m, n] = a [m, k] b [k, n]
std::vector<float> matmul(const float * a, const float * b, int64_t m, int64_t k, int64_t n) {
    std::vector<float> c(static_cast<size_t>(m * n), 0.0f);
    for (int64_t i = 0; i < m; ++i) {
        float * ci = c.data() + i * n;
        for (int64_t p = 0; p < k; ++p) {
            const float aip = a[i * k + p];
            if (aip == 0.0f) continue;
            const float * bp = b + p * n;
            for (int64_t j = 0; j < n; ++j) ci[j] += aip * bp[j];
        }
    }
    return c;
}

std::vector<float> matmul(const Mat & a, const Mat & b) { return matmul(a.v.data(), b.v.data(), a.rows(), a.cols(), b.cols()); }

// a [k, m] -> [m, k]
std::vector<float> transposed(const Mat & a) {
    const int64_t k = a.rows(), m = a.cols();
    std::vector<float> t(a.v.size());
    for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < m; ++j) t[static_cast<size_t>(j * k + i)] = a.v[static_cast<size_t>(i * m + j)];
    return t;
}

// Tucker: d[p, c, s] = sum_{i,j} up[p, i] core[i, j, s] down[j, c];
// up [P, I], core [I, J, S], down [J, C] -> [P, C, S].
std::vector<float> tucker(const float * up, const Mat & core, const float * down, int64_t P, int64_t C) {
    const int64_t I = core.shape[0], J = core.shape[1], S = core.shape[2] * core.shape[3];
    std::vector<float> t(static_cast<size_t>(I * C * S), 0.0f);  // t[i, c, s] = sum_j core[i, j, s] down[j, c]
    for (int64_t i = 0; i < I; ++i)
        for (int64_t j = 0; j < J; ++j)
            for (int64_t s = 0; s < S; ++s) {
                const float v = core.v[static_cast<size_t>((i * J + j) * S + s)];
                if (v == 0.0f) continue;
                for (int64_t c = 0; c < C; ++c) t[static_cast<size_t>((i * C + c) * S + s)] += v * down[j * C + c];
            }
    return matmul(up, t.data(), P, I, C * S);
}

// kron(a [A, B], b [C, D, S]) -> [A*C, B*D, S]
std::vector<float> kron(const Mat & a, const Mat & b) {
    const int64_t A = a.rows(), B = a.cols(), C = b.shape[0], D = b.shape.size() > 1 ? b.shape[1] : 1;
    const int64_t S = C * D != 0 ? static_cast<int64_t>(b.v.size()) / (C * D) : 0;
    std::vector<float> out(static_cast<size_t>(A * C * B * D * S));
    for (int64_t i = 0; i < A; ++i)
        for (int64_t p = 0; p < C; ++p)
            for (int64_t j = 0; j < B; ++j)
                for (int64_t q = 0; q < D; ++q) {
                    const float w = a.v[static_cast<size_t>(i * B + j)];
                    const float * src = b.v.data() + (p * D + q) * S;
                    float * dst = out.data() + (((i * C + p) * (B * D)) + (j * D + q)) * S;
                    for (int64_t s = 0; s < S; ++s) dst[s] = w * src[s];
                }
    return out;
}

// A module's delta (unscaled, the target's layout) and its scale (alpha / rank, ...).
struct Delta {
    std::vector<float> dw;
    float scale = 1.0f;
};

float alpha_scale(const LoraModule & m, int64_t rank) {
    if (const TensorRecord * a = part(m, "alpha")) return rank > 0 ? scalar(a) / static_cast<float>(rank) : 1.0f;
    return 1.0f;
}

// A LoRA / LoCon module's scale: a stored `scale` wins, else alpha / rank (rank = lora_down's rows).
float low_rank_scale(const LoraModule & m) {
    return part(m, "scale") ? scalar(part(m, "scale")) : alpha_scale(m, part(m, "lora_down")->shape[0]);
}

Delta module_delta(const LoraModule & m) {
    Delta d;
    if (const TensorRecord * up_r = part(m, "lora_up")) {
        const Mat up = load(up_r), down = load(part(m, "lora_down"));
        if (const TensorRecord * mid = part(m, "lora_mid")) d.dw = tucker(up.v.data(), load(mid), down.v.data(), up.rows(), down.cols());
        else d.dw = matmul(up, down);
        d.scale = low_rank_scale(m);
    } else if (part(m, "hada_w1_a")) {
        auto half = [&](const char * a_role, const char * b_role, const char * t_role) {
            const Mat a = load(part(m, a_role)), b = load(part(m, b_role));
            if (const TensorRecord * t = part(m, t_role)) return tucker(transposed(a).data(), load(t), b.v.data(), a.cols(), b.cols());
            return matmul(a, b);
        };
        d.dw = half("hada_w1_a", "hada_w1_b", "hada_t1");
        const std::vector<float> w2 = half("hada_w2_a", "hada_w2_b", "hada_t2");
        for (size_t i = 0; i < d.dw.size(); ++i) d.dw[i] *= w2[i];
        d.scale = alpha_scale(m, part(m, "hada_w1_b")->shape[0]);
    } else if (part(m, "lokr_w1") || part(m, "lokr_w1_a")) {
        int64_t rank = 1;  // stable-diffusion.cpp's: the last decomposed factor's rank, 1 when none
        Mat w1;
        if (const TensorRecord * r = part(m, "lokr_w1")) {
            w1 = load(r);
        } else {
            const Mat a = load(part(m, "lokr_w1_a")), b = load(part(m, "lokr_w1_b"));
            w1 = {matmul(a, b), {a.rows(), b.cols()}};
            rank = b.rows();
        }
        Mat w2;
        if (const TensorRecord * r = part(m, "lokr_w2")) {
            w2 = load(r);
        } else {
            const Mat a = load(part(m, "lokr_w2_a")), b = load(part(m, "lokr_w2_b"));
            rank = b.rows();
            if (const TensorRecord * t = part(m, "lokr_t2")) {
                const Mat core = load(t);
                w2 = {tucker(transposed(a).data(), core, b.v.data(), a.cols(), b.cols()), {a.cols(), b.cols(), core.shape[2], core.shape[3]}};
            } else {
                w2 = {matmul(a, b), b.shape};
                w2.shape[0] = a.rows();
            }
        }
        d.dw = kron(w1, w2);
        d.scale = rank == 1 ? 1.0f : alpha_scale(m, rank);
    } else if (const TensorRecord * diff = part(m, "diff")) {
        d.dw = read_f32(*diff);
    } else if (const TensorRecord * diff_b = part(m, "diff_b")) {
        d.dw = read_f32(*diff_b);
    } else {
        throw Error(ErrorCode::Internal, "LoRA module '" + m.key + "' has no factors");
    }
    return d;
}

// DoRA: W' = magnitude * (W + dW) / ||W + dW||, the norm per output row or (a magnitude with the
// input's size) per input channel over outputs and kernel positions. Returns W' - W.
std::vector<float> dora_change(const LoraModule & m, const std::vector<float> & w, const std::vector<float> & dw_scaled) {
    const std::vector<float> mag = read_f32(*part(m, "dora_scale"));
    const TensorRecord * mag_r = part(m, "dora_scale");
    const int64_t out = m.target_shape[0];
    const int64_t per_out = static_cast<int64_t>(w.size()) / out;  // in * kh * kw
    const int64_t spatial = m.target_shape.size() == 4 ? m.target_shape[2] * m.target_shape[3] : 1;
    const int64_t in = per_out / spatial;
    const bool on_output = !mag_r->shape.empty() && mag_r->shape[0] == out && static_cast<int64_t>(mag.size()) == out;
    std::vector<float> wc(w.size());
    for (size_t i = 0; i < w.size(); ++i) wc[i] = w[i] + dw_scaled[i];
    std::vector<double> norm(static_cast<size_t>(on_output ? out : in), 0.0);
    for (int64_t o = 0; o < out; ++o)
        for (int64_t c = 0; c < in; ++c)
            for (int64_t s = 0; s < spatial; ++s) {
                const double v = wc[static_cast<size_t>((o * in + c) * spatial + s)];
                norm[static_cast<size_t>(on_output ? o : c)] += v * v;
            }
    std::vector<float> change(w.size());
    for (int64_t o = 0; o < out; ++o)
        for (int64_t c = 0; c < in; ++c) {
            const size_t k = static_cast<size_t>(on_output ? o : c);
            const float factor = mag[k] / (static_cast<float>(std::sqrt(norm[k])) + FLT_EPSILON);
            for (int64_t s = 0; s < spatial; ++s) {
                const size_t i = static_cast<size_t>((o * in + c) * spatial + s);
                change[i] = wc[i] * factor - w[i];
            }
        }
    return change;
}

// The values of a tensor on its backend as f32.
std::vector<float> tensor_f32(const ggml_tensor * t) {
    std::vector<uint8_t> raw(ggml_nbytes(t));
    ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
    std::vector<float> out(static_cast<size_t>(ggml_nelements(t)));
    if (t->type == GGML_TYPE_F32) {
        std::memcpy(out.data(), raw.data(), raw.size());
    } else {
        const ggml_type_traits * tr = ggml_get_type_traits(t->type);
        if (!tr || !tr->to_float) throw Error(ErrorCode::UnsupportedModel, std::string("cannot apply a LoRA to weights of type ") + ggml_type_name(t->type));
        tr->to_float(raw.data(), out.data(), ggml_nelements(t));
    }
    return out;
}

int64_t spatial_of(const LoraModule & m) { return m.target_shape.size() == 4 ? m.target_shape[2] * m.target_shape[3] : 1; }

// ---------------------------------------------------------------- the active set

// The weights a graph reads under the adapter: merged copies first, the model's own otherwise.
class Overlay : public TensorSource {
public:
    explicit Overlay(const TensorSource & base) : base_(base) {}
    ggml_tensor * find(const std::string & name) const override {
        auto it = replaced_.find(name);
        return it != replaced_.end() ? it->second : base_.find(name);
    }
    const MappedRange * mapped_range(const ggml_tensor * t) const override { return base_.mapped_range(t); }
    bool quantized() const override { return base_.quantized(); }
    std::unordered_map<std::string, ggml_tensor *> replaced_;

private:
    const TensorSource & base_;
};

using Clock = std::chrono::steady_clock;

}  // namespace

constexpr EnumName<LoraApply> kLoraApplyTable[] = {
    {LoraApply::Auto, kLoraApplyNames[0]}, {LoraApply::Merge, kLoraApplyNames[1]}, {LoraApply::Runtime, kLoraApplyNames[2]}};

LoraApply parse_lora_apply(const std::string & name) { return parse_enum(kLoraApplyTable, name, "loraApply"); }
const char * lora_apply_name(LoraApply a) { return enum_name(kLoraApplyTable, a); }

LoraApply resolve_lora_apply(const Model & model, LoraApply requested) {
    if (requested != LoraApply::Auto) return requested;
    for (Component c : {Component::Unet, Component::TextEncoder, Component::TextEncoder2}) {
        const TensorSource * t = model.tensors(c);
        if (t && t->quantized()) return LoraApply::Runtime;
    }
    return LoraApply::Merge;
}

struct LoraState::Cached {
    std::shared_ptr<const LoraFile> file;
    uint64_t id = 0;
};

class LoraState::Applied : public WeightAdapter {
public:
    struct Part {
        std::unique_ptr<Overlay> overlay;
        RuntimePatches patches;
    };
    std::map<const TensorSource *, Part> parts;
    ggml_context_ptr ctx;
    ggml_backend_buffer_ptr buffer;
    std::string key_;

    const TensorSource & weights(const TensorSource & base) const override {
        auto it = parts.find(&base);
        return it != parts.end() && it->second.overlay ? *it->second.overlay : base;
    }
    const RuntimePatches * runtime(const TensorSource & base) const override {
        auto it = parts.find(&base);
        return it != parts.end() && !it->second.patches.empty() ? &it->second.patches : nullptr;
    }
    const std::string & key() const override { return key_; }
    uint64_t bytes() const { return buffer ? ggml_backend_buffer_get_size(buffer.get()) : 0; }
};

LoraState::LoraState() = default;
LoraState::~LoraState() = default;

uint64_t LoraState::bytes() const { return active_ ? active_->bytes() : 0; }

namespace {

// One use of a module: its file's weight.
struct Use {
    const LoraModule * module;
    float weight;
};

std::string weight_text(double w) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%a", w);
    return buf;
}

// An upload: f32 values for a tensor of the set's context, converted to its type.
struct Upload {
    ggml_tensor * tensor;
    std::vector<float> values;
};

}  // namespace

LoraActivation LoraState::activate(const Model & model, GraphRunner & runner, const std::vector<LoraRequest> & requests,
                                   LoraApply requested_mode, int threads, const std::atomic<bool> * abort) {
    LoraActivation result;
    result.mode = resolve_lora_apply(model, requested_mode);
    std::vector<LoraRequest> wanted;
    for (const LoraRequest & r : requests) {
        if (!std::isfinite(r.weight)) throw_invalid("a LoRA's weight must be a finite number; received " + weight_text(r.weight) + " for " + r.path);
        if (r.weight != 0.0) wanted.push_back(r);
    }
    runner.set_weight_adapter(nullptr);
    if (wanted.empty()) {
        active_.reset();  // its copies are freed; the model's own weights were never changed
        active_spec_.clear();
        return result;
    }
    const auto t0 = Clock::now();
    // Parse (or reuse) every file; one changed on disk is read again.
    static std::atomic<uint64_t> next_id{1};
    std::vector<std::pair<std::shared_ptr<const LoraFile>, double>> files;
    std::string spec = lora_apply_name(result.mode);
    for (const LoraRequest & r : wanted) {
        std::shared_ptr<Cached> & c = files_[r.path];
        if (c) {
            const auto & mapped = c->file->file.files;
            for (const auto & f : mapped) {
                if (!f->changed_since_open().empty()) { c.reset(); break; }
            }
        }
        if (!c) {
            c = std::make_shared<Cached>();
            c->file = open_lora(r.path, model);
            c->id = next_id++;
        }
        files.emplace_back(c->file, r.weight);
        spec += "|" + std::to_string(c->id) + ":" + weight_text(r.weight);
        if (!c->file->ignored.empty()) {
            const auto & first = c->file->ignored.front();
            result.warnings.push_back("LoRA " + r.path + ": " + std::to_string(c->file->ignored.size()) +
                                      " tensor(s) ignored, e.g. '" + first.first + "' (" + first.second + ")");
        }
    }
    if (active_ && spec == active_spec_) {
        runner.set_weight_adapter(active_.get());
        result.reused = true;
        result.bytes = active_->bytes();
        return result;
    }
    active_.reset();  // before building the next: never both sets' copies at once
    active_spec_.clear();

    // Every adapted tensor and the uses of it, in request order.
    struct Target {
        Component component;
        const TensorSource * base;
        ggml_tensor * weight;
        std::vector<Use> uses;
        bool merge = false;
    };
    std::map<std::pair<Component, std::string>, Target> targets;
    for (const auto & [file, weight] : files) {
        for (const LoraModule & m : file->modules) {
            const TensorSource * base = model.tensors(m.component);
            Target & t = targets[{m.component, m.target}];
            t.component = m.component;
            t.base = base;
            t.weight = base->get(m.target);
            t.uses.push_back({&m, static_cast<float>(weight)});
        }
    }
    const bool merge_all = result.mode == LoraApply::Merge;

    auto applied = std::make_unique<Applied>();
    applied->key_ = "lora" + std::to_string(next_id++);
    size_t n_tensors = 0;
    for (auto & [key, t] : targets) {
        // Biases (diff_b) are always merged: a copy of a bias costs nothing.
        const bool bias = key.second.size() > 5 && key.second.compare(key.second.size() - 5, 5, ".bias") == 0;
        t.merge = merge_all || bias || ggml_n_dims(t.weight) == 1;
        n_tensors += t.merge ? 1 : 3 * t.uses.size();
    }
    ggml_init_params params{ggml_tensor_overhead() * (n_tensors + 1), nullptr, true};
    applied->ctx.reset(ggml_init(params));
    if (!applied->ctx) throw Error(ErrorCode::OutOfMemory, "cannot allocate a ggml context for the LoRA tensors");
    ggml_context * ctx = applied->ctx.get();

    // Plan: the tensors to create and how to fill each.
    struct Job {
        Target * target = nullptr;
        std::string name;
        ggml_tensor * merged = nullptr;                                  // a merge: the copy
        std::vector<std::pair<const Use *, std::vector<ggml_tensor *>>> terms;  // run time: per use, its tensors
    };
    std::vector<Job> jobs;
    for (auto & [key, t] : targets) {
        Applied::Part & part_of = applied->parts[t.base];
        Job job;
        job.target = &t;
        job.name = key.second;
        if (t.merge) {
            if (!part_of.overlay) part_of.overlay = std::make_unique<Overlay>(*t.base);
            job.merged = ggml_dup_tensor(ctx, t.weight);
            ggml_set_name(job.merged, t.weight->name);
            part_of.overlay->replaced_[key.second] = job.merged;
        } else {
            std::vector<RuntimeTerm> & terms = part_of.patches[key.second];
            for (const Use & u : t.uses) {
                const LoraModule & m = *u.module;
                const int64_t out = m.target_shape[0];
                const int64_t spatial = spatial_of(m);
                const int64_t in = ggml_nelements(t.weight) / out / spatial;
                RuntimeTerm term;
                std::vector<ggml_tensor *> made;
                const bool low_rank = (m.kind == "lora" || m.kind == "locon") && !m.dora;
                if (low_rank) {
                    const TensorRecord * down = part(m, "lora_down");
                    const TensorRecord * mid = part(m, "lora_mid");
                    const TensorRecord * up = part(m, "lora_up");
                    const int64_t r_down = down->shape[0], r_up = up->numel() / out;
                    if (spatial == 1) {
                        term.down = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, in, r_down);
                        if (mid) term.mid = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, r_down, r_up);
                        term.up = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, r_up, out);
                    } else {
                        const int64_t kw = m.target_shape[3], kh = m.target_shape[2];
                        if (mid) {
                            term.down = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, 1, 1, in, r_down);
                            term.mid = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, kw, kh, r_down, r_up);
                        } else {
                            term.down = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, kw, kh, in, r_down);
                        }
                        term.up = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, 1, 1, r_up, out);
                    }
                    made = {term.down, term.mid, term.up};
                } else {
                    term.dense = spatial == 1 ? ggml_new_tensor_2d(ctx, GGML_TYPE_F16, in, out)
                                              : ggml_new_tensor_4d(ctx, GGML_TYPE_F16, m.target_shape[3], m.target_shape[2], in, out);
                    made = {term.dense};
                }
                terms.push_back(term);
                job.terms.emplace_back(&u, made);
            }
        }
        jobs.push_back(std::move(job));
    }
    applied->buffer.reset(ggml_backend_alloc_ctx_tensors(ctx, runner.backend()));
    if (!applied->buffer && n_tensors > 0) throw Error(ErrorCode::OutOfMemory, "cannot allocate the LoRA tensors on " + std::string(ggml_backend_name(runner.backend())));
    if (applied->buffer) ggml_backend_buffer_set_usage(applied->buffer.get(), GGML_BACKEND_BUFFER_USAGE_WEIGHTS);

    // Scales of low-rank terms go with the term; everything else is computed here.
    for (Job & job : jobs) {
        if (job.merged) continue;
        auto & terms = applied->parts[job.target->base].patches[job.name];
        for (size_t i = 0; i < job.terms.size(); ++i) {
            const Use & u = *job.terms[i].first;
            if (terms[i].dense) continue;
            terms[i].scale = low_rank_scale(*u.module) * u.weight;
        }
    }

    // Fill, in parallel over targets.
    std::atomic<size_t> next{0};
    std::exception_ptr failure;
    std::mutex failure_mutex;
    auto upload = [](ggml_tensor * t, const std::vector<float> & values) {
        if (t->type == GGML_TYPE_F32) {
            ggml_backend_tensor_set(t, values.data(), 0, values.size() * sizeof(float));
            return;
        }
        std::vector<uint8_t> staged(ggml_nbytes(t));
        convert_from_f32(t->type, values.data(), staged.data(), ggml_nelements(t) / t->ne[0], t->ne[0]);
        ggml_backend_tensor_set(t, staged.data(), 0, staged.size());
    };
    auto worker = [&]() {
        for (;;) {
            const size_t i = next.fetch_add(1);
            if (i >= jobs.size()) return;
            {
                std::lock_guard<std::mutex> lock(failure_mutex);
                if (failure) return;
            }
            try {
                if (abort && abort->load()) throw Error(ErrorCode::Aborted, "applying the LoRAs was aborted");
                Job & job = jobs[i];
                if (job.merged) {
                    std::vector<float> w = tensor_f32(job.target->weight);
                    for (const Use & u : job.target->uses) {
                        Delta d = module_delta(*u.module);
                        if (u.module->dora) {
                            for (float & v : d.dw) v *= d.scale;
                            const std::vector<float> change = dora_change(*u.module, w, d.dw);
                            for (size_t k = 0; k < w.size(); ++k) w[k] += u.weight * change[k];
                        } else {
                            const float s = d.scale * u.weight;
                            for (size_t k = 0; k < w.size(); ++k) w[k] += s * d.dw[k];
                        }
                    }
                    upload(job.merged, w);
                    continue;
                }
                for (auto & [use, tensors] : job.terms) {
                    const LoraModule & m = *use->module;
                    if (tensors.size() == 1) {  // dense
                        Delta d = module_delta(m);
                        std::vector<float> eff;
                        if (m.dora) {
                            for (float & v : d.dw) v *= d.scale;
                            const std::vector<float> w = tensor_f32(job.target->weight);
                            eff = dora_change(m, w, d.dw);
                            for (float & v : eff) v *= use->weight;
                        } else {
                            eff = std::move(d.dw);
                            for (float & v : eff) v *= d.scale * use->weight;
                        }
                        upload(tensors[0], eff);
                        continue;
                    }
                    upload(tensors[0], read_f32(*part(m, "lora_down")));
                    if (tensors[1]) upload(tensors[1], read_f32(*part(m, "lora_mid")));
                    upload(tensors[2], read_f32(*part(m, "lora_up")));
                }
            } catch (...) {
                std::lock_guard<std::mutex> lock(failure_mutex);
                if (!failure) failure = std::current_exception();
                return;
            }
        }
    };
    const int n_threads = std::max(1, std::min<int>(threads, static_cast<int>(jobs.size())));
    std::vector<std::thread> pool;
    for (int k = 1; k < n_threads; ++k) pool.emplace_back(worker);
    worker();
    for (auto & th : pool) th.join();
    if (failure) std::rethrow_exception(failure);

    active_ = std::move(applied);
    active_spec_ = spec;
    runner.set_weight_adapter(active_.get());
    result.apply_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    result.bytes = active_->bytes();
    return result;
}

}  // namespace sd
