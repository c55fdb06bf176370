// safetensors: 8-byte little-endian header length, a JSON header, then the data section.
//   header = { "<name>": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, ...,
//              "__metadata__": {"key": "value"} }
// Offsets are relative to the data section (8 + header length). Sharded models add an index JSON
// {"metadata": {...}, "weight_map": {"<name>": "<shard file>"}}.
#include <map>
#include <set>

#include "core/json.h"
#include "io/model-file-internal.h"

namespace sd {
namespace detail {

namespace {

constexpr uint64_t kMaxHeader = 100ull * 1024 * 1024;  // real headers are a few MB at most

struct DTypeInfo {
    const char * name;
    DType dtype;
    ggml_type type;
    uint64_t size;
};

const DTypeInfo kDTypes[] = {
    {"F64", DType::F64, GGML_TYPE_F64, 8},  {"F32", DType::F32, GGML_TYPE_F32, 4},
    {"F16", DType::F16, GGML_TYPE_F16, 2},  {"BF16", DType::BF16, GGML_TYPE_BF16, 2},
    {"I64", DType::I64, GGML_TYPE_I64, 8},  {"I32", DType::I32, GGML_TYPE_I32, 4},
    {"I16", DType::I16, GGML_TYPE_I16, 2},  {"I8", DType::I8, GGML_TYPE_I8, 1},
    {"U8", DType::U8, GGML_TYPE_COUNT, 1},  {"BOOL", DType::Bool, GGML_TYPE_COUNT, 1},
};

// Reads one header entry into a record whose offset is absolute in the file.
TensorRecord parse_entry(const std::string & path, const std::string & name, const JsonValue & entry,
                         uint64_t data_start, uint64_t data_size) {
    const std::string where = "tensor '" + name + "'";
    if (!entry.is_object()) throw_format(path, where + ": header entry is " + entry.dump() + ", expected an object");
    const JsonValue * dtype = entry.get("dtype");
    const JsonValue * shape = entry.get("shape");
    const JsonValue * offsets = entry.get("data_offsets");
    if (!dtype || !dtype->is_string()) throw_format(path, where + ": missing string \"dtype\"");
    if (!shape || !shape->is_array()) throw_format(path, where + ": missing array \"shape\"");
    if (!offsets || !offsets->is_array()) throw_format(path, where + ": missing array \"data_offsets\"");

    TensorRecord t;
    t.name = name;
    const DTypeInfo * info = nullptr;
    for (const auto & d : kDTypes) if (dtype->as_string() == d.name) info = &d;
    if (!info)
        throw_unsupported(path, where + " has dtype " + dtype->as_string() +
                                    "; supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL");
    t.dtype = info->dtype;
    t.type = info->type;

    if (shape->items().size() > 16) throw_format(path, where + ": shape has " + std::to_string(shape->items().size()) + " dims");
    for (const auto & d : shape->items()) {
        uint64_t v;
        if (!d.as_uint64(v) || v > uint64_t(INT64_MAX))
            throw_format(path, where + ": shape " + shape->dump() + " has a dim that is not a non-negative integer");
        t.shape.push_back(int64_t(v));
    }
    uint64_t numel = 0, nbytes = 0;
    if (!shape_numel(t.shape, numel) || !mul_u64(numel, info->size, nbytes))
        throw_format(path, where + ": shape " + shape->dump() + " is too large");

    uint64_t begin = 0, end = 0;
    if (offsets->items().size() != 2 || !offsets->items()[0].as_uint64(begin) || !offsets->items()[1].as_uint64(end))
        throw_format(path, where + ": data_offsets " + offsets->dump() + ", expected [begin, end] non-negative integers");
    const std::string range = "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "]";
    if (begin > end) throw_format(path, where + " " + range + " begin after end");
    if (end > data_size)
        throw_format(path, where + " " + range + " end past the data section (" + std::to_string(data_size) + " bytes)");
    if (end - begin != nbytes)
        throw_format(path, where + " " + range + " hold " + std::to_string(end - begin) + " bytes, but shape " +
                               shape->dump() + " of " + info->name + " needs " + std::to_string(nbytes));
    t.offset = data_start + begin;  // cannot overflow: data_start + data_size == file size
    t.nbytes = nbytes;
    return t;
}

}  // namespace

void read_safetensors(const FilePtr & file, ModelFile & out) {
    const std::string & path = file->path();
    const uint64_t size = file->size();
    if (size < 8) throw_format(path, "truncated: " + std::to_string(size) + " bytes, a safetensors file starts with an 8-byte header length");
    uint64_t header_len;
    std::memcpy(&header_len, file->data(), 8);
    if (header_len > size - 8)
        throw_format(path, "truncated: safetensors header length is " + std::to_string(header_len) +
                               " bytes but only " + std::to_string(size - 8) + " follow");
    if (header_len > kMaxHeader)
        throw_format(path, "safetensors header length " + std::to_string(header_len) + " exceeds the " +
                               std::to_string(kMaxHeader) + "-byte limit");
    JsonValue header = parse_json(reinterpret_cast<const char *>(file->data() + 8), size_t(header_len),
                                  path + ": safetensors header");
    if (!header.is_object()) throw_format(path, "safetensors header is not a JSON object");

    const uint64_t data_start = 8 + header_len;
    const uint64_t data_size = size - data_start;
    std::unordered_set<std::string> names;
    for (const auto & t : out.tensors) names.insert(t.name);
    for (const auto & m : header.members()) {
        if (m.first == "__metadata__") {
            if (!m.second.is_object()) throw_format(path, "__metadata__ is " + m.second.dump() + ", expected an object");
            // Spec says string -> string; some writers store numbers, so keep those as JSON text.
            for (const auto & kv : m.second.members())
                out.metadata.emplace_back(kv.first, kv.second.is_string() ? kv.second.as_string() : kv.second.dump());
            continue;
        }
        TensorRecord t = parse_entry(path, m.first, m.second, data_start, data_size);
        claim_name(names, t.name, path);
        t.file = file;
        out.tensors.push_back(std::move(t));
    }
    out.files.push_back(file);
}

const char * read_sharded(const FilePtr & index_file, ModelFile & out) {
    const std::string & path = index_file->path();
    if (index_file->size() > kMaxHeader)
        throw_format(path, "shard index is " + std::to_string(index_file->size()) + " bytes; expected a JSON file under " +
                               std::to_string(kMaxHeader));
    JsonValue index = parse_json(reinterpret_cast<const char *>(index_file->data()), size_t(index_file->size()), path);
    const JsonValue * map = index.is_object() ? index.get("weight_map") : nullptr;
    if (!map || !map->is_object()) throw_format(path, "shard index has no \"weight_map\" object");
    if (const JsonValue * meta = index.get("metadata"); meta && meta->is_object()) {
        for (const auto & kv : meta->members())
            out.metadata.emplace_back(kv.first, kv.second.is_string() ? kv.second.as_string() : kv.second.dump());
    }

    std::string dir;
    if (size_t slash = path.find_last_of("/\\"); slash != std::string::npos) dir = path.substr(0, slash + 1);

    // Shards in first-mention order; each tensor's expected shard.
    std::vector<std::string> shards;
    std::map<std::string, std::string> expected;
    for (const auto & m : map->members()) {
        if (!m.second.is_string()) throw_format(path, "weight_map entry '" + m.first + "' is " + m.second.dump() + ", expected a file name");
        const std::string & shard = m.second.as_string();
        // A shard is a file beside the index: no folders, no way out of the folder.
        if (shard.empty() || shard.find_first_of("/\\") != std::string::npos || shard == "." || shard == "..")
            throw_format(path, "weight_map entry '" + m.first + "' names shard '" + shard + "', expected a file name in the same folder");
        if (!expected.emplace(m.first, shard).second) throw_format(path, "weight_map lists tensor '" + m.first + "' twice");
        bool seen = false;
        for (const auto & s : shards) seen = seen || s == shard;
        if (!seen) shards.push_back(shard);
    }
    if (shards.empty()) throw_format(path, "weight_map is empty");

    std::unordered_set<std::string> names;
    for (const auto & t : out.tensors) names.insert(t.name);
    const char * format = nullptr;
    for (const auto & shard : shards) {
        auto file = std::make_shared<const MappedFile>(dir + shard);
        ModelFile part;
        FileKind kind = sniff(*file);
        if (kind == FileKind::Safetensors) read_safetensors(file, part);
        else if (kind == FileKind::TorchZip) read_torch_zip(file, part);
        else throw_format(file->path(), "shard listed in " + path + " is neither safetensors nor a PyTorch zip");
        std::set<std::string> present;
        for (auto & t : part.tensors) {
            present.insert(t.name);
            claim_name(names, t.name, file->path());  // the same name in two shards
            out.tensors.push_back(std::move(t));
        }
        for (auto & kv : part.metadata)
            if (!out.meta(kv.first)) out.metadata.push_back(std::move(kv));
        for (const auto & e : expected) {
            if (e.second == shard && !present.count(e.first))
                throw_format(path, "weight_map puts tensor '" + e.first + "' in " + shard + ", but that shard does not hold it");
        }
        out.files.push_back(file);
        if (!format) format = kind == FileKind::Safetensors ? "safetensors" : "torch";
    }
    out.files.push_back(index_file);
    return format;
}

}  // namespace detail
}  // namespace sd
