#include "adapters/embeddings.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <system_error>

#include "core/errors.h"
#include "io/model-file.h"
#include "model/model.h"

namespace sd {

namespace fs = std::filesystem;

namespace {

std::string lowercase(std::string s) {
    for (char & c : s) {
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
    return s;
}

// Where `ext` (lowercase, with its dot) is in embedding_extensions(); -1 when not there.
int extension_rank(const std::string & ext) {
    const auto & all = embedding_extensions();
    const auto it = std::find(all.begin(), all.end(), ext);
    return it == all.end() ? -1 : static_cast<int>(it - all.begin());
}

std::string shape_of(const TensorRecord & r) {
    std::string s = "[";
    for (size_t i = 0; i < r.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(r.shape[i]);
    return s + "]";
}

// The record's elements as f32; only float types make sense as token vectors.
std::vector<float> record_floats(const std::string & path, const TensorRecord & r) {
    const bool floats = r.dtype == DType::F32 || r.dtype == DType::F16 || r.dtype == DType::BF16 || r.dtype == DType::F64 ||
                        r.dtype == DType::Ggml;
    if (!floats) {
        throw_unsupported(path, "tensor '" + r.name + "' has type " + dtype_name(r.dtype, r.type) +
                                    "; embedding vectors are floats (f32, f16, bf16)");
    }
    std::vector<float> out = read_f32(r);  // a ggml type without a conversion: UnsupportedModel
    for (float v : out) {
        if (!std::isfinite(v)) throw_format(path, "tensor '" + r.name + "' holds a value that is not a finite number");
    }
    return out;
}

EmbeddingTensor read_tensor(const std::string & path, const TensorRecord & r) {
    // [n, dim], or [dim] for one vector; leading 1s (e.g. [1, n, dim]) are allowed.
    if (r.shape.empty()) throw_format(path, "tensor '" + r.name + "' is a scalar; expected [vectors, width] or [width]");
    for (size_t i = 0; i + 2 < r.shape.size(); ++i) {
        if (r.shape[i] != 1) {
            throw_format(path, "tensor '" + r.name + "' has shape " + shape_of(r) + "; expected [vectors, width] or [width]");
        }
    }
    EmbeddingTensor t;
    t.name = r.name;
    t.width = r.shape.back();
    t.count = r.shape.size() >= 2 ? r.shape[r.shape.size() - 2] : 1;
    if (t.width <= 0 || t.count <= 0) {
        throw_format(path, "tensor '" + r.name + "' has shape " + shape_of(r) + ": no vectors; expected [vectors, width]");
    }
    t.data = record_floats(path, r);
    return t;
}

}  // namespace

const std::vector<std::string> & embedding_extensions() {
    static const std::vector<std::string> all = {".safetensors", ".gguf", ".pt", ".ckpt", ".bin"};
    return all;
}

EmbeddingFile read_embedding_file(const std::string & path) {
    const ModelFile mf = open_model_file(path);
    const char * expected = "an embedding file holds 'emb_params', 'string_to_param.*' (A1111 .pt) or 'clip_l' / 'clip_g' (SDXL)";
    if (mf.format == "diffusers") throw_format(path, std::string("is a folder; ") + expected);
    if (mf.tensors.empty()) throw_format(path, std::string("holds no tensors; ") + expected);
    EmbeddingFile out;
    out.path = path;
    const TensorRecord * clip_l = mf.find("clip_l");
    const TensorRecord * clip_g = mf.find("clip_g");
    if (clip_l || clip_g) {
        out.sdxl_pair = true;
        if (clip_l) out.tensors.push_back(read_tensor(path, *clip_l));
        if (clip_g) out.tensors.push_back(read_tensor(path, *clip_g));
        return out;
    }
    const TensorRecord * chosen = mf.find("emb_params");
    if (!chosen) {
        for (const auto & r : mf.tensors) {
            if (r.name.rfind("string_to_param.", 0) == 0) {
                chosen = &r;
                break;
            }
        }
    }
    if (!chosen) {
        if (mf.tensors.size() != 1) {
            std::string names;
            for (size_t i = 0; i < mf.tensors.size() && i < 8; ++i) names += (i ? ", " : "") + mf.tensors[i].name;
            if (mf.tensors.size() > 8) names += ", ...";
            throw_format(path, "holds " + std::to_string(mf.tensors.size()) + " tensors (" + names + ") and none is an embedding; " +
                                   expected);
        }
        chosen = &mf.tensors.front();
    }
    out.tensors.push_back(read_tensor(path, *chosen));
    return out;
}

std::shared_ptr<const EmbeddingFile> EmbeddingCache::get(const std::string & path) {
    std::error_code ec;
    const uint64_t size = fs::file_size(path, ec);
    if (ec) throw Error(ErrorCode::Io, path + ": cannot read the embedding file (" + ec.message() + ")", path);
    const auto mtime = fs::last_write_time(path, ec);
    if (ec) throw Error(ErrorCode::Io, path + ": cannot read the embedding file (" + ec.message() + ")", path);
    const int64_t mtime_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(mtime.time_since_epoch()).count();
    {
        std::lock_guard<std::mutex> lock(mutex_);
        const auto it = entries_.find(path);
        if (it != entries_.end() && it->second.size == size && it->second.mtime_ns == mtime_ns) return it->second.file;
    }
    // Read outside the lock: another session's tokenizer need not wait for this file.
    auto file = std::make_shared<const EmbeddingFile>(read_embedding_file(path));
    std::lock_guard<std::mutex> lock(mutex_);
    entries_[path] = Entry{size, mtime_ns, file};
    return file;
}

size_t EmbeddingCache::size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_.size();
}

std::vector<EmbeddingTrigger> list_embeddings(const std::string & dir, const std::vector<EmbeddingRef> & extra) {
    std::vector<EmbeddingTrigger> out;
    if (!dir.empty()) {
        std::error_code ec;
        if (!fs::is_directory(dir, ec)) {
            throw Error(ErrorCode::Io, "embeddingsDir " + dir + " is not a folder" + (ec ? " (" + ec.message() + ")" : std::string()), dir);
        }
        // stem (lowercased) -> (extension rank, file name, path): the best file for each trigger.
        struct Best {
            int rank;
            std::string name, path;
        };
        std::map<std::string, Best> best;
        fs::directory_iterator it(dir, ec), end;
        if (ec) throw Error(ErrorCode::Io, "embeddingsDir " + dir + " cannot be listed (" + ec.message() + ")", dir);
        for (; it != end; it.increment(ec)) {
            if (ec) throw Error(ErrorCode::Io, "embeddingsDir " + dir + " cannot be listed (" + ec.message() + ")", dir);
            std::error_code type_ec;
            if (!it->is_regular_file(type_ec)) continue;  // folders, sockets, broken links
            const fs::path p = it->path();
            const int rank = extension_rank(lowercase(p.extension().string()));
            const std::string stem = lowercase(p.stem().string());
            if (rank < 0 || stem.empty()) continue;
            const std::string name = p.filename().string();
            auto found = best.find(stem);
            if (found == best.end() || rank < found->second.rank || (rank == found->second.rank && name < found->second.name)) {
                best[stem] = Best{rank, name, p.string()};
            }
        }
        for (auto & kv : best) out.push_back(EmbeddingTrigger{kv.first, kv.second.path});
    }
    for (size_t i = 0; i < extra.size(); ++i) {
        const EmbeddingRef & ref = extra[i];
        const std::string what = "embeddings[" + std::to_string(i) + "]";
        if (ref.path.empty()) throw_invalid(what + ".path must be a file path; received an empty string");
        std::error_code ec;
        if (!fs::is_regular_file(ref.path, ec)) {
            throw Error(ErrorCode::Io, what + ".path " + ref.path + " is not a file" + (ec ? " (" + ec.message() + ")" : std::string()),
                        ref.path);
        }
        std::string trigger = lowercase(ref.trigger.empty() ? fs::path(ref.path).stem().string() : ref.trigger);
        if (trigger.empty()) throw_invalid(what + ".trigger must not be empty");
        auto same = std::find_if(out.begin(), out.end(), [&](const EmbeddingTrigger & t) { return t.trigger == trigger; });
        if (same != out.end()) same->path = ref.path;
        else out.push_back(EmbeddingTrigger{trigger, ref.path});
    }
    return out;
}

PromptEmbeddings::PromptEmbeddings(const Model & model, std::vector<EmbeddingTrigger> triggers)
    : model_(model), triggers_(std::move(triggers)) {
    for (const auto & t : triggers_) words_.words.push_back(t.trigger);
    words_.resolve = [this](size_t i) { return resolve(i); };
    rows_.resize(model_.text_encoder_2() ? 2 : 1);
}

const CustomTokens * PromptEmbeddings::custom(size_t index) const {
    if (index >= rows_.size() || rows_[index].rows.empty()) return nullptr;
    return &rows_[index];
}

std::vector<int32_t> PromptEmbeddings::resolve(size_t index) {
    const auto known = ids_.find(index);
    if (known != ids_.end()) return known->second;
    const EmbeddingTrigger & trigger = triggers_.at(index);
    const std::shared_ptr<const EmbeddingFile> file = model_.embedding_cache().get(trigger.path);
    const std::string & path = trigger.path;
    const std::string about = "embedding \"" + trigger.trigger + "\": ";

    // The model's encoders and the name of the SDXL tensor each one takes.
    std::vector<const TextEncoder *> encoders = {&model_.text_encoder()};
    if (model_.text_encoder_2()) encoders.push_back(model_.text_encoder_2());
    std::vector<std::string> roles(encoders.size());
    if (model_.arch() == Arch::SDXL && encoders.size() == 2) roles = {"clip_l", "clip_g"};
    if (model_.arch() == Arch::SDXLRefiner) roles = {"clip_g"};
    std::string widths;
    for (size_t e = 0; e < encoders.size(); ++e) {
        widths += (e ? " or " : "") + std::to_string(encoders[e]->params().width);
        if (!roles[e].empty()) widths += " (" + roles[e] + ")";
    }

    std::vector<const EmbeddingTensor *> picked(encoders.size(), nullptr);
    auto find = [&](const std::string & name) -> const EmbeddingTensor * {
        for (const auto & t : file->tensors) if (t.name == name) return &t;
        return nullptr;
    };
    auto wrong_width = [&](const EmbeddingTensor & t, const std::string & expected) {
        throw_format(path, about + "tensor '" + t.name + "' is " + std::to_string(t.width) + " wide; this model's text encoder" +
                               (encoders.size() > 1 ? "s take " : " takes ") + expected);
    };
    if (file->sdxl_pair) {
        for (size_t e = 0; e < encoders.size(); ++e) {
            const int64_t width = encoders[e]->params().width;
            if (!roles[e].empty()) {
                picked[e] = find(roles[e]);
                if (picked[e] && picked[e]->width != width) wrong_width(*picked[e], std::to_string(width) + " for " + roles[e]);
            } else {
                for (const auto & t : file->tensors) {
                    if (t.width == width) {
                        picked[e] = &t;
                        break;
                    }
                }
                if (!picked[e]) wrong_width(file->tensors.front(), widths);
            }
        }
        if (std::all_of(picked.begin(), picked.end(), [](const EmbeddingTensor * t) { return t == nullptr; })) {
            throw_format(path, about + "has no '" + roles.front() + "' tensor, which this model's text encoder takes");
        }
    } else {
        const EmbeddingTensor & t = file->tensors.front();
        for (size_t e = 0; e < encoders.size(); ++e) {
            if (t.width == encoders[e]->params().width) {
                picked[e] = &t;
                break;
            }
        }
        if (!picked[0] && (encoders.size() == 1 || !picked[1])) wrong_width(t, widths);
    }

    int64_t count = 0;
    for (const EmbeddingTensor * t : picked) {
        if (!t) continue;
        if (count != 0 && t->count != count) {
            throw_format(path, about + "'clip_l' and 'clip_g' hold different numbers of vectors (" + std::to_string(picked[0]->count) +
                                   " and " + std::to_string(t->count) + ")");
        }
        count = t->count;
    }
    const int32_t first_id = encoders[0]->params().vocab;
    for (const TextEncoder * e : encoders) {
        if (e->params().vocab != first_id) {
            throw Error(ErrorCode::UnsupportedModel, "embeddings need the text encoders to share one vocabulary; they have " +
                                                         std::to_string(first_id) + " and " + std::to_string(e->params().vocab) + " tokens");
        }
    }
    const int64_t start = rows_[0].count();
    for (size_t e = 0; e < encoders.size(); ++e) {
        CustomTokens & rows = rows_[e];
        rows.first_id = first_id;
        rows.width = encoders[e]->params().width;
        if (picked[e]) rows.rows.insert(rows.rows.end(), picked[e]->data.begin(), picked[e]->data.end());
        else rows.rows.resize(rows.rows.size() + static_cast<size_t>(count * rows.width), 0.0f);  // the other encoder's: zeros
    }
    std::vector<int32_t> ids;
    for (int64_t k = 0; k < count; ++k) ids.push_back(static_cast<int32_t>(first_id + start + k));
    ids_[index] = ids;
    used_.push_back(trigger.trigger);
    return ids;
}

}  // namespace sd
