// GGUF v2/v3, parsed on the mapped bytes (ggml's own loader asserts on some bad input).
//   "GGUF" u32 version, i64 tensor count, i64 kv count,
//   kv:     string key, i32 type, value (arrays: i32 element type, u64 count, elements)
//   tensor: string name, u32 n_dims, i64 ne[n_dims], i32 ggml type, u64 offset
//   padding to `general.alignment` (default 32), then the data section the offsets point into.
// Strings are u64 length + bytes. Values are little-endian.
#include <cstdio>

#include "core/json.h"
#include "io/model-file-internal.h"

namespace sd {
namespace detail {

namespace {

enum GgufType : int32_t {
    kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
    kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12, kTypeCount = 13,
};

constexpr uint64_t kMaxKeyLen = 64 * 1024;        // keys and tensor names; real ones are < 200 bytes
constexpr int kMaxArrayDepth = 8;                 // arrays of arrays of ...
constexpr uint64_t kRenderItems = 64;             // arrays longer than this render as a summary
constexpr size_t kRenderChars = 64 * 1024;        // ... as do arrays whose text grows past this

uint64_t scalar_size(int32_t type) {
    switch (type) {
        case kU8: case kI8: case kBool: return 1;
        case kU16: case kI16: return 2;
        case kU32: case kI32: case kF32: return 4;
        case kU64: case kI64: case kF64: return 8;
        default: return 0;
    }
}

const char * type_name(int32_t type) {
    static const char * names[] = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
                                   "bool", "string", "array", "uint64", "int64", "float64"};
    return type >= 0 && type < kTypeCount ? names[type] : "invalid";
}

class GgufParser {
public:
    explicit GgufParser(const MappedFile & file) : path_(file.path()), r_(file.data(), file.size(), path_) {}

    std::string read_string(const char * what, uint64_t max_len) {
        uint64_t len = r_.read<uint64_t>(what);
        if (len > max_len)
            throw_format(path_, std::string(what) + " at offset " + std::to_string(r_.pos() - 8) + " claims " +
                                    std::to_string(len) + " bytes; " +
                                    (max_len == r_.remaining() ? "only " + std::to_string(max_len) + " remain (truncated or corrupt)"
                                                               : "the limit is " + std::to_string(max_len)));
        return r_.read_bytes(len, what);
    }

    // Renders one scalar value as text (strings raw when `quote` is false, JSON-quoted inside arrays).
    std::string read_scalar(int32_t type, bool quote, const std::string & key) {
        char buf[64];
        switch (type) {
            case kU8: std::snprintf(buf, sizeof buf, "%u", unsigned(r_.read<uint8_t>("value"))); break;
            case kI8: std::snprintf(buf, sizeof buf, "%d", int(r_.read<int8_t>("value"))); break;
            case kU16: std::snprintf(buf, sizeof buf, "%u", unsigned(r_.read<uint16_t>("value"))); break;
            case kI16: std::snprintf(buf, sizeof buf, "%d", int(r_.read<int16_t>("value"))); break;
            case kU32: std::snprintf(buf, sizeof buf, "%lu", (unsigned long)r_.read<uint32_t>("value")); break;
            case kI32: std::snprintf(buf, sizeof buf, "%ld", (long)r_.read<int32_t>("value")); break;
            case kU64: std::snprintf(buf, sizeof buf, "%llu", (unsigned long long)r_.read<uint64_t>("value")); break;
            case kI64: std::snprintf(buf, sizeof buf, "%lld", (long long)r_.read<int64_t>("value")); break;
            case kF32: case kF64: {
                double v = type == kF32 ? double(r_.read<float>("value")) : r_.read<double>("value");
                std::string text = format_number(v, type == kF32 ? 9 : 17);
                if (quote && !is_json_number(text)) return "null";  // nan/inf inside a JSON array
                return text;
            }
            case kBool: {
                uint8_t b = r_.read<uint8_t>("value");
                if (b > 1) throw_format(path_, "key '" + key + "': bool value " + std::to_string(b) + ", expected 0 or 1");
                return b ? "true" : "false";
            }
            case kString: {
                std::string s = read_string("string value", r_.remaining());
                return quote ? json_quote(s) : s;
            }
            default:
                throw_format(path_, "key '" + key + "' has value type " + std::to_string(type) + ", expected 0..12");
        }
        return buf;
    }

    static bool is_json_number(const std::string & s) { return !s.empty() && s.back() >= '0' && s.back() <= '9'; }

    // Array body (after the array marker): element type, count, elements. Rendered as a JSON
    // array, or, when long, {"type": ..., "count": n, "head": [first items]}. Every element is
    // still walked (bounds-checked) to find where the array ends.
    std::string read_array(const std::string & key, int depth) {
        if (depth > kMaxArrayDepth) throw_format(path_, "key '" + key + "': arrays nested deeper than " + std::to_string(kMaxArrayDepth));
        int32_t type = r_.read<int32_t>("array type");
        uint64_t count = r_.read<uint64_t>("array length");
        if (type < 0 || type >= kTypeCount)
            throw_format(path_, "key '" + key + "': array element type " + std::to_string(type) + ", expected 0..12");
        // Every element takes at least this many bytes, so a count beyond remaining/min is a lie.
        uint64_t min_size = type == kString ? 8 : type == kArray ? 12 : scalar_size(type);
        if (count > r_.remaining() / min_size)
            throw_format(path_, "key '" + key + "': array of " + std::to_string(count) + " " + type_name(type) +
                                    " runs past the end of the file");
        std::string head = "[";
        uint64_t shown = 0;
        bool capped = false;
        for (uint64_t i = 0; i < count; ++i) {
            if (type == kArray) {  // each element is itself an array body: type, count, elements
                std::string text = read_array(key, depth + 1);
                if (!capped) append_item(head, text, shown, capped, count);
            } else if (type == kString) {
                std::string s = read_string("array string", r_.remaining());
                if (!capped) append_item(head, json_quote(s), shown, capped, count);
            } else if (!capped) {
                append_item(head, read_scalar(type, true, key), shown, capped, count);
            } else {
                r_.skip(scalar_size(type), "array element");
            }
        }
        if (!capped) return head + "]";
        return std::string("{\"type\":\"") + type_name(type) + "\",\"count\":" + std::to_string(count) +
               ",\"head\":" + head + "]}";
    }

    void append_item(std::string & head, const std::string & text, uint64_t & shown, bool & capped, uint64_t count) {
        if (count > kRenderItems && shown >= kRenderItems / 4) { capped = true; return; }
        if (head.size() + text.size() > kRenderChars) { capped = true; return; }
        if (shown) head += ",";
        head += text;
        ++shown;
    }

    void parse(const FilePtr & file, ModelFile & out) {
        r_.need(4, "magic");
        r_.skip(4, "magic");
        uint32_t version = r_.read<uint32_t>("version");
        if (version == 1) throw_unsupported(path_, "GGUF version 1 is not supported; expected version 2 or 3");
        if (version != 2 && version != 3) {
            if (version == 0x02000000u || version == 0x03000000u)
                throw_unsupported(path_, "big-endian GGUF is not supported");
            throw_format(path_, "GGUF version " + std::to_string(version) + ", expected 2 or 3");
        }
        int64_t n_tensors = r_.read<int64_t>("tensor count");
        int64_t n_kv = r_.read<int64_t>("key/value count");
        // A kv pair takes >= 12 bytes (empty key + type), a tensor info >= 24: reject impossible counts.
        if (n_tensors < 0 || uint64_t(n_tensors) > r_.remaining() / 24)
            throw_format(path_, "truncated or corrupt: tensor count " + std::to_string(n_tensors) + " cannot fit in a file of " +
                                    std::to_string(r_.size()) + " bytes");
        if (n_kv < 0 || uint64_t(n_kv) > r_.remaining() / 12)
            throw_format(path_, "truncated or corrupt: key/value count " + std::to_string(n_kv) + " cannot fit in a file of " +
                                    std::to_string(r_.size()) + " bytes");

        uint64_t alignment = 32;
        std::unordered_set<std::string> keys;
        for (int64_t i = 0; i < n_kv; ++i) {
            std::string key = read_string("key", kMaxKeyLen);
            if (!keys.insert(key).second) throw_format(path_, "key '" + key + "' appears more than once");
            int32_t type = r_.read<int32_t>("value type");
            std::string text;
            if (type == kArray) {
                text = read_array(key, 0);
            } else {
                if (key == "general.alignment") {
                    if (type != kU32) throw_format(path_, std::string("general.alignment has type ") + type_name(type) + ", expected uint32");
                    uint32_t a = r_.read<uint32_t>("alignment");
                    if (a == 0 || (a & (a - 1)) != 0) throw_format(path_, "general.alignment " + std::to_string(a) + " is not a power of two");
                    r_.seek(r_.pos() - 4, "alignment");
                    alignment = a;
                }
                text = read_scalar(type, false, key);
            }
            out.metadata.emplace_back(std::move(key), std::move(text));
        }

        struct Info { TensorRecord t; uint64_t rel_offset; };
        std::vector<Info> infos;
        std::unordered_set<std::string> names;
        for (int64_t i = 0; i < n_tensors; ++i) {
            Info info;
            TensorRecord & t = info.t;
            t.name = read_string("tensor name", kMaxKeyLen);
            claim_name(names, t.name, path_);
            const std::string where = "tensor '" + t.name + "'";
            uint32_t n_dims = r_.read<uint32_t>("tensor dims");
            if (n_dims > GGML_MAX_DIMS)
                throw_format(path_, where + " has " + std::to_string(n_dims) + " dims, expected at most " + std::to_string(GGML_MAX_DIMS));
            int64_t ne[GGML_MAX_DIMS] = {1, 1, 1, 1};
            for (uint32_t d = 0; d < n_dims; ++d) {
                ne[d] = r_.read<int64_t>("tensor dims");
                if (ne[d] < 0) throw_format(path_, where + " has negative size " + std::to_string(ne[d]) + " in dim " + std::to_string(d));
            }
            for (uint32_t d = n_dims; d-- > 0;) t.shape.push_back(ne[d]);  // ggml ne[] is innermost first
            int32_t type = r_.read<int32_t>("tensor type");
            if (type < 0 || type >= GGML_TYPE_COUNT || ggml_blck_size(ggml_type(type)) == 0)
                throw_unsupported(path_, where + " has ggml type " + std::to_string(type) +
                                             ", which this ggml does not know or no longer supports");
            t.type = ggml_type(type);
            switch (t.type) {
                case GGML_TYPE_F32: t.dtype = DType::F32; break;
                case GGML_TYPE_F16: t.dtype = DType::F16; break;
                case GGML_TYPE_BF16: t.dtype = DType::BF16; break;
                case GGML_TYPE_F64: t.dtype = DType::F64; break;
                case GGML_TYPE_I64: t.dtype = DType::I64; break;
                case GGML_TYPE_I32: t.dtype = DType::I32; break;
                case GGML_TYPE_I16: t.dtype = DType::I16; break;
                case GGML_TYPE_I8: t.dtype = DType::I8; break;
                default: t.dtype = DType::Ggml;
            }
            const uint64_t blck = uint64_t(ggml_blck_size(t.type));
            if (uint64_t(ne[0]) % blck != 0)
                throw_format(path_, where + " (" + ggml_type_name(t.type) + ") has row length " + std::to_string(ne[0]) +
                                        ", not a multiple of the block size " + std::to_string(blck));
            uint64_t rows = 0, row_bytes = 0, nbytes = 0;
            std::vector<int64_t> outer(ne + 1, ne + GGML_MAX_DIMS);
            if (!shape_numel(outer, rows) || !mul_u64(uint64_t(ne[0]) / blck, ggml_type_size(t.type), row_bytes) ||
                !mul_u64(row_bytes, rows, nbytes) || !shape_numel(t.shape, rows))
                throw_format(path_, where + " shape " + shape_text(t.shape) + " is too large");
            t.nbytes = nbytes;
            info.rel_offset = r_.read<uint64_t>("tensor offset");
            infos.push_back(std::move(info));
        }

        // The data section starts at the next multiple of the alignment.
        uint64_t data_start = r_.pos();
        if (data_start % alignment) data_start += alignment - data_start % alignment;  // pos <= size, no overflow
        if (!infos.empty() && data_start > r_.size())
            throw_format(path_, "truncated: data section would start at " + std::to_string(data_start) +
                                    " but the file has " + std::to_string(r_.size()) + " bytes");
        for (auto & info : infos) {
            TensorRecord & t = info.t;
            uint64_t begin = 0, end = 0;
            if (!add_u64(data_start, info.rel_offset, begin) || !add_u64(begin, t.nbytes, end) || end > r_.size())
                throw_format(path_, "tensor '" + t.name + "' at data offset " + std::to_string(info.rel_offset) + " with " +
                                        std::to_string(t.nbytes) + " bytes ends past the end of the file (" +
                                        std::to_string(r_.size()) + " bytes, data section starts at " +
                                        std::to_string(data_start) + ")");
            t.offset = begin;
            t.file = file;
            out.tensors.push_back(std::move(t));
        }
        out.files.push_back(file);
    }

private:
    const std::string & path_;
    ByteReader r_;
};

}  // namespace

void read_gguf(const FilePtr & file, ModelFile & out) {
    GgufParser(*file).parse(file, out);
}

}  // namespace detail
}  // namespace sd
