// Model file readers. Layout of each format, and what is checked:
//   safetensors  u64 header length | JSON header | data; every data_offsets pair inside the data
//                section and equal to numel x dtype size.
//   GGUF         magic, version 2/3, counts, key/values, tensor infos, aligned data section;
//                every tensor's type valid, ne0 a multiple of the block size, bytes inside the file.
//   torch zip    zip central directory (zip64 aware) → <archive>/data.pkl (restricted unpickler)
//                and <archive>/data/<key> storages, STORED only, contiguous views inside them.
//   diffusers    <component>/ folders, each holding one of the above.
#include "model-file.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <set>

#include "errors.h"
#include "json.h"

#if defined(_WIN32)
#  define WIN32_LEAN_AND_MEAN
#  include <windows.h>
#else
#  include <fcntl.h>
#  include <sys/mman.h>
#  include <sys/stat.h>
#  include <unistd.h>
#endif

namespace fs = std::filesystem;

namespace sd {

// ---------------------------------------------------------------- memory map

MappedFile::MappedFile(const std::string & path) : path_(path) {
#if defined(_WIN32)
    HANDLE file = CreateFileA(path.c_str(), GENERIC_READ, FILE_SHARE_READ, nullptr, OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr);
    if (file == INVALID_HANDLE_VALUE) throw Error(ErrorCode::Io, path + ": cannot open (error " + std::to_string(GetLastError()) + ")", path);
    LARGE_INTEGER size;
    if (!GetFileSizeEx(file, &size)) {
        CloseHandle(file);
        throw Error(ErrorCode::Io, path + ": cannot read its size", path);
    }
    size_ = static_cast<uint64_t>(size.QuadPart);
    file_handle_ = file;
    if (size_ > 0) {
        HANDLE mapping = CreateFileMappingA(file, nullptr, PAGE_READONLY, 0, 0, nullptr);
        if (!mapping) throw Error(ErrorCode::Io, path + ": cannot map (error " + std::to_string(GetLastError()) + ")", path);
        mapping_handle_ = mapping;
        data_ = static_cast<const uint8_t *>(MapViewOfFile(mapping, FILE_MAP_READ, 0, 0, 0));
        if (!data_) throw Error(ErrorCode::Io, path + ": cannot map (error " + std::to_string(GetLastError()) + ")", path);
    }
#else
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(ErrorCode::Io, path + ": cannot open: " + std::strerror(errno), path);
    struct stat st {};
    if (fstat(fd, &st) != 0) {
        int e = errno;
        ::close(fd);
        throw Error(ErrorCode::Io, path + ": cannot stat: " + std::strerror(e), path);
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        throw Error(ErrorCode::Io, path + ": not a regular file", path);
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ > 0) {
        void * p = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
        int e = errno;
        ::close(fd);
        if (p == MAP_FAILED) throw Error(ErrorCode::Io, path + ": cannot map: " + std::strerror(e), path);
        data_ = static_cast<const uint8_t *>(p);
    } else {
        ::close(fd);
    }
#endif
}

MappedFile::~MappedFile() {
#if defined(_WIN32)
    if (data_) UnmapViewOfFile(data_);
    if (mapping_handle_) CloseHandle(mapping_handle_);
    if (file_handle_) CloseHandle(file_handle_);
#else
    if (data_) munmap(const_cast<uint8_t *>(data_), size_);
#endif
}

namespace {

using FilePtr = std::shared_ptr<const MappedFile>;

// ---------------------------------------------------------------- checked arithmetic

bool mul_ok(uint64_t a, uint64_t b, uint64_t & out) { return !__builtin_mul_overflow(a, b, &out); }
bool add_ok(uint64_t a, uint64_t b, uint64_t & out) { return !__builtin_add_overflow(a, b, &out); }

// Bytes of `shape` elements of `elsize` bytes each, or false on overflow / negative dims.
bool shape_bytes(const std::vector<int64_t> & shape, uint64_t elsize, uint64_t & out) {
    uint64_t n = elsize;
    for (int64_t d : shape) {
        if (d < 0 || !mul_ok(n, static_cast<uint64_t>(d), n)) return false;
    }
    out = n;
    return true;
}

std::string shape_text(const std::vector<int64_t> & shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

size_t dtype_size(DType d) {
    switch (d) {
        case DType::F64: case DType::I64: return 8;
        case DType::F32: case DType::I32: return 4;
        case DType::F16: case DType::BF16: case DType::I16: return 2;
        case DType::I8: case DType::U8: case DType::Bool: return 1;
        case DType::Ggml: return 0;
    }
    return 0;
}

ggml_type float_ggml_type(DType d) {
    switch (d) {
        case DType::F32: return GGML_TYPE_F32;
        case DType::F16: return GGML_TYPE_F16;
        case DType::BF16: return GGML_TYPE_BF16;
        default: return GGML_TYPE_COUNT;
    }
}

bool starts_with(const std::string & s, const char * prefix) { return s.rfind(prefix, 0) == 0; }
bool ends_with(const std::string & s, const std::string & suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// ---------------------------------------------------------------- safetensors

bool safetensors_dtype(const std::string & s, DType & d) {
    static const std::map<std::string, DType> table = {
        {"F64", DType::F64}, {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"I64", DType::I64},
        {"I32", DType::I32}, {"I16", DType::I16}, {"I8", DType::I8},   {"U8", DType::U8},     {"BOOL", DType::Bool},
    };
    auto it = table.find(s);
    if (it == table.end()) return false;
    d = it->second;
    return true;
}

constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;

void read_safetensors(const FilePtr & file, ModelFile & out) {
    const std::string & path = file->path();
    const uint64_t size = file->size();
    if (size < 8) throw_format(path, "file is " + std::to_string(size) + " bytes, too short for a safetensors header (8-byte length)");
    uint64_t header_len = 0;
    std::memcpy(&header_len, file->data(), 8);  // little-endian on every platform we build for
    if (header_len < 2 || header_len > kMaxSafetensorsHeader) {
        throw_format(path, "safetensors header length is " + std::to_string(header_len) + " bytes; expected 2 to " +
                               std::to_string(kMaxSafetensorsHeader) + " (not a safetensors file?)");
    }
    if (header_len > size - 8) {
        throw_format(path, "safetensors header length " + std::to_string(header_len) + " runs past the end of the file (" +
                               std::to_string(size) + " bytes): truncated");
    }
    JsonValue header;
    try {
        header = parse_json(reinterpret_cast<const char *>(file->data()) + 8, header_len);
    } catch (const JsonError & e) {
        throw_format(path, std::string("safetensors header is not valid JSON: ") + e.what());
    }
    if (!header.is_object()) throw_format(path, "safetensors header is not a JSON object");
    const uint64_t data_start = 8 + header_len;
    const uint64_t data_size = size - data_start;
    for (const auto & [name, entry] : header.members) {
        if (name == "__metadata__") {
            if (!entry.is_object()) throw_format(path, "__metadata__ is not an object");
            for (const auto & [k, v] : entry.members) out.metadata.emplace_back(k, v.is_string() ? v.text : v.dump());
            continue;
        }
        const JsonValue * dtype = entry.get("dtype");
        const JsonValue * shape = entry.get("shape");
        const JsonValue * offsets = entry.get("data_offsets");
        if (!dtype || !dtype->is_string() || !shape || !shape->is_array() || !offsets || !offsets->is_array() ||
            offsets->items.size() != 2) {
            throw_format(path, "tensor '" + name + "' needs dtype (string), shape (array) and data_offsets ([begin, end])");
        }
        TensorRecord r;
        r.name = name;
        r.file = file;
        if (!safetensors_dtype(dtype->text, r.dtype)) {
            throw_unsupported(path, "tensor '" + name + "' has dtype " + dtype->text +
                                        "; supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL");
        }
        r.type = float_ggml_type(r.dtype);
        if (shape->items.size() > 8) throw_format(path, "tensor '" + name + "' has " + std::to_string(shape->items.size()) + " dimensions");
        for (const auto & d : shape->items) {
            uint64_t v = 0;
            if (!d.as_uint64(v) || v > (1ull << 40)) throw_format(path, "tensor '" + name + "' has an invalid shape entry " + d.dump());
            r.shape.push_back(static_cast<int64_t>(v));
        }
        uint64_t begin = 0, end = 0;
        if (!offsets->items[0].as_uint64(begin) || !offsets->items[1].as_uint64(end) || begin > end) {
            throw_format(path, "tensor '" + name + "' has invalid data_offsets " + offsets->dump());
        }
        if (end > data_size) {
            throw_format(path, "tensor '" + name + "' data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                                   "] end past the data section (" + std::to_string(data_size) + " bytes): truncated file?");
        }
        uint64_t expected = 0;
        if (!shape_bytes(r.shape, dtype_size(r.dtype), expected) || expected != end - begin) {
            throw_format(path, "tensor '" + name + "' shape " + shape_text(r.shape) + " of " + dtype->text + " needs " +
                                   std::to_string(expected) + " bytes but data_offsets hold " + std::to_string(end - begin));
        }
        r.offset = data_start + begin;
        r.nbytes = end - begin;
        out.tensors.push_back(std::move(r));
    }
}

void read_safetensors_index(const std::string & index_path, ModelFile & out) {
    auto index_file = std::make_shared<const MappedFile>(index_path);
    JsonValue index;
    try {
        index = parse_json(reinterpret_cast<const char *>(index_file->data()), index_file->size());
    } catch (const JsonError & e) {
        throw_format(index_path, std::string("index is not valid JSON: ") + e.what());
    }
    const JsonValue * map = index.get("weight_map");
    if (!map || !map->is_object()) throw_format(index_path, "index has no \"weight_map\" object");
    if (const JsonValue * meta = index.get("metadata"); meta && meta->is_object()) {
        for (const auto & [k, v] : meta->members) out.metadata.emplace_back(k, v.is_string() ? v.text : v.dump());
    }
    const fs::path dir = fs::path(index_path).parent_path();
    std::map<std::string, ModelFile> shards;
    std::set<std::string> seen;
    for (const auto & [name, shard] : map->members) {
        if (!shard.is_string() || shard.text.empty() || shard.text.find("..") != std::string::npos ||
            fs::path(shard.text).is_absolute()) {
            throw_format(index_path, "weight_map entry for '" + name + "' must name a shard file in the same folder");
        }
        auto it = shards.find(shard.text);
        if (it == shards.end()) {
            ModelFile part;
            auto f = std::make_shared<const MappedFile>((dir / shard.text).string());
            read_safetensors(f, part);
            part.files.push_back(f);
            it = shards.emplace(shard.text, std::move(part)).first;
        }
        const TensorRecord * r = it->second.find(name);
        if (!r) throw_format(index_path, "weight_map says '" + name + "' is in " + shard.text + ", which has no such tensor");
        if (!seen.insert(name).second) throw_format(index_path, "tensor '" + name + "' appears twice in weight_map");
        out.tensors.push_back(*r);
    }
    for (auto & [_, part] : shards) {
        for (auto & f : part.files) out.files.push_back(f);
        for (auto & kv : part.metadata) out.metadata.push_back(kv);
    }
    out.files.push_back(index_file);
}

// ---------------------------------------------------------------- GGUF

class Cursor {
public:
    Cursor(const FilePtr & f, uint64_t pos) : f_(f), pos_(pos) {}
    uint64_t pos() const { return pos_; }
    void need(uint64_t n, const char * what) const {
        if (n > f_->size() || pos_ > f_->size() - n) {
            throw_format(f_->path(), std::string("truncated: ") + what + " at byte " + std::to_string(pos_) +
                                         " runs past the end of the file (" + std::to_string(f_->size()) + " bytes)");
        }
    }
    template <typename T>
    T read(const char * what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, f_->data() + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }
    std::string str(const char * what) {
        uint64_t n = read<uint64_t>(what);
        if (n > (64ull << 20)) throw_format(f_->path(), std::string(what) + " claims " + std::to_string(n) + " bytes");
        need(n, what);
        std::string s(reinterpret_cast<const char *>(f_->data() + pos_), n);
        pos_ += n;
        return s;
    }
    void skip(uint64_t n, const char * what) {
        need(n, what);
        pos_ += n;
    }

private:
    FilePtr f_;
    uint64_t pos_;
};

enum GgufType : uint32_t { U8 = 0, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64, GGUF_TYPE_END };

std::string json_quote(const std::string & s) {
    JsonValue v;
    v.type = JsonValue::Type::String;
    v.text = s;
    return v.dump();
}

// Reads one GGUF value and renders it as text (arrays as JSON, capped at `kMaxRendered` items).
std::string gguf_value(Cursor & c, uint32_t type, const std::string & path, int depth, bool quote_strings) {
    constexpr uint64_t kMaxRendered = 64;
    auto scalar = [&](auto v) { return std::to_string(v); };
    switch (type) {
        case U8: return scalar(c.read<uint8_t>("u8 value"));
        case I8: return scalar(c.read<int8_t>("i8 value"));
        case U16: return scalar(c.read<uint16_t>("u16 value"));
        case I16: return scalar(c.read<int16_t>("i16 value"));
        case U32: return scalar(c.read<uint32_t>("u32 value"));
        case I32: return scalar(c.read<int32_t>("i32 value"));
        case U64: return scalar(c.read<uint64_t>("u64 value"));
        case I64: return scalar(c.read<int64_t>("i64 value"));
        case F32: { char b[32]; std::snprintf(b, sizeof b, "%.9g", c.read<float>("f32 value")); return b; }
        case F64: { char b[32]; std::snprintf(b, sizeof b, "%.17g", c.read<double>("f64 value")); return b; }
        case BOOL: return c.read<uint8_t>("bool value") ? "true" : "false";
        case STRING: { std::string s = c.str("string value"); return quote_strings ? json_quote(s) : s; }
        case ARRAY: {
            if (depth > 4) throw_format(path, "GGUF arrays nested too deeply");
            uint32_t item_type = c.read<uint32_t>("array type");
            uint64_t n = c.read<uint64_t>("array length");
            if (item_type >= GGUF_TYPE_END) throw_format(path, "GGUF array of unknown type " + std::to_string(item_type));
            static const uint64_t fixed[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
            std::string out = "[";
            if (fixed[item_type] != 0) {
                // Fixed-size items: bounds-check the whole array at once, render a prefix.
                uint64_t bytes = 0;
                if (!mul_ok(n, fixed[item_type], bytes)) throw_format(path, "GGUF array length overflows");
                c.need(bytes, "array data");
                uint64_t end = c.pos() + bytes;
                for (uint64_t i = 0; i < n && i < kMaxRendered; ++i) out += (i ? "," : "") + gguf_value(c, item_type, path, depth + 1, true);
                c.skip(end - c.pos(), "array data");
            } else {
                for (uint64_t i = 0; i < n; ++i) {
                    std::string item = gguf_value(c, item_type, path, depth + 1, true);
                    if (i < kMaxRendered) out += (i ? "," : "") + item;
                }
            }
            if (n > kMaxRendered) out += ",\"... " + std::to_string(n) + " items\"";
            return out + "]";
        }
        default: throw_format(path, "GGUF value of unknown type " + std::to_string(type));
    }
}

void read_gguf(const FilePtr & file, ModelFile & out) {
    const std::string & path = file->path();
    Cursor c(file, 0);
    c.skip(4, "magic");
    uint32_t version = c.read<uint32_t>("version");
    if (version != 2 && version != 3) throw_unsupported(path, "GGUF version " + std::to_string(version) + "; versions 2 and 3 are read");
    uint64_t n_tensors = c.read<uint64_t>("tensor count");
    uint64_t n_kv = c.read<uint64_t>("key/value count");
    // Each tensor info and key/value takes at least 8+4 bytes: counts beyond that are corrupt.
    if (n_tensors > file->size() / 12 || n_kv > file->size() / 12) {
        throw_format(path, "GGUF claims " + std::to_string(n_tensors) + " tensors and " + std::to_string(n_kv) +
                               " key/values, more than the file could hold");
    }
    uint64_t alignment = 32;
    for (uint64_t i = 0; i < n_kv; ++i) {
        std::string key = c.str("key");
        uint32_t type = c.read<uint32_t>("value type");
        if (key == "general.alignment" && type == U32) {
            uint64_t at = c.pos();
            alignment = c.read<uint32_t>("alignment");
            if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > 65536) {
                throw_format(path, "general.alignment is " + std::to_string(alignment) + "; expected a power of two");
            }
            Cursor again(file, at);
            out.metadata.emplace_back(key, gguf_value(again, type, path, 0, false));
            continue;
        }
        out.metadata.emplace_back(key, gguf_value(c, type, path, 0, false));
    }
    struct Info {
        TensorRecord r;
        uint64_t rel;
    };
    std::vector<Info> infos;
    infos.reserve(static_cast<size_t>(n_tensors));
    for (uint64_t i = 0; i < n_tensors; ++i) {
        Info info;
        info.r.name = c.str("tensor name");
        uint32_t n_dims = c.read<uint32_t>("tensor dimensions");
        if (n_dims == 0 || n_dims > 4) throw_format(path, "tensor '" + info.r.name + "' has " + std::to_string(n_dims) + " dimensions; expected 1 to 4");
        int64_t ne[4] = {1, 1, 1, 1};
        for (uint32_t d = 0; d < n_dims; ++d) {
            uint64_t v = c.read<uint64_t>("tensor dimension");
            if (v > (1ull << 40)) throw_format(path, "tensor '" + info.r.name + "' dimension " + std::to_string(v) + " is absurd");
            ne[d] = static_cast<int64_t>(v);
        }
        uint32_t type = c.read<uint32_t>("tensor type");
        if (type >= GGML_TYPE_COUNT || ggml_blck_size(static_cast<ggml_type>(type)) == 0 ||
            ggml_type_size(static_cast<ggml_type>(type)) == 0) {
            throw_unsupported(path, "tensor '" + info.r.name + "' has ggml type " + std::to_string(type) + ", which this ggml does not know");
        }
        const ggml_type gt = static_cast<ggml_type>(type);
        info.rel = c.read<uint64_t>("tensor offset");
        if (ne[0] % ggml_blck_size(gt) != 0) {
            throw_format(path, "tensor '" + info.r.name + "' row length " + std::to_string(ne[0]) + " is not a multiple of the " +
                                   ggml_type_name(gt) + " block size " + std::to_string(ggml_blck_size(gt)));
        }
        for (int d = static_cast<int>(n_dims) - 1; d >= 0; --d) info.r.shape.push_back(ne[d]);
        info.r.type = gt;
        info.r.dtype = gt == GGML_TYPE_F32 ? DType::F32 : gt == GGML_TYPE_F16 ? DType::F16 : gt == GGML_TYPE_BF16 ? DType::BF16 : DType::Ggml;
        uint64_t rows = 1, bytes = 0;
        for (int d = 1; d < 4; ++d) {
            if (!mul_ok(rows, static_cast<uint64_t>(ne[d]), rows)) throw_format(path, "tensor '" + info.r.name + "' size overflows");
        }
        if (!mul_ok(static_cast<uint64_t>(ggml_row_size(gt, ne[0])), rows, bytes)) throw_format(path, "tensor '" + info.r.name + "' size overflows");
        info.r.nbytes = bytes;
        info.r.file = file;
        infos.push_back(std::move(info));
    }
    uint64_t data_start = (c.pos() + alignment - 1) / alignment * alignment;
    for (auto & info : infos) {
        uint64_t begin = 0, end = 0;
        if (!add_ok(data_start, info.rel, begin) || !add_ok(begin, info.r.nbytes, end) || end > file->size()) {
            throw_format(path, "tensor '" + info.r.name + "' (" + std::to_string(info.r.nbytes) + " bytes at data offset " +
                                   std::to_string(info.rel) + ") runs past the end of the file (" + std::to_string(file->size()) +
                                   " bytes): truncated?");
        }
        info.r.offset = begin;
        out.tensors.push_back(std::move(info.r));
    }
}

// ---------------------------------------------------------------- zip

struct ZipEntry {
    std::string name;
    uint16_t method = 0;
    uint64_t data_offset = 0;  // resolved from the local header
    uint64_t size = 0;         // uncompressed == compressed for STORED
};

std::map<std::string, ZipEntry> read_zip(const FilePtr & file) {
    const std::string & path = file->path();
    const uint8_t * d = file->data();
    const uint64_t size = file->size();
    auto u16 = [&](uint64_t at) { uint16_t v; std::memcpy(&v, d + at, 2); return v; };
    auto u32 = [&](uint64_t at) { uint32_t v; std::memcpy(&v, d + at, 4); return v; };
    auto u64 = [&](uint64_t at) { uint64_t v; std::memcpy(&v, d + at, 8); return v; };
    if (size < 22) throw_format(path, "zip archive is truncated (no end of central directory)");
    // The end-of-central-directory record is in the last 64 KiB + 22 bytes (comment up to 64 KiB).
    uint64_t eocd = UINT64_MAX;
    for (uint64_t p = size - 22 + 1; p-- > 0 && size - p <= 65557;) {
        if (u32(p) == 0x06054b50) { eocd = p; break; }
    }
    if (eocd == UINT64_MAX) throw_format(path, "not a complete zip archive: end of central directory not found (truncated?)");
    uint64_t count = u16(eocd + 10), cd_size = u32(eocd + 12), cd_offset = u32(eocd + 16);
    if ((count == 0xFFFF || cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF) && eocd >= 20 && u32(eocd - 20) == 0x07064b50) {
        uint64_t z64 = u64(eocd - 20 + 8);
        if (z64 > size - 56 || size < 56 || u32(z64) != 0x06064b50) throw_format(path, "zip64 end of central directory is corrupt");
        count = u64(z64 + 32);
        cd_size = u64(z64 + 40);
        cd_offset = u64(z64 + 48);
    }
    uint64_t cd_end = 0;
    if (!add_ok(cd_offset, cd_size, cd_end) || cd_end > size) throw_format(path, "zip central directory lies outside the file");
    if (count > cd_size / 46) throw_format(path, "zip central directory claims " + std::to_string(count) + " entries, more than it can hold");
    std::map<std::string, ZipEntry> entries;
    uint64_t p = cd_offset;
    for (uint64_t i = 0; i < count; ++i) {
        if (p > cd_end || cd_end - p < 46 || u32(p) != 0x02014b50) throw_format(path, "zip central directory entry " + std::to_string(i) + " is corrupt");
        ZipEntry e;
        e.method = u16(p + 10);
        uint64_t csize = u32(p + 20), usize = u32(p + 24);
        uint16_t name_len = u16(p + 28), extra_len = u16(p + 30), comment_len = u16(p + 32);
        uint64_t local = u32(p + 42);
        if (cd_end - p - 46 < uint64_t(name_len) + extra_len + comment_len) throw_format(path, "zip central directory entry " + std::to_string(i) + " is truncated");
        e.name.assign(reinterpret_cast<const char *>(d + p + 46), name_len);
        // zip64 extra field: present values replace the 0xFFFFFFFF placeholders, in order.
        for (uint64_t x = p + 46 + name_len, xe = x + extra_len; x + 4 <= xe;) {
            uint16_t id = u16(x), len = u16(x + 2);
            if (x + 4 + len > xe) break;
            if (id == 0x0001) {
                uint64_t q = x + 4, qe = q + len;
                if (usize == 0xFFFFFFFF && q + 8 <= qe) { usize = u64(q); q += 8; }
                if (csize == 0xFFFFFFFF && q + 8 <= qe) { csize = u64(q); q += 8; }
                if (local == 0xFFFFFFFF && q + 8 <= qe) { local = u64(q); q += 8; }
            }
            x += 4 + len;
        }
        if (local > size || size - local < 30 || u32(local) != 0x04034b50) throw_format(path, "zip local header of '" + e.name + "' is corrupt");
        uint64_t data = local + 30 + u16(local + 26) + u16(local + 28);
        uint64_t data_end = 0;
        if (!add_ok(data, csize, data_end) || data_end > size) {
            throw_format(path, "zip entry '" + e.name + "' (" + std::to_string(csize) + " bytes) runs past the end of the file: truncated?");
        }
        if (e.method == 0 && csize != usize) throw_format(path, "zip entry '" + e.name + "' is stored but its sizes differ");
        e.data_offset = data;
        e.size = e.method == 0 ? usize : csize;
        entries[e.name] = e;
        p += 46 + name_len + extra_len + comment_len;
    }
    return entries;
}

// ---------------------------------------------------------------- restricted unpickler

struct PyObj;
using PyRef = std::shared_ptr<PyObj>;

struct PyObj {
    enum class Kind { None, Bool, Int, Float, Str, Tuple, List, Dict, Global, Storage, Tensor, Opaque, Mark } kind = Kind::None;
    int64_t i = 0;
    double f = 0;
    std::string s;  // Str; Global "module.name"; Storage key
    std::vector<PyRef> items;                          // Tuple, List
    std::vector<std::pair<PyRef, PyRef>> dict;         // Dict
    DType dtype = DType::F32;                          // Storage, Tensor
    PyRef storage;                                     // Tensor
    int64_t storage_offset = 0;                        // Tensor (elements)
    std::vector<int64_t> shape, stride;                // Tensor
};

PyRef make(PyObj::Kind k) {
    auto o = std::make_shared<PyObj>();
    o->kind = k;
    return o;
}

bool storage_dtype(const std::string & global, DType & d) {
    static const std::map<std::string, DType> table = {
        {"torch.FloatStorage", DType::F32}, {"torch.HalfStorage", DType::F16},  {"torch.BFloat16Storage", DType::BF16},
        {"torch.DoubleStorage", DType::F64}, {"torch.LongStorage", DType::I64}, {"torch.IntStorage", DType::I32},
        {"torch.ShortStorage", DType::I16}, {"torch.CharStorage", DType::I8},   {"torch.ByteStorage", DType::U8},
        {"torch.BoolStorage", DType::Bool},
    };
    auto it = table.find(global);
    if (it == table.end()) return false;
    d = it->second;
    return true;
}

// Training state some checkpoints carry next to the weights: never constructed, kept opaque.
bool opaque_global(const std::string & g) {
    return starts_with(g, "pytorch_lightning.") || starts_with(g, "lightning.") || g == "torch.torch_version.TorchVersion" ||
           g == "numpy.core.multiarray.scalar" || g == "numpy._core.multiarray.scalar" || g == "numpy.dtype" ||
           g == "_codecs.encode" || g == "builtins.set" || g == "__builtin__.set" || g == "argparse.Namespace" ||
           g == "builtins.slice" || g == "torch.device";
}

bool allowed_global(const std::string & g) {
    DType d;
    return g == "collections.OrderedDict" || g == "torch._utils._rebuild_tensor_v2" || g == "torch._utils._rebuild_tensor" ||
           g == "torch._utils._rebuild_parameter" || g == "torch.nn.parameter.Parameter" || storage_dtype(g, d) || opaque_global(g);
}

class Unpickler {
public:
    Unpickler(const std::string & path, const uint8_t * data, uint64_t size) : path_(path), p_(data), end_(data + size) {}

    PyRef run() {
        for (size_t ops = 0;; ++ops) {
            if (ops > 50'000'000) fail("too many opcodes");
            uint8_t op = byte();
            switch (op) {
                case 0x80: byte(); break;                                  // PROTO
                case 0x95: bytes(8); break;                                // FRAME
                case '}': push(make(PyObj::Kind::Dict)); break;            // EMPTY_DICT
                case ']': push(make(PyObj::Kind::List)); break;            // EMPTY_LIST
                case ')': push(make(PyObj::Kind::Tuple)); break;           // EMPTY_TUPLE
                case '(': push(make(PyObj::Kind::Mark)); break;            // MARK
                case 'N': push(make(PyObj::Kind::None)); break;
                case 0x88: case 0x89: { auto b = make(PyObj::Kind::Bool); b->i = op == 0x88; push(b); break; }
                case 'J': { int32_t v; std::memcpy(&v, bytes(4), 4); push_int(v); break; }
                case 'K': push_int(byte()); break;
                case 'M': { uint16_t v; std::memcpy(&v, bytes(2), 2); push_int(v); break; }
                case 0x8a: {                                               // LONG1
                    uint8_t n = byte();
                    const uint8_t * b = bytes(n);
                    if (n > 8) { push(make(PyObj::Kind::Opaque)); break; }
                    uint64_t v = 0;
                    for (int k = n - 1; k >= 0; --k) v = (v << 8) | b[k];
                    if (n > 0 && n < 8 && (b[n - 1] & 0x80)) v |= ~0ull << (8 * n);  // sign-extend
                    push_int(static_cast<int64_t>(v));
                    break;
                }
                case 'G': {                                                // BINFLOAT (big-endian)
                    const uint8_t * b = bytes(8);
                    uint64_t bits = 0;
                    for (int k = 0; k < 8; ++k) bits = (bits << 8) | b[k];
                    auto o = make(PyObj::Kind::Float);
                    std::memcpy(&o->f, &bits, 8);
                    push(o);
                    break;
                }
                case 'X': { uint32_t n; std::memcpy(&n, bytes(4), 4); push_str(n); break; }          // BINUNICODE
                case 0x8c: push_str(byte()); break;                                                 // SHORT_BINUNICODE
                case 0x8d: { uint64_t n; std::memcpy(&n, bytes(8), 8); push_str(n); break; }        // BINUNICODE8
                case 'T': { uint32_t n; std::memcpy(&n, bytes(4), 4); push_str(n); break; }         // BINSTRING
                case 'U': push_str(byte()); break;                                                  // SHORT_BINSTRING
                case 'B': { uint32_t n; std::memcpy(&n, bytes(4), 4); bytes(n); push(make(PyObj::Kind::Opaque)); break; }  // BINBYTES
                case 'C': { bytes(byte()); push(make(PyObj::Kind::Opaque)); break; }                // SHORT_BINBYTES
                case 0x85: tuple_of(1); break;
                case 0x86: tuple_of(2); break;
                case 0x87: tuple_of(3); break;
                case 't': { auto items = pop_mark(); auto t = make(PyObj::Kind::Tuple); t->items = std::move(items); push(t); break; }
                case 'l': { auto items = pop_mark(); auto l = make(PyObj::Kind::List); l->items = std::move(items); push(l); break; }
                case 'd': {
                    auto items = pop_mark();
                    auto dct = make(PyObj::Kind::Dict);
                    if (items.size() % 2) fail("DICT with an odd number of items");
                    for (size_t k = 0; k + 1 < items.size(); k += 2) dct->dict.emplace_back(items[k], items[k + 1]);
                    push(dct);
                    break;
                }
                case 's': { auto v = pop(); auto k = pop(); auto dct = top(); set_item(dct, k, v); break; }
                case 'u': {
                    auto items = pop_mark();
                    auto dct = top();
                    if (items.size() % 2) fail("SETITEMS with an odd number of items");
                    for (size_t k = 0; k + 1 < items.size(); k += 2) set_item(dct, items[k], items[k + 1]);
                    break;
                }
                case 'a': { auto v = pop(); append(top(), v); break; }
                case 'e': { auto items = pop_mark(); auto l = top(); for (auto & v : items) append(l, v); break; }
                case 'q': memo_put(byte()); break;
                case 'r': { uint32_t n; std::memcpy(&n, bytes(4), 4); memo_put(n); break; }
                case 0x94: memo_put(static_cast<uint32_t>(memo_.size())); break;                    // MEMOIZE
                case 'h': memo_get(byte()); break;
                case 'j': { uint32_t n; std::memcpy(&n, bytes(4), 4); memo_get(n); break; }
                case '0': pop(); break;                                                             // POP
                case '1': pop_mark(); break;                                                        // POP_MARK
                case '2': push(top()); break;                                                       // DUP
                case 'c': {                                                                         // GLOBAL
                    std::string module = line(), name = line();
                    push(global(module + "." + name));
                    break;
                }
                case 0x93: {                                                                        // STACK_GLOBAL
                    auto name = pop(), module = pop();
                    if (name->kind != PyObj::Kind::Str || module->kind != PyObj::Kind::Str) fail("STACK_GLOBAL needs two strings");
                    push(global(module->s + "." + name->s));
                    break;
                }
                case 'R': { auto args = pop(); auto fn = pop(); push(reduce(fn, args)); break; }   // REDUCE
                case 0x81: { auto args = pop(); auto cls = pop(); push(reduce(cls, args)); break; } // NEWOBJ
                case 'b': pop(); break;  // BUILD: state of an object we keep opaque or a dict's attributes; ignored
                case 'Q': { auto pid = pop(); push(persistent(pid)); break; }                       // BINPERSID
                case '.': return pop();                                                             // STOP
                default: {
                    char hex[8];
                    std::snprintf(hex, sizeof hex, "0x%02x", op);
                    fail(std::string("unsupported pickle opcode ") + hex);
                }
            }
        }
    }

private:
    [[noreturn]] void fail(const std::string & what) const { throw_format(path_, "data.pkl: " + what); }

    uint8_t byte() {
        if (p_ >= end_) fail("truncated");
        return *p_++;
    }
    const uint8_t * bytes(uint64_t n) {
        if (static_cast<uint64_t>(end_ - p_) < n) fail("truncated");
        const uint8_t * b = p_;
        p_ += n;
        return b;
    }
    std::string line() {
        const uint8_t * nl = static_cast<const uint8_t *>(std::memchr(p_, '\n', static_cast<size_t>(end_ - p_)));
        if (!nl || nl - p_ > 256) fail("bad GLOBAL");
        std::string s(reinterpret_cast<const char *>(p_), static_cast<size_t>(nl - p_));
        p_ = nl + 1;
        return s;
    }
    void push(PyRef o) {
        if (stack_.size() > 1'000'000) fail("stack too deep");
        stack_.push_back(std::move(o));
    }
    void push_int(int64_t v) { auto o = make(PyObj::Kind::Int); o->i = v; push(o); }
    void push_str(uint64_t n) { auto o = make(PyObj::Kind::Str); const uint8_t * b = bytes(n); o->s.assign(reinterpret_cast<const char *>(b), n); push(o); }
    PyRef pop() {
        if (stack_.empty() || stack_.back()->kind == PyObj::Kind::Mark) fail("stack underflow");
        PyRef o = stack_.back();
        stack_.pop_back();
        return o;
    }
    PyRef top() {
        if (stack_.empty()) fail("stack underflow");
        return stack_.back();
    }
    std::vector<PyRef> pop_mark() {
        for (size_t k = stack_.size(); k-- > 0;) {
            if (stack_[k]->kind == PyObj::Kind::Mark) {
                std::vector<PyRef> items(stack_.begin() + static_cast<ptrdiff_t>(k) + 1, stack_.end());
                stack_.resize(k);
                return items;
            }
        }
        fail("MARK not found");
    }
    void tuple_of(size_t n) {
        auto t = make(PyObj::Kind::Tuple);
        t->items.resize(n);
        for (size_t k = n; k-- > 0;) t->items[k] = pop();
        push(t);
    }
    void set_item(const PyRef & dct, const PyRef & k, const PyRef & v) {
        if (dct->kind == PyObj::Kind::Dict) dct->dict.emplace_back(k, v);
        else if (dct->kind != PyObj::Kind::Opaque) fail("SETITEM on a non-dict");
    }
    void append(const PyRef & l, const PyRef & v) {
        if (l->kind == PyObj::Kind::List) l->items.push_back(v);
        else if (l->kind != PyObj::Kind::Opaque) fail("APPEND on a non-list");
    }
    void memo_put(uint32_t k) {
        if (stack_.empty()) fail("memo of an empty stack");
        if (memo_.size() > 10'000'000) fail("memo too large");
        memo_[k] = stack_.back();
    }
    void memo_get(uint32_t k) {
        auto it = memo_.find(k);
        if (it == memo_.end()) fail("memo key " + std::to_string(k) + " not found");
        push(it->second);
    }
    PyRef global(const std::string & name) {
        if (!allowed_global(name)) {
            fail("pickle asks for global " + name + "; only tensor rebuilding and plain containers are allowed (nothing in a model file is executed)");
        }
        auto g = make(PyObj::Kind::Global);
        g->s = name;
        return g;
    }
    PyRef reduce(const PyRef & fn, const PyRef & args) {
        if (fn->kind != PyObj::Kind::Global) fail("call of a non-global");
        const std::string & g = fn->s;
        if (opaque_global(g)) return make(PyObj::Kind::Opaque);
        if (args->kind != PyObj::Kind::Tuple) fail("call arguments are not a tuple");
        const auto & a = args->items;
        if (g == "collections.OrderedDict") return make(PyObj::Kind::Dict);
        if (g == "torch._utils._rebuild_parameter" || g == "torch.nn.parameter.Parameter") {
            if (a.empty() || a[0]->kind != PyObj::Kind::Tensor) fail(g + " without a tensor");
            return a[0];
        }
        if (g == "torch._utils._rebuild_tensor_v2" || g == "torch._utils._rebuild_tensor") {
            if (a.size() < 4 || a[0]->kind != PyObj::Kind::Storage || a[1]->kind != PyObj::Kind::Int ||
                a[2]->kind != PyObj::Kind::Tuple || a[3]->kind != PyObj::Kind::Tuple || a[2]->items.size() != a[3]->items.size() ||
                a[2]->items.size() > 8) {
                fail(g + " with unexpected arguments");
            }
            auto t = make(PyObj::Kind::Tensor);
            t->storage = a[0];
            t->dtype = a[0]->dtype;
            t->storage_offset = a[1]->i;
            for (size_t k = 0; k < a[2]->items.size(); ++k) {
                if (a[2]->items[k]->kind != PyObj::Kind::Int || a[3]->items[k]->kind != PyObj::Kind::Int) fail("tensor size/stride is not integers");
                t->shape.push_back(a[2]->items[k]->i);
                t->stride.push_back(a[3]->items[k]->i);
            }
            return t;
        }
        fail("global " + g + " cannot be called here");
    }
    PyRef persistent(const PyRef & pid) {
        // ('storage', <storage class>, key, location, numel)
        if (pid->kind != PyObj::Kind::Tuple || pid->items.size() < 3 || pid->items[0]->kind != PyObj::Kind::Str ||
            pid->items[0]->s != "storage" || pid->items[1]->kind != PyObj::Kind::Global || pid->items[2]->kind != PyObj::Kind::Str) {
            fail("unexpected persistent id");
        }
        auto st = make(PyObj::Kind::Storage);
        if (!storage_dtype(pid->items[1]->s, st->dtype)) fail("unsupported storage type " + pid->items[1]->s);
        st->s = pid->items[2]->s;
        return st;
    }

    std::string path_;
    const uint8_t * p_;
    const uint8_t * end_;
    std::vector<PyRef> stack_;
    std::map<uint32_t, PyRef> memo_;
};

const PyRef * dict_get(const PyRef & dct, const char * key) {
    for (const auto & [k, v] : dct->dict) {
        if (k->kind == PyObj::Kind::Str && k->s == key) return &v;
    }
    return nullptr;
}

void read_torch_zip(const FilePtr & file, ModelFile & out) {
    const std::string & path = file->path();
    auto entries = read_zip(file);
    const ZipEntry * pkl = nullptr;
    for (const auto & [name, e] : entries) {
        if (name == "data.pkl" || ends_with(name, "/data.pkl")) {
            if (pkl) throw_format(path, "zip holds more than one data.pkl");
            pkl = &e;
        }
    }
    if (!pkl) throw_format(path, "zip archive has no data.pkl: not a PyTorch checkpoint");
    if (pkl->method != 0) throw_unsupported(path, "data.pkl is compressed (zip method " + std::to_string(pkl->method) + "); PyTorch writes it uncompressed");
    const std::string prefix = pkl->name.substr(0, pkl->name.size() - std::string("data.pkl").size());
    PyRef root = Unpickler(path, file->data() + pkl->data_offset, pkl->size).run();
    if (root->kind != PyObj::Kind::Dict) throw_format(path, "data.pkl does not hold a dict of tensors");
    for (const char * wrapper : {"state_dict", "model"}) {
        if (const PyRef * inner = dict_get(root, wrapper); inner && (*inner)->kind == PyObj::Kind::Dict) {
            root = *inner;
            break;
        }
    }
    std::set<std::string> names;
    std::function<void(const PyRef &, const std::string &, int)> walk = [&](const PyRef & dct, const std::string & at, int depth) {
        if (depth > 8) return;
        for (const auto & [k, v] : dct->dict) {
            if (k->kind != PyObj::Kind::Str) continue;
            const std::string name = at.empty() ? k->s : at + "." + k->s;
            if (v->kind == PyObj::Kind::Dict) {
                walk(v, name, depth + 1);
                continue;
            }
            if (v->kind != PyObj::Kind::Tensor) continue;
            auto it = entries.find(prefix + "data/" + v->storage->s);
            if (it == entries.end()) throw_format(path, "tensor '" + name + "' refers to storage " + v->storage->s + ", which the archive lacks");
            const ZipEntry & e = it->second;
            if (e.method != 0) throw_unsupported(path, "storage of tensor '" + name + "' is compressed; PyTorch stores tensors uncompressed");
            TensorRecord r;
            r.name = name;
            r.dtype = v->dtype;
            r.type = float_ggml_type(v->dtype);
            r.shape = v->shape;
            r.file = file;
            // Only contiguous views: strides must be the row-major strides of the shape.
            int64_t expect = 1;
            for (size_t d = r.shape.size(); d-- > 0;) {
                if (r.shape[d] < 0) throw_format(path, "tensor '" + name + "' has a negative dimension");
                if (r.shape[d] != 1 && v->stride[d] != expect) {
                    throw_unsupported(path, "tensor '" + name + "' is a non-contiguous view (shape " + shape_text(r.shape) + ", strides " +
                                                shape_text(v->stride) + ")");
                }
                if (r.shape[d] != 0 && expect > (int64_t(1) << 50) / r.shape[d]) throw_format(path, "tensor '" + name + "' is too large");
                expect *= r.shape[d];
            }
            const uint64_t elsize = dtype_size(r.dtype);
            uint64_t bytes = 0, start = 0, end = 0;
            if (v->storage_offset < 0 || !shape_bytes(r.shape, elsize, bytes) ||
                !mul_ok(static_cast<uint64_t>(v->storage_offset), elsize, start) || !add_ok(start, bytes, end) || end > e.size) {
                throw_format(path, "tensor '" + name + "' (" + std::to_string(bytes) + " bytes at element " + std::to_string(v->storage_offset) +
                                       ") lies outside its storage (" + std::to_string(e.size) + " bytes)");
            }
            r.offset = e.data_offset + start;
            r.nbytes = bytes;
            if (!names.insert(name).second) throw_format(path, "tensor '" + name + "' appears twice");
            out.tensors.push_back(std::move(r));
        }
    };
    walk(root, "", 0);
    if (out.tensors.empty()) throw_format(path, "data.pkl holds no tensors");
}

// ---------------------------------------------------------------- dispatch

enum class Kind { Safetensors, SafetensorsIndex, Gguf, TorchZip, Unknown };

Kind sniff(const std::string & path, const MappedFile & f) {
    const uint8_t * d = f.data();
    if (f.size() >= 4 && std::memcmp(d, "GGUF", 4) == 0) return Kind::Gguf;
    if (f.size() >= 4 && std::memcmp(d, "PK\x03\x04", 4) == 0) return Kind::TorchZip;
    if (ends_with(path, ".index.json")) return Kind::SafetensorsIndex;
    if (f.size() >= 1 && d[0] == '{') return Kind::SafetensorsIndex;  // a JSON file: only an index is accepted
    if (f.size() >= 9 && d[8] == '{') return Kind::Safetensors;
    return Kind::Unknown;
}

ModelFile open_file(const std::string & path) {
    ModelFile out;
    out.path = path;
    auto file = std::make_shared<const MappedFile>(path);
    switch (sniff(path, *file)) {
        case Kind::Gguf: out.format = "gguf"; read_gguf(file, out); break;
        case Kind::TorchZip: out.format = "torch"; read_torch_zip(file, out); break;
        case Kind::SafetensorsIndex: out.format = "safetensors"; read_safetensors_index(path, out); return out;
        case Kind::Safetensors: out.format = "safetensors"; read_safetensors(file, out); break;
        case Kind::Unknown:
            throw_format(path, file->size() == 0 ? "file is empty"
                                                 : "unrecognized format; expected safetensors, GGUF, a PyTorch zip checkpoint "
                                                   "(.ckpt/.pt/.pth), a *.safetensors.index.json or a diffusers folder");
    }
    out.files.push_back(file);
    return out;
}

const char * const kComponents[] = {"unet", "vae", "text_encoder", "text_encoder_2"};
const char * const kWeightFiles[] = {
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors.index.json",
    "model.fp16.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
    "pytorch_model.fp16.bin",
};

std::string read_text(const fs::path & p) {
    MappedFile f(p.string());
    if (f.size() > (16u << 20)) throw_format(p.string(), "config file is larger than 16 MiB");
    return std::string(reinterpret_cast<const char *>(f.data()), f.size());
}

ModelFile open_diffusers(const std::string & dir) {
    ModelFile out;
    out.path = dir;
    out.format = "diffusers";
    const fs::path root(dir);
    std::error_code ec;
    if (fs::is_regular_file(root / "model_index.json", ec)) out.metadata.emplace_back("model_index.json", read_text(root / "model_index.json"));
    if (fs::is_regular_file(root / "scheduler" / "scheduler_config.json", ec)) {
        out.metadata.emplace_back("scheduler/scheduler_config.json", read_text(root / "scheduler" / "scheduler_config.json"));
    }
    for (const char * component : kComponents) {
        const fs::path sub = root / component;
        if (!fs::is_directory(sub, ec)) continue;
        const char * found = nullptr;
        for (const char * candidate : kWeightFiles) {
            if (fs::is_regular_file(sub / candidate, ec)) { found = candidate; break; }
        }
        if (!found) throw_format(sub.string(), std::string("diffusers ") + component + "/ folder has no weights (e.g. diffusion_pytorch_model.safetensors or model.safetensors)");
        ModelFile part = open_file((sub / found).string());
        for (auto & t : part.tensors) {
            t.name = std::string(component) + "/" + t.name;
            out.tensors.push_back(std::move(t));
        }
        for (auto & f : part.files) out.files.push_back(f);
        for (auto & kv : part.metadata) {
            if (!out.meta(kv.first)) out.metadata.push_back(std::move(kv));
        }
        if (fs::is_regular_file(sub / "config.json", ec)) out.metadata.emplace_back(std::string(component) + "/config.json", read_text(sub / "config.json"));
    }
    if (out.tensors.empty()) {
        throw_format(dir, "no unet/, vae/, text_encoder/ or text_encoder_2/ weights found in this folder (expected a diffusers model folder)");
    }
    return out;
}

}  // namespace

ModelFile open_model_file(const std::string & path) {
    std::error_code ec;
    fs::file_status st = fs::status(path, ec);
    if (ec || !fs::exists(st)) throw Error(ErrorCode::Io, path + ": no such file or folder", path);
    ModelFile out = fs::is_directory(st) ? open_diffusers(path) : open_file(path);
    std::set<std::string> names;
    for (const auto & t : out.tensors) {
        if (!names.insert(t.name).second) throw_format(path, "tensor '" + t.name + "' is stored twice");
    }
    return out;
}

}  // namespace sd
