// open_model_file: decides the format by content and hands off to the readers.
#include "io/model-file.h"

#include <filesystem>

#include "io/model-file-internal.h"

namespace sd {
namespace detail {

std::string shape_text(const std::vector<int64_t> & shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

static bool ends_with(const std::string & s, const char * suffix) {
    size_t n = std::strlen(suffix);
    return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

FileKind sniff(const MappedFile & file) {
    const uint8_t * d = file.data();
    const uint64_t n = file.size();
    if (n >= 4 && std::memcmp(d, "GGUF", 4) == 0) return FileKind::Gguf;
    if (n >= 4 && (std::memcmp(d, "PK\x03\x04", 4) == 0 || std::memcmp(d, "PK\x05\x06", 4) == 0)) return FileKind::TorchZip;
    if (ends_with(file.path(), ".index.json")) return FileKind::ShardIndex;
    // safetensors: u64 header length, then the header's '{'.
    if (n >= 9 && d[8] == '{') return FileKind::Safetensors;
    // A JSON document (a shard index under another name).
    uint64_t i = 0;
    while (i < n && (d[i] == ' ' || d[i] == '\t' || d[i] == '\n' || d[i] == '\r')) ++i;
    if (i < n && d[i] == '{') return FileKind::ShardIndex;
    return FileKind::Unknown;
}

const char * read_any_file(const FilePtr & file, ModelFile & out) {
    const std::string & path = file->path();
    switch (sniff(*file)) {
        case FileKind::Gguf: read_gguf(file, out); return "gguf";
        case FileKind::TorchZip: read_torch_zip(file, out); return "torch";
        case FileKind::Safetensors: read_safetensors(file, out); return "safetensors";
        case FileKind::ShardIndex: return read_sharded(file, out);
        case FileKind::Unknown: break;
    }
    const uint64_t n = file->size();
    if (n == 0) throw_format(path, "file is empty (0 bytes); expected a model file");
    // Pickle protocol 2 header: torch.save's legacy (pre-1.6) format or a bare pickle.
    if (n >= 2 && file->data()[0] == 0x80 && file->data()[1] <= 5)
        throw_unsupported(path, "legacy (non-zip) PyTorch pickle format is not supported; re-save it with torch >= 1.6 "
                                "or convert it to safetensors");
    if (n < 9) throw_format(path, "truncated: " + std::to_string(n) + " bytes is too short for any model format");
    throw_format(path, "not a recognized model file; expected safetensors, GGUF, a PyTorch zip checkpoint "
                       "(.ckpt/.pt/.pth), a sharded *.safetensors.index.json, or a diffusers folder");
}

}  // namespace detail

ModelFile open_model_file(const std::string & path) {
    ModelFile out;
    out.path = path;
    std::error_code ec;
    if (std::filesystem::is_directory(std::filesystem::u8path(path), ec)) {
        detail::read_diffusers(path, out);
        out.format = "diffusers";
        return out;
    }
    auto file = std::make_shared<const MappedFile>(path);
    out.format = detail::read_any_file(file, out);
    return out;
}

}  // namespace sd
