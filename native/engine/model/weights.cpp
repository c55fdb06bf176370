#include "model/weights.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <thread>

#include "core/enum-names.h"
#include "core/errors.h"
#include "ggml-alloc.h"

namespace sd {

namespace {

// Smaller tensors are copied: mapping them saves little and their pages are shared with others.
constexpr uint64_t kMinMappedBytes = 256 * 1024;

constexpr EnumName<ggml_type> kWeightTypes[] = {
    {GGML_TYPE_F32, "f32"},   {GGML_TYPE_F16, "f16"},   {GGML_TYPE_BF16, "bf16"}, {GGML_TYPE_Q8_0, "q8_0"},
    {GGML_TYPE_Q5_0, "q5_0"}, {GGML_TYPE_Q5_1, "q5_1"}, {GGML_TYPE_Q4_0, "q4_0"}, {GGML_TYPE_Q4_1, "q4_1"},
    {GGML_TYPE_Q2_K, "q2_K"}, {GGML_TYPE_Q3_K, "q3_K"}, {GGML_TYPE_Q4_K, "q4_K"}, {GGML_TYPE_Q5_K, "q5_K"},
    {GGML_TYPE_Q6_K, "q6_K"},
};

bool contains(const std::string & s, const char * part) { return s.find(part) != std::string::npos; }

}  // namespace

ggml_type stored_ggml_type(const TensorRecord & r) {
    switch (r.dtype) {
        case DType::F32: return GGML_TYPE_F32;
        case DType::F16: return GGML_TYPE_F16;
        case DType::BF16: return GGML_TYPE_BF16;
        case DType::Ggml: return r.type;
        default: return GGML_TYPE_COUNT;
    }
}

namespace {

// Converts `n` stored elements to f32.
void to_f32(const TensorRecord & r, const uint8_t * src, float * dst, int64_t n) {
    switch (r.dtype) {
        case DType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
        case DType::F16: ggml_fp16_to_fp32_row(reinterpret_cast<const ggml_fp16_t *>(src), dst, n); return;
        case DType::BF16: ggml_bf16_to_fp32_row(reinterpret_cast<const ggml_bf16_t *>(src), dst, n); return;
        case DType::F64:
            for (int64_t i = 0; i < n; ++i) { double v; std::memcpy(&v, src + 8 * i, 8); dst[i] = static_cast<float>(v); }
            return;
        case DType::I64:
            for (int64_t i = 0; i < n; ++i) { int64_t v; std::memcpy(&v, src + 8 * i, 8); dst[i] = static_cast<float>(v); }
            return;
        case DType::I32:
            for (int64_t i = 0; i < n; ++i) { int32_t v; std::memcpy(&v, src + 4 * i, 4); dst[i] = static_cast<float>(v); }
            return;
        case DType::I16:
            for (int64_t i = 0; i < n; ++i) { int16_t v; std::memcpy(&v, src + 2 * i, 2); dst[i] = static_cast<float>(v); }
            return;
        case DType::I8: for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(static_cast<int8_t>(src[i])); return;
        case DType::U8:
        case DType::Bool: for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]); return;
        case DType::Ggml: {
            const ggml_type_traits * tr = ggml_get_type_traits(r.type);
            if (!tr || !tr->to_float) {
                throw Error(ErrorCode::UnsupportedModel,
                            "tensor '" + r.name + "' has type " + ggml_type_name(r.type) + ", which cannot be converted to f32");
            }
            tr->to_float(src, dst, n);
            return;
        }
    }
}

// f32 → `type`, `rows` rows of `row_len` elements.
void from_f32(ggml_type type, const float * src, uint8_t * dst, int64_t rows, int64_t row_len) {
    const int64_t n = rows * row_len;
    switch (type) {
        case GGML_TYPE_F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
        case GGML_TYPE_F16: ggml_fp32_to_fp16_row(src, reinterpret_cast<ggml_fp16_t *>(dst), n); return;
        default: {
            // stable-diffusion.cpp quantizes with an importance matrix of ones, not none: ggml then
            // runs each type's weighted search (make_qx_quants...) instead of its plain rounding,
            // which picks other scales for every type but q8_0 (bf16 takes its _ref rounding).
            const std::vector<float> ones(static_cast<size_t>(row_len), 1.0f);
            ggml_quantize_chunk(type, src, dst, 0, rows, row_len, ones.data());
            return;
        }
    }
}

// The stored bytes of a 2-D tensor hold [cols, rows] of its canonical [rows, cols]: flip in place.
void transpose_2d(std::vector<float> & data, const std::vector<int64_t> & canonical_shape) {
    const int64_t rows = canonical_shape[0], cols = canonical_shape[1];
    std::vector<float> out(data.size());
    for (int64_t c = 0; c < cols; ++c) {
        for (int64_t r = 0; r < rows; ++r) out[static_cast<size_t>(r * cols + c)] = data[static_cast<size_t>(c * rows + r)];
    }
    data.swap(out);
}

}  // namespace

std::vector<float> read_f32(const TensorRecord & r) {
    std::vector<float> out(static_cast<size_t>(r.numel()));
    to_f32(r, r.file->data() + r.offset, out.data(), r.numel());
    return out;
}

void convert_from_f32(ggml_type type, const float * src, void * dst, int64_t rows, int64_t row_len) {
    from_f32(type, src, static_cast<uint8_t *>(dst), rows, row_len);
}

ggml_type parse_weight_type(const std::string & name) { return parse_enum(kWeightTypes, name, "weightType"); }

ggml_type placed_type(Component component, const std::string & name, const std::vector<int64_t> & shape,
                      ggml_type stored, std::optional<ggml_type> requested) {
    const size_t dims = shape.size();
    if (dims >= 3) return GGML_TYPE_F16;  // conv kernels
    if (dims <= 1) return GGML_TYPE_F32;  // norms, biases, scalars
    // bigG's pooled projection: an f32 parameter in the reference whatever the file holds, so the
    // pooled product runs in f32 (an f16 weight would round the activations to f16 too).
    if ((component == Component::TextEncoder || component == Component::TextEncoder2) && name == "text_projection.weight") {
        return GGML_TYPE_F32;
    }
    const bool runnable_store = stored == GGML_TYPE_F32 || stored == GGML_TYPE_F16 || stored == GGML_TYPE_BF16 ||
                                (stored != GGML_TYPE_COUNT && ggml_is_quantized(stored));
    const ggml_type keep = runnable_store ? stored : GGML_TYPE_F32;
    if (!requested) return keep;
    const bool embedding = contains(name, "token_embedding") || contains(name, "position_embedding") ||
                           ((component == Component::Unet || component == Component::ControlNet) && (name.rfind("time_embed.", 0) == 0 || name.rfind("label_emb.", 0) == 0));
    if (embedding) return keep;
    const int64_t row_len = shape.back();
    if (row_len % ggml_blck_size(*requested) != 0) return keep;
    return *requested;
}

ggml_tensor * ComponentWeights::find(const std::string & name) const {
    auto it = map_.find(name);
    return it == map_.end() ? nullptr : it->second;
}

ggml_tensor * ComponentWeights::get(const std::string & name) const {
    ggml_tensor * t = find(name);
    if (!t) {
        throw Error(ErrorCode::ModelFormat, std::string(component_name(component_)) + " has no tensor '" + name + "'");
    }
    return t;
}

uint64_t ComponentWeights::bytes() const { return buffer_ ? ggml_backend_buffer_get_size(buffer_.get()) : 0; }

bool ComponentWeights::quantized() const { return any_quantized(map_); }

uint64_t ComponentWeights::mapped_bytes() const {
    uint64_t n = 0;
    for (const auto & [t, r] : mapped_) n += r.size;
    return n;
}

const MappedRange * ComponentWeights::mapped_range(const ggml_tensor * t) const {
    auto it = mapped_.find(t);
    return it == mapped_.end() ? nullptr : &it->second;
}

ComponentWeights load_component(const CanonicalModel & model, Component component, ggml_backend_t backend,
                                const WeightLoadOptions & options) {
    std::vector<const CanonicalTensor *> todo;
    for (const auto & t : model.tensors) {
        if (t.component == component) todo.push_back(&t);
    }
    ComponentWeights out;
    out.component_ = component;
    ggml_init_params params{ggml_tensor_overhead() * (todo.size() + 1), nullptr, true};
    out.ctx_.reset(ggml_init(params));
    if (!out.ctx_) throw Error(ErrorCode::OutOfMemory, "cannot allocate a ggml context for weights");

    std::vector<ggml_type> types(todo.size());
    for (size_t i = 0; i < todo.size(); ++i) {
        const CanonicalTensor & t = *todo[i];
        if (t.shape.empty() || t.shape.size() > 4) {
            throw Error(ErrorCode::UnsupportedModel, std::string(component_name(component)) + " tensor '" + t.name +
                                                         "' has " + std::to_string(t.shape.size()) + " dimensions; 1 to 4 are supported");
        }
        types[i] = placed_type(component, t.name, t.shape, stored_ggml_type(*t.source), options.weight_type);
        int64_t ne[4] = {1, 1, 1, 1};
        for (size_t d = 0; d < t.shape.size(); ++d) ne[d] = t.shape[t.shape.size() - 1 - d];  // ggml: innermost first
        ggml_tensor * g = ggml_new_tensor(out.ctx_.get(), types[i], static_cast<int>(t.shape.size()), ne);
        ggml_set_name(g, t.name.c_str());
        out.map_.emplace(t.name, g);
    }
    if (todo.empty()) return out;

    // Tensors used in place from the mapped file: one host-pointer buffer over each file.
    std::vector<bool> mapped(todo.size(), false);
    if (options.map_from_file) {
        ggml_backend_dev_t dev = ggml_backend_get_device(backend);
        std::unordered_map<const MappedFile *, ggml_backend_buffer_t> file_buffer;
        for (size_t i = 0; i < todo.size(); ++i) {
            const CanonicalTensor & t = *todo[i];
            ggml_tensor * g = out.map_.at(t.name);
            if (stored_ggml_type(*t.source) != types[i] || t.transpose || t.nbytes < kMinMappedBytes ||
                t.nbytes != ggml_nbytes(g) || !t.source->file) {
                continue;
            }
            const MappedFile * file = t.source->file.get();
            auto it = file_buffer.find(file);
            if (it == file_buffer.end()) {
                ggml_backend_buffer_t buf = ggml_backend_dev_buffer_from_host_ptr(
                    dev, const_cast<uint8_t *>(file->data()), file->size(), file->size());
                if (!buf) break;  // not supported here: copy everything
                ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
                out.file_buffers_.emplace_back(buf);
                out.files_.push_back(t.source->file);
                it = file_buffer.emplace(file, buf).first;
            }
            const uint64_t offset = t.source->offset + t.offset;
            if (ggml_backend_tensor_alloc(it->second, g, const_cast<uint8_t *>(file->data()) + offset) != GGML_STATUS_SUCCESS) {
                throw Error(ErrorCode::Internal, "cannot place tensor '" + t.name + "' in the mapped file");
            }
            out.mapped_.emplace(g, MappedRange{file, offset, t.nbytes});
            mapped[i] = true;
        }
    }
    if (std::find(mapped.begin(), mapped.end(), false) != mapped.end()) {  // something to copy
        out.buffer_.reset(ggml_backend_alloc_ctx_tensors(out.ctx_.get(), backend));
        if (!out.buffer_) {
            throw Error(ErrorCode::OutOfMemory, std::string("cannot allocate the ") + component_name(component) +
                                                    " weights on " + ggml_backend_name(backend));
        }
        ggml_backend_buffer_set_usage(out.buffer_.get(), GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    }

    uint64_t total = 0;
    for (const auto * t : todo) total += t->nbytes;
    std::atomic<size_t> next{0};
    uint64_t done = 0;
    std::mutex report_mutex;
    std::exception_ptr failure;
    std::mutex failure_mutex;

    auto worker = [&]() {
        std::vector<float> f32;
        std::vector<uint8_t> staged;
        for (;;) {
            size_t i = next.fetch_add(1);
            if (i >= todo.size()) return;
            {
                std::lock_guard<std::mutex> lock(failure_mutex);
                if (failure) return;
            }
            try {
                if (options.abort && options.abort->load()) throw Error(ErrorCode::Aborted, "model loading was aborted");
                const CanonicalTensor & t = *todo[i];
                if (mapped[i]) {
                    // Used in place: nothing to copy; its pages are read when first needed.
                    std::lock_guard<std::mutex> lock(report_mutex);
                    done += t.nbytes;
                    if (options.progress) options.progress(done, total);
                    continue;
                }
                ggml_tensor * g = out.map_.at(t.name);
                const uint8_t * src = t.source->file->data() + t.source->offset + t.offset;
                const ggml_type stored = stored_ggml_type(*t.source);
                if (stored == types[i] && !t.transpose) {
                    // Same bytes: straight from the mapped file.
                    if (t.nbytes != ggml_nbytes(g)) {
                        throw Error(ErrorCode::ModelFormat, "tensor '" + t.source->name + "' holds " + std::to_string(t.nbytes) +
                                                                " bytes; its shape needs " + std::to_string(ggml_nbytes(g)));
                    }
                    ggml_backend_tensor_set(g, src, 0, t.nbytes);
                } else {
                    const int64_t n = ggml_nelements(g);
                    const int64_t row_len = g->ne[0];
                    f32.resize(static_cast<size_t>(n));
                    to_f32(*t.source, src, f32.data(), n);
                    if (t.transpose) transpose_2d(f32, t.shape);
                    staged.resize(ggml_nbytes(g));
                    from_f32(types[i], f32.data(), staged.data(), n / row_len, row_len);
                    ggml_backend_tensor_set(g, staged.data(), 0, staged.size());
                }
                // The file's pages are not needed again: keep them out of resident memory, so
                // loading never holds the file and the placed weights at once.
                t.source->file->drop_pages(t.source->offset + t.offset, t.nbytes);
                {
                    // Counted and reported under one lock, so reports never go backwards.
                    std::lock_guard<std::mutex> lock(report_mutex);
                    done += t.nbytes;
                    if (options.progress) options.progress(done, total);
                }
            } catch (...) {
                std::lock_guard<std::mutex> lock(failure_mutex);
                if (!failure) failure = std::current_exception();
                return;
            }
        }
    };
    const int n_threads = std::max(1, std::min<int>(options.threads, static_cast<int>(todo.size())));
    std::vector<std::thread> pool;
    for (int k = 1; k < n_threads; ++k) pool.emplace_back(worker);
    worker();
    for (auto & th : pool) th.join();
    if (failure) std::rethrow_exception(failure);
    return out;
}

}  // namespace sd

namespace sd {
std::vector<std::string> weight_type_names() {
    std::vector<std::string> names;
    for (const auto & e : kWeightTypes) names.push_back(e.name);
    return names;
}
}  // namespace sd
