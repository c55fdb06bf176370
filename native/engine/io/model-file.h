// Model file readers: safetensors (single or sharded), GGUF, PyTorch zip checkpoints
// (.ckpt/.pt/.pth, through a restricted unpickler) and diffusers folders.
//
// Every reader memory-maps its files and only describes tensors: name, type, shape and where
// the bytes are. Nothing is copied or converted here. Every offset and size is checked against
// the file before a record is returned, so a consumer may read [offset, offset + nbytes) of
// `file->data` without further checks.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ggml.h"

namespace sd {

// What identifies a file's content cheaply: where it lives, its size and modification time.
struct FileIdentity {
    uint64_t device = 0, inode = 0, size = 0;
    int64_t mtime_ns = 0;
};

// Read-only memory map of a whole file (RAII). Only regular files: anything else (a FIFO, a
// device, a socket) is an Io error before anything reads it.
class MappedFile {
public:
    explicit MappedFile(const std::string & path);  // throws sd::Error (Io) on failure
    ~MappedFile();
    MappedFile(const MappedFile &) = delete;
    MappedFile & operator=(const MappedFile &) = delete;

    const std::string & path() const { return path_; }
    const uint8_t * data() const { return data_; }
    uint64_t size() const { return size_; }
    // Tells the OS the pages of [offset, offset + size) are no longer needed, so they leave this
    // process's resident memory (they are read again from the file if touched). Whole pages
    // inside the range only; a no-op where unsupported.
    void drop_pages(uint64_t offset, uint64_t size) const;
    // Empty while the file at path() is the one mapped, as it was (same file, size and
    // modification time); else what changed. A stat() call.
    std::string changed_since_open() const;

private:
    std::string path_;
    const uint8_t * data_ = nullptr;
    uint64_t size_ = 0;
    FileIdentity identity_;
#if defined(_WIN32)
    void * file_handle_ = nullptr;
    void * mapping_handle_ = nullptr;
#endif
};

// Element type of a stored tensor. Quantized and other ggml-native types come from GGUF and are
// described by `ggml_type` with dtype == Ggml.
enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, Bool, Ggml };

inline const char * dtype_name(DType dtype, ggml_type type) {  // "f32", "bf16", "q8_0", ...
    switch (dtype) {
        case DType::F64: return "f64";
        case DType::F32: return "f32";
        case DType::F16: return "f16";
        case DType::BF16: return "bf16";
        case DType::I64: return "i64";
        case DType::I32: return "i32";
        case DType::I16: return "i16";
        case DType::I8: return "i8";
        case DType::U8: return "u8";
        case DType::Bool: return "bool";
        case DType::Ggml: return ggml_type_name(type);
    }
    return "unknown";
}

struct TensorRecord {
    // As stored. diffusers: "<component>/<name>", e.g. "unet/conv_in.weight". torch: the state-dict
    // key, with a top-level "state_dict" / "model" / "module" wrapper dict unwrapped (not prefixed)
    // and nested dicts joined with '.'.
    std::string name;
    DType dtype = DType::F32;
    ggml_type type = GGML_TYPE_COUNT;  // for DType::Ggml; else the matching ggml type (F64..I8), COUNT for U8/Bool
    std::vector<int64_t> shape;  // outermost first (torch order); GGUF ne[] is reversed into this
    std::shared_ptr<const MappedFile> file;
    uint64_t offset = 0;  // byte offset of the first element in file->data()
    uint64_t nbytes = 0;  // == element count x type size (blocks for quantized types), checked

    int64_t numel() const {
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        return n;
    }
};

struct ModelFile {
    std::string path;    // what the caller opened (file or folder)
    std::string format;  // "safetensors", "gguf", "torch", "diffusers"
    std::vector<TensorRecord> tensors;  // unique names, file order
    // Text metadata, in file order:
    //  - safetensors: __metadata__ (non-string values as JSON text); sharded: the index's "metadata"
    //    members, then each shard's __metadata__ (first occurrence of a key wins).
    //  - GGUF: every key/value; scalars as plain text ("sd1", "64", "0.5", "true"), arrays as JSON
    //    ("[1,2]", "[\"a\"]"); arrays over 64 items (or 64 KiB of text) as a summary
    //    {"type":"string","count":49408,"head":[first 16 items]}.
    //  - diffusers: "model_index.json" and "<component>/config.json" with their JSON text, and
    //    each component's safetensors metadata as "<component>/<key>".
    //  - torch: none.
    std::vector<std::pair<std::string, std::string>> metadata;
    std::vector<std::shared_ptr<const MappedFile>> files;  // every file mapped for this model

    const TensorRecord * find(const std::string & name) const {
        for (const auto & t : tensors) if (t.name == name) return &t;
        return nullptr;
    }
    const std::string * meta(const std::string & key) const {
        for (const auto & kv : metadata) if (kv.first == key) return &kv.second;
        return nullptr;
    }
};

// Opens any supported format, deciding by content (magic bytes / zip signature / folder layout),
// not by extension alone. Throws sd::Error: Io (cannot open/map), ModelFormat (corrupt, truncated,
// inconsistent), UnsupportedModel (well-formed but a dtype or feature we do not read). Messages
// name the file and say what was found and what was expected.
ModelFile open_model_file(const std::string & path);

}  // namespace sd
