// Shared pieces of the model-file readers (private to native/engine).
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_set>

#include "core/errors.h"
#include "io/model-file.h"

namespace sd {
namespace detail {

using FilePtr = std::shared_ptr<const MappedFile>;

// Overflow-checked arithmetic on sizes: false when the result does not fit.
inline bool add_u64(uint64_t a, uint64_t b, uint64_t & out) {
    if (a > UINT64_MAX - b) return false;
    out = a + b;
    return true;
}
inline bool mul_u64(uint64_t a, uint64_t b, uint64_t & out) {
    if (a != 0 && b > UINT64_MAX / a) return false;
    out = a * b;
    return true;
}

// Element count of `shape` (all dims already checked >= 0); false when it exceeds INT64_MAX.
inline bool shape_numel(const std::vector<int64_t> & shape, uint64_t & out) {
    uint64_t n = 1;
    for (int64_t d : shape) {
        if (!mul_u64(n, uint64_t(d), n) || n > uint64_t(INT64_MAX)) return false;
    }
    out = n;
    return true;
}

std::string shape_text(const std::vector<int64_t> & shape);  // "[320, 4, 3, 3]"

// Little-endian reader over [data, data + size) that throws ModelFormat (naming `path` and what
// was being read) instead of ever reading past the end.
class ByteReader {
public:
    ByteReader(const uint8_t * data, uint64_t size, const std::string & path) : data_(data), size_(size), path_(path) {}

    uint64_t pos() const { return pos_; }
    uint64_t size() const { return size_; }
    uint64_t remaining() const { return size_ - pos_; }
    const uint8_t * here() const { return data_ + pos_; }

    void need(uint64_t n, const char * what) const {
        if (n > remaining())
            throw_format(path_, std::string("truncated while reading ") + what + ": needs " + std::to_string(n) +
                                    " bytes at offset " + std::to_string(pos_) + ", file has " + std::to_string(size_));
    }
    void skip(uint64_t n, const char * what) { need(n, what); pos_ += n; }
    void seek(uint64_t pos, const char * what) {
        if (pos > size_)
            throw_format(path_, std::string("offset ") + std::to_string(pos) + " of " + what + " is past the end of the file (" +
                                    std::to_string(size_) + " bytes)");
        pos_ = pos;
    }

    template <typename T> T read(const char * what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, data_ + pos_, sizeof(T));  // hosts are little-endian (x86, arm64)
        pos_ += sizeof(T);
        return v;
    }
    std::string read_bytes(uint64_t n, const char * what) {
        need(n, what);
        std::string s(reinterpret_cast<const char *>(data_ + pos_), size_t(n));
        pos_ += n;
        return s;
    }

private:
    const uint8_t * data_;
    uint64_t size_;
    uint64_t pos_ = 0;
    const std::string & path_;
};

// Records a tensor name, throwing ModelFormat on a duplicate.
inline void claim_name(std::unordered_set<std::string> & names, const std::string & name, const std::string & path) {
    if (!names.insert(name).second) throw_format(path, "tensor '" + name + "' appears more than once");
}

// Readers. Each appends to `out` (tensors, metadata, files); callers set out.path / out.format.
void read_safetensors(const FilePtr & file, ModelFile & out);
void read_gguf(const FilePtr & file, ModelFile & out);
void read_torch_zip(const FilePtr & file, ModelFile & out);
// index.json (already mapped) listing shards; shards are read by content (safetensors or torch zip).
// Returns the shards' format ("safetensors" or "torch").
const char * read_sharded(const FilePtr & index, ModelFile & out);
void read_diffusers(const std::string & dir, ModelFile & out);

// What a regular file holds, judged by its first bytes.
enum class FileKind { Safetensors, Gguf, TorchZip, ShardIndex, Unknown };
FileKind sniff(const MappedFile & file);
// Reads any single file (or shard index) into `out`; returns the format name.
const char * read_any_file(const FilePtr & file, ModelFile & out);

}  // namespace detail
}  // namespace sd

namespace sd {
namespace detail {

// A tensor described by a torch pickle, before its storage is resolved in the zip.
struct PickledTensor {
    std::string name;         // flattened state-dict key
    std::string storage_key;  // zip entry "<archive>/data/<storage_key>"
    DType dtype = DType::F32;
    ggml_type type = GGML_TYPE_COUNT;
    uint64_t elem_size = 4;
    uint64_t storage_offset = 0;  // in elements
    std::vector<int64_t> shape;
    std::vector<int64_t> stride;  // as pickled; the zip reader requires them contiguous
};

// Runs the restricted unpickler over a torch data.pkl and flattens the state dict (unwrapping a
// top-level "state_dict" / "model" wrapper; nested dicts joined with '.'). Only containers,
// scalars, tensor rebuilding and a few inert training-state classes are accepted; any other
// global is a ModelFormat error. Nothing is ever called or executed.
std::vector<PickledTensor> unpickle_state_dict(const uint8_t * data, uint64_t size, const std::string & path);

}  // namespace detail
}  // namespace sd
