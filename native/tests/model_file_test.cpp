// Model file readers: writes tiny files of every format into a temp dir, reads them back, then
// checks that every kind of corruption is a typed sd::Error and that fuzzed files never crash.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "check.h"
#include "core/errors.h"
#include "core/json.h"
#include "io/model-file.h"

// CHECK_THROWS_CODE, and with MODEL_FILE_TEST_VERBOSE=1 in the environment also prints the
// message (to review what users will read).
#define CHECK_ERR(expr, code)                                                               \
    do {                                                                                    \
        CHECK_THROWS_CODE(expr, code);                                                      \
        if (std::getenv("MODEL_FILE_TEST_VERBOSE")) {                                       \
            try { expr; } catch (const sd::Error & _e) { std::printf("  %s\n", _e.what()); } \
        }                                                                                   \
    } while (0)

namespace fs = std::filesystem;
using Bytes = std::string;
using sd::ErrorCode;

namespace {

// ------------------------------------------------------------------ byte helpers
template <typename T> void put(Bytes & b, T v) { b.append(reinterpret_cast<const char *>(&v), sizeof v); }
void put_u8(Bytes & b, uint8_t v) { put(b, v); }
void put_u16(Bytes & b, uint16_t v) { put(b, v); }
void put_u32(Bytes & b, uint32_t v) { put(b, v); }
void put_u64(Bytes & b, uint64_t v) { put(b, v); }

Bytes floats(std::vector<float> v) { return Bytes(reinterpret_cast<const char *>(v.data()), v.size() * 4); }
Bytes pattern(size_t n, uint8_t seed) {
    Bytes b(n, '\0');
    for (size_t i = 0; i < n; ++i) b[i] = char(uint8_t(seed + i * 7));
    return b;
}

void write_file(const std::string & path, const Bytes & bytes) {
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), std::streamsize(bytes.size()));
}

bool bytes_at(const sd::TensorRecord & t, const Bytes & expected) {
    return t.nbytes == expected.size() && t.offset + t.nbytes <= t.file->size() &&
           std::memcmp(t.file->data() + t.offset, expected.data(), expected.size()) == 0;
}

// ------------------------------------------------------------------ safetensors writer
struct StTensor {
    std::string name, dtype;
    std::vector<int64_t> shape;
    Bytes data;
};

std::string shape_json(const std::vector<int64_t> & shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
    return s + "]";
}

Bytes raw_safetensors(std::string header, const Bytes & data) {
    while (header.size() % 8) header += ' ';  // the spec pads with spaces
    Bytes b;
    put_u64(b, header.size());
    return b + header + data;
}

Bytes make_safetensors(const std::vector<StTensor> & tensors, const std::vector<std::pair<std::string, std::string>> & meta = {}) {
    std::string h = "{";
    if (!meta.empty()) {
        h += "\"__metadata__\":{";
        for (size_t i = 0; i < meta.size(); ++i) h += (i ? "," : "") + ("\"" + meta[i].first + "\":\"" + meta[i].second + "\"");
        h += "},";
    }
    Bytes data;
    for (size_t i = 0; i < tensors.size(); ++i) {
        const auto & t = tensors[i];
        h += (i ? "," : "") + ("\"" + t.name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":" + shape_json(t.shape) +
                               ",\"data_offsets\":[" + std::to_string(data.size()) + "," +
                               std::to_string(data.size() + t.data.size()) + "]}");
        data += t.data;
    }
    return raw_safetensors(h + "}", data);
}

// ------------------------------------------------------------------ GGUF writer
struct GgufWriter {
    Bytes kv;
    uint64_t n_kv = 0;
    struct T { std::string name; ggml_type type; std::vector<int64_t> ne; Bytes data; };
    std::vector<T> tensors;

    static void str(Bytes & b, const std::string & s) { put_u64(b, s.size()); b += s; }
    void key(const std::string & k, uint32_t type) { str(kv, k); put_u32(kv, type); ++n_kv; }
    void kv_string(const std::string & k, const std::string & v) { key(k, 8); str(kv, v); }
    void kv_u32(const std::string & k, uint32_t v) { key(k, 4); put_u32(kv, v); }
    void kv_f32(const std::string & k, float v) { key(k, 6); put(kv, v); }
    void kv_bool(const std::string & k, bool v) { key(k, 7); put_u8(kv, v); }
    void kv_strings(const std::string & k, const std::vector<std::string> & v) {
        key(k, 9); put_u32(kv, 8); put_u64(kv, v.size());
        for (const auto & s : v) str(kv, s);
    }
    void kv_i32s(const std::string & k, const std::vector<int32_t> & v) {
        key(k, 9); put_u32(kv, 5); put_u64(kv, v.size());
        for (int32_t x : v) put(kv, x);
    }
    void kv_nested(const std::string & k) {  // [["a", "b"], ["c"]]
        key(k, 9); put_u32(kv, 9); put_u64(kv, 2);
        put_u32(kv, 8); put_u64(kv, 2); str(kv, "a"); str(kv, "b");
        put_u32(kv, 8); put_u64(kv, 1); str(kv, "c");
    }
    void tensor(const std::string & name, ggml_type type, std::vector<int64_t> ne, uint8_t seed) {
        int64_t rows = 1;
        for (size_t i = 1; i < ne.size(); ++i) rows *= ne[i];
        size_t nbytes = ggml_row_size(type, ne[0]) * size_t(rows);
        tensors.push_back({name, type, ne, pattern(nbytes, seed)});
    }
    Bytes build(uint32_t version = 3, uint32_t alignment = 32) const {
        Bytes b = "GGUF";
        put_u32(b, version);
        put_u64(b, tensors.size());
        put_u64(b, n_kv);
        b += kv;
        uint64_t offset = 0;
        std::vector<uint64_t> offsets;
        for (const auto & t : tensors) {
            str(b, t.name);
            put_u32(b, uint32_t(t.ne.size()));
            for (int64_t d : t.ne) put(b, d);
            put_u32(b, uint32_t(t.type));
            put_u64(b, offset);
            offsets.push_back(offset);
            offset += t.data.size();
            offset = (offset + alignment - 1) / alignment * alignment;
        }
        while (b.size() % alignment) b += '\0';
        const size_t data_start = b.size();
        for (size_t i = 0; i < tensors.size(); ++i) {
            b.resize(data_start + offsets[i], '\0');
            b += tensors[i].data;
        }
        return b;
    }
};

// ------------------------------------------------------------------ torch zip writer
// A protocol-2 pickle assembled opcode by opcode, as torch.save writes it.
struct Pickle {
    Bytes b = "\x80\x02";
    uint8_t memo = 0;
    void op(char c) { b += c; }
    void put_memo() { b += 'q'; b += char(memo++); }
    void global(const std::string & module, const std::string & name) { b += "c" + module + "\n" + name + "\n"; put_memo(); }
    void str(const std::string & s) { b += 'X'; put_u32(b, uint32_t(s.size())); b += s; put_memo(); }
    void integer(int64_t v) {
        if (v >= 0 && v < 256) { b += 'K'; put_u8(b, uint8_t(v)); }
        else if (v >= 0 && v < 65536) { b += 'M'; put_u16(b, uint16_t(v)); }
        else { b += 'J'; put(b, int32_t(v)); }
    }
    void ints(const std::vector<int64_t> & v) {
        op('(');
        for (int64_t x : v) integer(x);
        op('t');
    }
    // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict())
    void tensor(const std::string & storage_cls, const std::string & key, int64_t numel, int64_t offset,
                const std::vector<int64_t> & size, const std::vector<int64_t> & stride) {
        global("torch._utils", "_rebuild_tensor_v2");
        op('(');
        op('('); str("storage"); global("torch", storage_cls); str(key); str("cpu"); integer(numel); op('t'); op('Q');
        integer(offset);
        ints(size);
        ints(stride);
        op('\x89');
        global("collections", "OrderedDict"); op(')'); op('R');
        op('t'); op('R');
        put_memo();
    }
    Bytes done() { return b + "."; }
};

struct ZipEntry { std::string name; Bytes data; uint16_t method = 0; };

// zip64 = true writes what big checkpoints carry: sizes and offsets in the zip64 extra field,
// a zip64 end record and its locator.
Bytes make_zip(const std::vector<ZipEntry> & entries, bool zip64 = false) {
    Bytes out, cd;
    for (const auto & e : entries) {
        uint32_t local = uint32_t(out.size());
        put_u32(out, 0x04034b50); put_u16(out, 20); put_u16(out, 0); put_u16(out, e.method);
        put_u32(out, 0); put_u32(out, 0);  // time/date, crc (not checked)
        put_u32(out, uint32_t(e.data.size())); put_u32(out, uint32_t(e.data.size()));
        put_u16(out, uint16_t(e.name.size())); put_u16(out, 0);
        out += e.name + e.data;

        const uint32_t size32 = zip64 ? 0xFFFFFFFFu : uint32_t(e.data.size());
        put_u32(cd, 0x02014b50); put_u16(cd, 45); put_u16(cd, 45); put_u16(cd, 0); put_u16(cd, e.method);
        put_u32(cd, 0); put_u32(cd, 0);
        put_u32(cd, size32); put_u32(cd, size32);
        put_u16(cd, uint16_t(e.name.size())); put_u16(cd, zip64 ? 28 : 0); put_u16(cd, 0);
        put_u16(cd, 0); put_u16(cd, 0); put_u32(cd, 0); put_u32(cd, zip64 ? 0xFFFFFFFFu : local);
        cd += e.name;
        if (zip64) {
            put_u16(cd, 1); put_u16(cd, 24);
            put_u64(cd, e.data.size()); put_u64(cd, e.data.size()); put_u64(cd, local);
        }
    }
    const uint64_t cd_offset = out.size();
    out += cd;
    if (zip64) {
        const uint64_t z64 = out.size();
        put_u32(out, 0x06064b50); put_u64(out, 44); put_u16(out, 45); put_u16(out, 45); put_u32(out, 0); put_u32(out, 0);
        put_u64(out, entries.size()); put_u64(out, entries.size()); put_u64(out, cd.size()); put_u64(out, cd_offset);
        put_u32(out, 0x07064b50); put_u32(out, 0); put_u64(out, z64); put_u32(out, 1);
    }
    put_u32(out, 0x06054b50); put_u16(out, 0); put_u16(out, 0);
    put_u16(out, zip64 ? 0xFFFF : uint16_t(entries.size())); put_u16(out, zip64 ? 0xFFFF : uint16_t(entries.size()));
    put_u32(out, zip64 ? 0xFFFFFFFFu : uint32_t(cd.size())); put_u32(out, zip64 ? 0xFFFFFFFFu : uint32_t(cd_offset));
    put_u16(out, 0);
    return out;
}

Bytes torch_checkpoint(const Bytes & pkl, const Bytes & storage0, const Bytes & storage1, uint16_t pkl_method = 0,
                       bool zip64 = false) {
    return make_zip({{"archive/data.pkl", pkl, pkl_method},
                     {"archive/byteorder", "little"},
                     {"archive/data/0", storage0},
                     {"archive/data/1", storage1},
                     {"archive/version", "3\n"}},
                    zip64);
}

// {"epoch": 3, "state_dict": {...4 tensors...}, "callbacks": {ModelCheckpoint: {"best": 1}}, "np": numpy scalar}
Bytes lightning_pickle() {
    Pickle p;
    p.op('}'); p.put_memo();
    p.op('(');
    p.str("epoch"); p.integer(3);
    p.str("state_dict");
    p.global("collections", "OrderedDict"); p.op(')'); p.op('R'); p.put_memo();
    p.op('(');
    p.str("model.w"); p.tensor("FloatStorage", "0", 10, 0, {2, 3}, {3, 1});
    p.str("model.h"); p.tensor("HalfStorage", "1", 4, 0, {4}, {1});
    p.str("model.p");  // a Parameter: _rebuild_parameter(tensor, requires_grad, hooks)
    p.global("torch._utils", "_rebuild_parameter");
    p.op('('); p.tensor("FloatStorage", "0", 10, 6, {4, 1}, {1, 1}); p.op('\x88');
    p.global("collections", "OrderedDict"); p.op(')'); p.op('R'); p.op('t'); p.op('R'); p.put_memo();
    p.str("nested"); p.op('}'); p.put_memo();
    p.str("a"); p.tensor("FloatStorage", "0", 10, 0, {}, {}); p.op('s');
    p.op('u');
    p.str("callbacks"); p.op('}'); p.put_memo();
    p.global("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint");
    p.op('}'); p.put_memo(); p.str("best"); p.integer(1); p.op('s');
    p.op('s');
    p.str("np");
    p.global("numpy.core.multiarray", "scalar");
    p.global("numpy", "dtype"); p.str("f8"); p.op('\x89'); p.op('\x88'); p.op('\x87'); p.op('R');
    p.op('('); p.integer(3); p.str("<"); p.op('N'); p.op('N'); p.op('N'); p.integer(-1); p.integer(-1); p.integer(0); p.op('t'); p.op('b');
    p.global("_codecs", "encode"); p.str("abcdefgh"); p.str("latin1"); p.op('\x86'); p.op('R');
    p.op('\x86'); p.op('R');
    p.op('u');
    return p.done();
}

// A pickle that calls `module.name("echo pwned")`.
Bytes evil_pickle(const std::string & module, const std::string & name, bool stack_global) {
    Pickle p;
    if (stack_global) { p.str(module); p.str(name); p.op('\x93'); }
    else p.global(module, name);
    p.op('('); p.str("echo pwned"); p.op('t'); p.op('R');
    return p.done();
}

// ------------------------------------------------------------------ fixtures
struct Fixtures {
    std::string dir;
    Bytes st, gguf, torch;
    std::vector<float> w = {1, 2, 3, 4, 5, 6};
};

std::string tmp_dir() {
    std::random_device rd;
    for (int attempt = 0; attempt < 100; ++attempt) {
        fs::path p = fs::temp_directory_path() / ("sdnode-model-file-" + std::to_string(rd()));
        if (fs::create_directory(p)) return p.string();
    }
    std::fprintf(stderr, "cannot create a temp dir\n");
    std::exit(2);
}

// ------------------------------------------------------------------ JSON
void test_json() {
    sd::JsonValue v = sd::parse_json(" {\"a\": [1, -2.5e1, true, false, null], \"s\": \"x\\u00e9\\ud83d\\ude00\\n\\\"\", "
                                     "\"big\": 18446744073709551615, \"f\": 0.18215} ", "test");
    CHECK(v.is_object() && v.members().size() == 4);
    const sd::JsonValue * a = v.get("a");
    CHECK(a && a->is_array() && a->items().size() == 5);
    CHECK(a && a->items()[1].as_double() == -25.0 && a->items()[2].as_bool() && a->items()[4].is_null());
    uint64_t u = 0;
    CHECK(a && a->items()[0].as_uint64(u) && u == 1 && !a->items()[1].as_uint64(u));
    CHECK(v.get("s") && v.get("s")->as_string() == "x\xc3\xa9\xf0\x9f\x98\x80\n\"");
    CHECK(v.get("big") && v.get("big")->as_uint64(u) && u == UINT64_MAX);
    CHECK(v.get("f") && v.get("f")->as_double() == 0.18215);
    CHECK(v.dump() == "{\"a\":[1,-2.5e1,true,false,null],\"s\":\"x\xc3\xa9\xf0\x9f\x98\x80\\n\\\"\",\"big\":18446744073709551615,\"f\":0.18215}");
    CHECK(sd::format_number(0.5, 9) == "0.5");
    for (const char * bad : {"", "{", "[1,]", "{\"a\" 1}", "01", "1.", "-", "\"\\x\"", "\"\\ud800\"", "tru", "{} {}", "\"a\nb\"", "[1 2]"})
        CHECK_ERR(sd::parse_json(std::string(bad), "test"), ErrorCode::ModelFormat);
}

// ------------------------------------------------------------------ valid files
void test_safetensors(Fixtures & fx) {
    fx.st = make_safetensors({{"a.weight", "F32", {2, 3}, floats(fx.w)},
                              {"b.bias", "F16", {4}, pattern(8, 1)},
                              {"c", "BF16", {1, 2, 1}, pattern(4, 2)},
                              {"ids", "I64", {3}, pattern(24, 3)},
                              {"mask", "BOOL", {0, 5}, ""},
                              {"scalar", "F64", {}, pattern(8, 4)}},
                             {{"format", "pt"}, {"modelspec.title", "tiny"}});
    const std::string path = fx.dir + "/tiny.safetensors";
    write_file(path, fx.st);
    sd::ModelFile m = sd::open_model_file(path);
    CHECK(m.format == "safetensors");
    CHECK(m.path == path);
    CHECK(m.tensors.size() == 6);
    CHECK(m.files.size() == 1);
    CHECK(m.meta("format") && *m.meta("format") == "pt");
    CHECK(m.meta("modelspec.title") && *m.meta("modelspec.title") == "tiny");
    const sd::TensorRecord * a = m.find("a.weight");
    CHECK(a && a->dtype == sd::DType::F32 && a->type == GGML_TYPE_F32 && a->shape == std::vector<int64_t>({2, 3}));
    CHECK(a && a->numel() == 6 && bytes_at(*a, floats(fx.w)));
    const sd::TensorRecord * b = m.find("b.bias");
    CHECK(b && b->dtype == sd::DType::F16 && b->type == GGML_TYPE_F16 && bytes_at(*b, pattern(8, 1)));
    const sd::TensorRecord * c = m.find("c");
    CHECK(c && c->dtype == sd::DType::BF16 && c->type == GGML_TYPE_BF16 && bytes_at(*c, pattern(4, 2)));
    CHECK(std::string(sd::dtype_name(c->dtype, c->type)) == "bf16");
    const sd::TensorRecord * ids = m.find("ids");
    CHECK(ids && ids->dtype == sd::DType::I64 && ids->nbytes == 24);
    const sd::TensorRecord * mask = m.find("mask");
    CHECK(mask && mask->dtype == sd::DType::Bool && mask->nbytes == 0 && mask->numel() == 0);
    const sd::TensorRecord * s = m.find("scalar");
    CHECK(s && s->shape.empty() && s->numel() == 1 && bytes_at(*s, pattern(8, 4)));
    CHECK(m.tensors[0].name == "a.weight" && m.tensors[5].name == "scalar");  // header order
    // The extension does not matter: content decides.
    write_file(fx.dir + "/tiny.bin", fx.st);
    CHECK(sd::open_model_file(fx.dir + "/tiny.bin").format == "safetensors");
}

void test_sharded(Fixtures & fx) {
    const std::string d = fx.dir + "/sharded";
    write_file(d + "/model-00001-of-00002.safetensors",
               make_safetensors({{"x", "F32", {2}, floats({1, 2})}, {"y", "F32", {1}, floats({3})}}, {{"format", "pt"}}));
    write_file(d + "/model-00002-of-00002.safetensors", make_safetensors({{"z", "F16", {2, 2}, pattern(8, 9)}}));
    write_file(d + "/model.safetensors.index.json",
               "{\"metadata\": {\"total_size\": 20}, \"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\", "
               "\"y\": \"model-00001-of-00002.safetensors\", \"z\": \"model-00002-of-00002.safetensors\"}}");
    sd::ModelFile m = sd::open_model_file(d + "/model.safetensors.index.json");
    CHECK(m.format == "safetensors");
    CHECK(m.tensors.size() == 3);
    CHECK(m.files.size() == 3);  // two shards + the index
    CHECK(m.find("x") && bytes_at(*m.find("x"), floats({1, 2})));
    CHECK(m.find("z") && m.find("z")->dtype == sd::DType::F16 && bytes_at(*m.find("z"), pattern(8, 9)));
    CHECK(m.find("x")->file != m.find("z")->file);
    CHECK(m.meta("total_size") && *m.meta("total_size") == "20");
    CHECK(m.meta("format") && *m.meta("format") == "pt");
    // Any name works when the content is a JSON object with weight_map.
    write_file(d + "/index-copy.json", "  {\"weight_map\": {\"z\": \"model-00002-of-00002.safetensors\"}}");
    CHECK(sd::open_model_file(d + "/index-copy.json").tensors.size() == 1);

    // A name the index promises but its shard lacks.
    write_file(d + "/missing.index.json", "{\"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\", "
                                          "\"q\": \"model-00002-of-00002.safetensors\"}}");
    CHECK_ERR(sd::open_model_file(d + "/missing.index.json"), ErrorCode::ModelFormat);
    // The same tensor in two shards.
    write_file(d + "/dup-00001.safetensors", make_safetensors({{"x", "F32", {1}, floats({7})}}));
    write_file(d + "/dup.index.json", "{\"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\", "
                                      "\"x2\": \"dup-00001.safetensors\"}}");
    CHECK_ERR(sd::open_model_file(d + "/dup.index.json"), ErrorCode::ModelFormat);
    // A shard that is not there, a shard path leaving the folder, no weight_map, broken JSON.
    write_file(d + "/gone.index.json", "{\"weight_map\": {\"x\": \"nope.safetensors\"}}");
    CHECK_ERR(sd::open_model_file(d + "/gone.index.json"), ErrorCode::Io);
    write_file(d + "/escape.index.json", "{\"weight_map\": {\"x\": \"../tiny.safetensors\"}}");
    CHECK_ERR(sd::open_model_file(d + "/escape.index.json"), ErrorCode::ModelFormat);
    write_file(d + "/nomap.index.json", "{\"metadata\": {}}");
    CHECK_ERR(sd::open_model_file(d + "/nomap.index.json"), ErrorCode::ModelFormat);
    write_file(d + "/broken.index.json", "{\"weight_map\": {\"x\": ");
    CHECK_ERR(sd::open_model_file(d + "/broken.index.json"), ErrorCode::ModelFormat);
}

void test_gguf(Fixtures & fx) {
    GgufWriter g;
    g.kv_string("general.architecture", "sd1");
    g.kv_u32("general.alignment", 64);
    g.kv_f32("sd.scale", 0.5f);
    g.kv_bool("sd.flag", true);
    g.kv_strings("tokenizer.tokens", {"a", "b\"q", "c"});
    g.kv_i32s("sd.levels", {1, -2, 4});
    g.kv_nested("sd.nested");
    std::vector<std::string> vocab;
    for (int i = 0; i < 1000; ++i) vocab.push_back("tok" + std::to_string(i));
    g.kv_strings("tokenizer.vocab", vocab);
    g.tensor("w.f32", GGML_TYPE_F32, {3, 2}, 1);
    g.tensor("w.f16", GGML_TYPE_F16, {5}, 2);
    g.tensor("w.q8", GGML_TYPE_Q8_0, {64, 3}, 3);
    g.tensor("w.q4", GGML_TYPE_Q4_0, {32, 2, 2}, 4);
    fx.gguf = g.build(3, 64);
    const std::string path = fx.dir + "/tiny.gguf";
    write_file(path, fx.gguf);
    sd::ModelFile m = sd::open_model_file(path);
    CHECK(m.format == "gguf");
    CHECK(m.tensors.size() == 4);
    CHECK(m.meta("general.architecture") && *m.meta("general.architecture") == "sd1");
    CHECK(m.meta("general.alignment") && *m.meta("general.alignment") == "64");
    CHECK(m.meta("sd.scale") && *m.meta("sd.scale") == "0.5");
    CHECK(m.meta("sd.flag") && *m.meta("sd.flag") == "true");
    CHECK(m.meta("tokenizer.tokens") && *m.meta("tokenizer.tokens") == "[\"a\",\"b\\\"q\",\"c\"]");
    CHECK(m.meta("sd.levels") && *m.meta("sd.levels") == "[1,-2,4]");
    CHECK(m.meta("sd.nested") && *m.meta("sd.nested") == "[[\"a\",\"b\"],[\"c\"]]");
    const std::string * v = m.meta("tokenizer.vocab");  // long arrays are summarized
    CHECK(v && v->find("\"count\":1000") != std::string::npos && v->find("\"tok0\"") != std::string::npos &&
          v->find("tok999") == std::string::npos);

    const sd::TensorRecord * f32 = m.find("w.f32");
    CHECK(f32 && f32->dtype == sd::DType::F32 && f32->type == GGML_TYPE_F32);
    CHECK(f32 && f32->shape == std::vector<int64_t>({2, 3}));  // ne {3, 2} reversed
    CHECK(f32 && bytes_at(*f32, g.tensors[0].data) && f32->offset % 64 == 0);
    const sd::TensorRecord * f16 = m.find("w.f16");
    CHECK(f16 && f16->dtype == sd::DType::F16 && f16->nbytes == 10 && bytes_at(*f16, g.tensors[1].data));
    const sd::TensorRecord * q8 = m.find("w.q8");
    CHECK(q8 && q8->dtype == sd::DType::Ggml && q8->type == GGML_TYPE_Q8_0);
    CHECK(q8 && q8->shape == std::vector<int64_t>({3, 64}) && q8->nbytes == 3 * 2 * 34 && bytes_at(*q8, g.tensors[2].data));
    CHECK(std::string(sd::dtype_name(q8->dtype, q8->type)) == "q8_0");
    const sd::TensorRecord * q4 = m.find("w.q4");
    CHECK(q4 && q4->type == GGML_TYPE_Q4_0 && q4->shape == std::vector<int64_t>({2, 2, 32}) && q4->nbytes == 4 * 18);
    CHECK(q4 && bytes_at(*q4, g.tensors[3].data));

    // Version 2 reads the same; default alignment 32.
    GgufWriter g2;
    g2.tensor("t", GGML_TYPE_F32, {7}, 5);
    g2.tensor("u", GGML_TYPE_F32, {1}, 6);
    write_file(fx.dir + "/v2.gguf", g2.build(2, 32));
    sd::ModelFile m2 = sd::open_model_file(fx.dir + "/v2.gguf");
    CHECK(m2.tensors.size() == 2 && m2.find("u") && m2.find("u")->offset % 32 == 0 && bytes_at(*m2.find("u"), g2.tensors[1].data));
}

void test_torch(Fixtures & fx) {
    Bytes storage0 = floats({1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
    Bytes storage1 = pattern(8, 7);
    fx.torch = torch_checkpoint(lightning_pickle(), storage0, storage1);
    const std::string path = fx.dir + "/tiny.ckpt";
    write_file(path, fx.torch);
    sd::ModelFile m = sd::open_model_file(path);
    CHECK(m.format == "torch");
    CHECK(m.tensors.size() == 4);
    const sd::TensorRecord * w = m.find("model.w");  // the state_dict wrapper is unwrapped, not prefixed
    CHECK(w && w->dtype == sd::DType::F32 && w->shape == std::vector<int64_t>({2, 3}) && bytes_at(*w, storage0.substr(0, 24)));
    const sd::TensorRecord * h = m.find("model.h");
    CHECK(h && h->dtype == sd::DType::F16 && h->type == GGML_TYPE_F16 && bytes_at(*h, storage1));
    const sd::TensorRecord * p = m.find("model.p");  // Parameter with a storage offset of 6 floats
    CHECK(p && p->shape == std::vector<int64_t>({4, 1}) && bytes_at(*p, storage0.substr(24, 16)));
    const sd::TensorRecord * a = m.find("nested.a");  // nested dicts join with '.'
    CHECK(a && a->shape.empty() && bytes_at(*a, storage0.substr(0, 4)));
    CHECK(m.tensors[0].name == "model.w" && m.tensors[3].name == "nested.a");

    // The same checkpoint with zip64 records reads the same.
    write_file(fx.dir + "/zip64.ckpt", torch_checkpoint(lightning_pickle(), storage0, storage1, 0, true));
    sd::ModelFile m64 = sd::open_model_file(fx.dir + "/zip64.ckpt");
    CHECK(m64.tensors.size() == 4 && m64.find("model.p") && bytes_at(*m64.find("model.p"), storage0.substr(24, 16)));

    // A bare state dict (no wrapper), written with a .pt name.
    Pickle bare;
    bare.op('}'); bare.put_memo();
    bare.str("x"); bare.tensor("DoubleStorage", "0", 1, 0, {1}, {1}); bare.op('s');
    write_file(fx.dir + "/bare.pt", torch_checkpoint(bare.done(), pattern(8, 3), ""));
    sd::ModelFile mb = sd::open_model_file(fx.dir + "/bare.pt");
    CHECK(mb.tensors.size() == 1 && mb.find("x") && mb.find("x")->dtype == sd::DType::F64 && bytes_at(*mb.find("x"), pattern(8, 3)));
}

void test_diffusers(Fixtures & fx) {
    const std::string d = fx.dir + "/diffusers";
    write_file(d + "/model_index.json", "{\"_class_name\": \"StableDiffusionPipeline\"}");
    write_file(d + "/unet/config.json", "{\"in_channels\": 4, \"cross_attention_dim\": 768}");
    write_file(d + "/unet/diffusion_pytorch_model.safetensors", make_safetensors({{"conv_in.weight", "F32", {2}, floats({1, 2})}}));
    write_file(d + "/vae/config.json", "{\"latent_channels\": 4}");
    write_file(d + "/vae/diffusion_pytorch_model.fp16.safetensors", make_safetensors({{"decoder.conv_in.bias", "F16", {1}, pattern(2, 1)}}));
    write_file(d + "/text_encoder/model.safetensors", make_safetensors({{"text_model.final_layer_norm.weight", "F32", {1}, floats({3})}}));
    write_file(d + "/tokenizer/vocab.json", "{}");
    sd::ModelFile m = sd::open_model_file(d);
    CHECK(m.format == "diffusers");
    CHECK(m.tensors.size() == 3);
    CHECK(m.find("unet/conv_in.weight") && bytes_at(*m.find("unet/conv_in.weight"), floats({1, 2})));
    CHECK(m.find("vae/decoder.conv_in.bias") && m.find("vae/decoder.conv_in.bias")->dtype == sd::DType::F16);
    CHECK(m.find("text_encoder/text_model.final_layer_norm.weight") != nullptr);
    CHECK(m.meta("model_index.json") && m.meta("model_index.json")->find("StableDiffusionPipeline") != std::string::npos);
    CHECK(m.meta("unet/config.json") && m.meta("unet/config.json")->find("cross_attention_dim") != std::string::npos);
    CHECK(m.meta("vae/config.json") != nullptr);
    CHECK(m.files.size() == 3);

    // text_encoder_2 from a torch .bin
    write_file(d + "/text_encoder_2/pytorch_model.bin", fx.torch);
    sd::ModelFile m2 = sd::open_model_file(d + "/");
    CHECK(m2.tensors.size() == 7 && m2.find("text_encoder_2/model.w") != nullptr);

    // Empty folder, and a folder with only configs.
    fs::create_directories(fx.dir + "/empty");
    CHECK_ERR(sd::open_model_file(fx.dir + "/empty"), ErrorCode::ModelFormat);
    write_file(fx.dir + "/configs-only/unet/config.json", "{}");
    CHECK_ERR(sd::open_model_file(fx.dir + "/configs-only"), ErrorCode::ModelFormat);
    // A broken config is a broken model.
    write_file(fx.dir + "/badcfg/unet/config.json", "{in_channels: 4}");
    write_file(fx.dir + "/badcfg/unet/diffusion_pytorch_model.safetensors", make_safetensors({{"a", "F32", {1}, floats({1})}}));
    CHECK_ERR(sd::open_model_file(fx.dir + "/badcfg"), ErrorCode::ModelFormat);
}

// ------------------------------------------------------------------ failures
std::string put_file(Fixtures & fx, const std::string & name, const Bytes & bytes) {
    std::string path = fx.dir + "/bad/" + name;
    write_file(path, bytes);
    return path;
}

void test_common_failures(Fixtures & fx) {
    CHECK_ERR(sd::open_model_file(fx.dir + "/does-not-exist.safetensors"), ErrorCode::Io);
    CHECK_ERR(sd::open_model_file(put_file(fx, "empty.bin", "")), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(put_file(fx, "short.bin", "abc")), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(put_file(fx, "text.txt", "hello, this is not a model at all")), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(put_file(fx, "legacy.pt", Bytes("\x80\x02\x8a\x0a", 4) + "junkjunkjunk")), ErrorCode::UnsupportedModel);
    // An error names the file.
    try {
        sd::open_model_file(put_file(fx, "named.safetensors", "12345678{"));
        CHECK(false);
    } catch (const sd::Error & e) {
        CHECK(std::string(e.what()).find("named.safetensors") != std::string::npos);
        CHECK(e.file().find("named.safetensors") != std::string::npos);
    }
    sd::MappedFile empty(fx.dir + "/bad/empty.bin");
    CHECK(empty.size() == 0 && empty.data() != nullptr);
}

void test_safetensors_failures(Fixtures & fx) {
    auto st = [&](const std::string & name, const std::string & header, const Bytes & data) {
        return put_file(fx, name, raw_safetensors(header, data));
    };
    const Bytes six = floats({1, 2, 3, 4, 5, 6});
    // Truncated: header length past the end; data cut short.
    Bytes cut = fx.st.substr(0, 20);
    CHECK_ERR(sd::open_model_file(put_file(fx, "cut-header.safetensors", cut)), ErrorCode::ModelFormat);
    Bytes cut_data = fx.st.substr(0, fx.st.size() - 4);
    CHECK_ERR(sd::open_model_file(put_file(fx, "cut-data.safetensors", cut_data)), ErrorCode::ModelFormat);
    Bytes huge;
    put_u64(huge, 200ull << 20);
    huge += "{}";
    CHECK_ERR(sd::open_model_file(put_file(fx, "huge-header.safetensors", huge)), ErrorCode::ModelFormat);
    // Bad JSON and wrong structure.
    CHECK_ERR(sd::open_model_file(st("badjson.safetensors", "{\"a\": {\"dtype\": \"F32\",}}", "")), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(st("array.safetensors", "{[1, 2]}", "")), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(st("trailing.safetensors", "{} x", "")), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(st("nodtype.safetensors", "{\"a\": {\"shape\": [6], \"data_offsets\": [0, 24]}}", six)), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(st("noshape.safetensors", "{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 24]}}", six)), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(st("nooffs.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [6]}}", six)), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(st("entry.safetensors", "{\"a\": 5}", six)), ErrorCode::ModelFormat);
    // Offsets past the end, reversed, and size vs shape mismatches.
    CHECK_ERR(sd::open_model_file(st("past.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [8], \"data_offsets\": [0, 32]}}", six)), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(st("reversed.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 0]}}", six)), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(st("mismatch.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 24]}}", six)), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(st("negdim.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [-6], \"data_offsets\": [0, 24]}}", six)), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(st("fracdim.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [6.0], \"data_offsets\": [0, 24]}}", six)), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(st("overflow.safetensors",
        "{\"a\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4], \"data_offsets\": [0, 24]}}", six)), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(st("bigoffset.safetensors",
        "{\"a\": {\"dtype\": \"F32\", \"shape\": [6], \"data_offsets\": [18446744073709551615, 99999999999999999999]}}", six)), ErrorCode::ModelFormat);
    // Well-formed but a dtype we do not read; unknown names too.
    CHECK_ERR(sd::open_model_file(st("f8.safetensors", "{\"a\": {\"dtype\": \"F8_E4M3\", \"shape\": [6], \"data_offsets\": [0, 6]}}", six)), ErrorCode::UnsupportedModel);
    CHECK_ERR(sd::open_model_file(st("xyz.safetensors", "{\"a\": {\"dtype\": \"XYZ\", \"shape\": [6], \"data_offsets\": [0, 6]}}", six)), ErrorCode::UnsupportedModel);
    // The same name twice in one header.
    CHECK_ERR(sd::open_model_file(st("dupname.safetensors",
        "{\"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}, \"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [1, 2]}}", six)), ErrorCode::ModelFormat);
    CHECK_ERR(sd::open_model_file(st("badmeta.safetensors", "{\"__metadata__\": [1]}", "")), ErrorCode::ModelFormat);
    // Deep nesting must not recurse without bound.
    CHECK_ERR(sd::open_model_file(st("deep.safetensors", "{\"a\":" + std::string(5000, '[') + std::string(5000, ']') + "}", "")), ErrorCode::ModelFormat);
    // Error text says what was found and what was expected.
    try {
        sd::open_model_file(put_file(fx, "past2.safetensors", raw_safetensors("{\"x\": {\"dtype\": \"F32\", \"shape\": [8], \"data_offsets\": [0, 32]}}", six)));
    } catch (const sd::Error & e) {
        CHECK(std::string(e.what()).find("tensor 'x' data_offsets [0, 32] end past the data section (24 bytes)") != std::string::npos);
    }
}

void test_gguf_failures(Fixtures & fx) {
    auto open_bytes = [&](const std::string & name, const Bytes & b) { return sd::open_model_file(put_file(fx, name, b)); };
    CHECK_ERR(open_bytes("magic-only.gguf", "GGUF"), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("cut.gguf", fx.gguf.substr(0, 60)), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("cut-data.gguf", fx.gguf.substr(0, fx.gguf.size() - 10)), ErrorCode::ModelFormat);
    {
        Bytes b = fx.gguf;
        b[4] = 1;  // version 1
        CHECK_ERR(open_bytes("v1.gguf", b), ErrorCode::UnsupportedModel);
        b[4] = 9;
        CHECK_ERR(open_bytes("v9.gguf", b), ErrorCode::ModelFormat);
    }
    {
        Bytes b = fx.gguf;
        uint64_t n = UINT64_MAX / 2;  // absurd tensor count
        std::memcpy(&b[8], &n, 8);
        CHECK_ERR(open_bytes("count.gguf", b), ErrorCode::ModelFormat);
    }
    auto one_tensor = [](ggml_type type, std::vector<int64_t> ne, uint64_t offset, size_t data_bytes) {
        Bytes b = "GGUF";
        put_u32(b, 3); put_u64(b, 1); put_u64(b, 0);
        GgufWriter::str(b, "t");
        put_u32(b, uint32_t(ne.size()));
        for (int64_t d : ne) put(b, d);
        put_u32(b, uint32_t(type));
        put_u64(b, offset);
        while (b.size() % 32) b += '\0';
        return b + Bytes(data_bytes, '\x11');
    };
    CHECK(open_bytes("ok1.gguf", one_tensor(GGML_TYPE_F32, {4}, 0, 16)).tensors.size() == 1);
    CHECK_ERR(open_bytes("removed-type.gguf", one_tensor(ggml_type(4), {32}, 0, 64)), ErrorCode::UnsupportedModel);
    CHECK_ERR(open_bytes("type-range.gguf", one_tensor(ggml_type(1000), {32}, 0, 64)), ErrorCode::UnsupportedModel);
    CHECK_ERR(open_bytes("block.gguf", one_tensor(GGML_TYPE_Q8_0, {33}, 0, 64)), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("dims.gguf", one_tensor(GGML_TYPE_F32, {1, 1, 1, 1, 1}, 0, 4)), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("negdim.gguf", one_tensor(GGML_TYPE_F32, {-4}, 0, 16)), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("past.gguf", one_tensor(GGML_TYPE_F32, {8}, 0, 16)), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("offset.gguf", one_tensor(GGML_TYPE_F32, {4}, UINT64_MAX - 8, 16)), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("overflow.gguf", one_tensor(GGML_TYPE_F32, {INT64_MAX, INT64_MAX, 2}, 0, 16)), ErrorCode::ModelFormat);
    {
        GgufWriter g;  // a string claiming 2^60 bytes
        g.key("k", 8);
        put_u64(g.kv, 1ull << 60);
        CHECK_ERR(open_bytes("strlen.gguf", g.build()), ErrorCode::ModelFormat);
    }
    {
        GgufWriter g;  // an array claiming 2^40 uint32
        g.key("k", 9); put_u32(g.kv, 4); put_u64(g.kv, 1ull << 40);
        CHECK_ERR(open_bytes("arrlen.gguf", g.build()), ErrorCode::ModelFormat);
    }
    {
        GgufWriter g;  // unknown value type
        g.key("k", 77);
        put_u32(g.kv, 0);
        CHECK_ERR(open_bytes("kvtype.gguf", g.build()), ErrorCode::ModelFormat);
    }
    {
        GgufWriter g;
        g.kv_u32("general.alignment", 48);  // not a power of two
        g.tensor("t", GGML_TYPE_F32, {4}, 1);
        CHECK_ERR(open_bytes("align.gguf", g.build()), ErrorCode::ModelFormat);
    }
    {
        GgufWriter g;
        g.tensor("t", GGML_TYPE_F32, {4}, 1);
        g.tensor("t", GGML_TYPE_F32, {4}, 2);
        CHECK_ERR(open_bytes("dup.gguf", g.build()), ErrorCode::ModelFormat);
    }
    {
        GgufWriter g;  // arrays nested beyond the limit
        g.key("k", 9);
        for (int i = 0; i < 20; ++i) { put_u32(g.kv, 9); put_u64(g.kv, 1); }
        put_u32(g.kv, 0); put_u64(g.kv, 0);
        CHECK_ERR(open_bytes("nest.gguf", g.build()), ErrorCode::ModelFormat);
    }
}

void test_torch_failures(Fixtures & fx) {
    auto open_bytes = [&](const std::string & name, const Bytes & b) { return sd::open_model_file(put_file(fx, name, b)); };
    const Bytes s0 = floats({1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
    // Dangerous globals: refused before anything could run.
    CHECK_ERR(open_bytes("os.ckpt", torch_checkpoint(evil_pickle("os", "system", false), s0, "")), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("posix.ckpt", torch_checkpoint(evil_pickle("posix", "system", false), s0, "")), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("eval.ckpt", torch_checkpoint(evil_pickle("builtins", "eval", true), s0, "")), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("subprocess.ckpt", torch_checkpoint(evil_pickle("subprocess", "Popen", true), s0, "")), ErrorCode::ModelFormat);
    try {
        open_bytes("os2.ckpt", torch_checkpoint(evil_pickle("os", "system", false), s0, ""));
    } catch (const sd::Error & e) {
        CHECK(std::string(e.what()).find("global os.system; only tensor rebuilding and plain containers are allowed") != std::string::npos);
    }

    auto one = [&](const std::string & cls, int64_t offset, std::vector<int64_t> size, std::vector<int64_t> stride) {
        Pickle p;
        p.op('}'); p.put_memo();
        p.str("t"); p.tensor(cls, "0", 10, offset, size, stride); p.op('s');
        return torch_checkpoint(p.done(), s0, "");
    };
    CHECK(open_bytes("ok.ckpt", one("FloatStorage", 0, {10}, {1})).tensors.size() == 1);
    CHECK_ERR(open_bytes("strided.ckpt", one("FloatStorage", 0, {2, 3}, {1, 2})), ErrorCode::UnsupportedModel);
    CHECK_ERR(open_bytes("toobig.ckpt", one("FloatStorage", 0, {11}, {1})), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("offset.ckpt", one("FloatStorage", 8, {3}, {1})), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("hugeoffset.ckpt", one("FloatStorage", 0x7fffffff, {3}, {1})), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("negsize.ckpt", one("FloatStorage", 0, {-1}, {1})), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("qint.ckpt", one("QInt8Storage", 0, {10}, {1})), ErrorCode::UnsupportedModel);
    CHECK(open_bytes("i8.ckpt", one("CharStorage", 0, {40}, {1})).tensors[0].dtype == sd::DType::I8);
    {
        Pickle p;  // storage key not in the zip
        p.op('}'); p.str("t"); p.tensor("FloatStorage", "7", 1, 0, {1}, {1}); p.op('s');
        CHECK_ERR(open_bytes("nostorage.ckpt", torch_checkpoint(p.done(), s0, "")), ErrorCode::ModelFormat);
    }
    // Compressed data.pkl, no data.pkl, truncated zip, truncated pickle, junk opcodes.
    CHECK_ERR(open_bytes("deflated.ckpt", torch_checkpoint(lightning_pickle(), s0, pattern(8, 7), 8)), ErrorCode::UnsupportedModel);
    CHECK_ERR(open_bytes("nopkl.ckpt", make_zip({{"archive/data/0", s0}})), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("cutzip.ckpt", fx.torch.substr(0, fx.torch.size() - 30)), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("cutzip2.ckpt", fx.torch.substr(0, 100)), ErrorCode::ModelFormat);
    Bytes pkl = lightning_pickle();
    CHECK_ERR(open_bytes("cutpkl.ckpt", torch_checkpoint(pkl.substr(0, pkl.size() / 2), s0, pattern(8, 7))), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("nostop.ckpt", torch_checkpoint(pkl.substr(0, pkl.size() - 1), s0, pattern(8, 7))), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("opcode.ckpt", torch_checkpoint("\x80\x02\xff.", s0, "")), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("notdict.ckpt", torch_checkpoint("\x80\x02K\x01.", s0, "")), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("underflow.ckpt", torch_checkpoint("\x80\x02s.", s0, "")), ErrorCode::ModelFormat);
    CHECK_ERR(open_bytes("memo.ckpt", torch_checkpoint("\x80\x02h\x05.", s0, "")), ErrorCode::ModelFormat);
    {
        // Self-referencing dict (d["self"] = d) and a deep stack of MARKs stay bounded.
        const char self_pkl[] = "\x80\x02}q\x00X\x04\x00\x00\x00selfh\x00s.";
        Bytes self(self_pkl, sizeof self_pkl - 1);
        CHECK(open_bytes("selfref.ckpt", torch_checkpoint(self, s0, "")).tensors.empty());
        Bytes marks = "\x80\x02" + Bytes(100000, '(') + ".";
        CHECK_ERR(open_bytes("marks.ckpt", torch_checkpoint(marks, s0, "")), ErrorCode::ModelFormat);
    }
}

// ------------------------------------------------------------------ fuzz
// Mutates valid files and requires that opening them either works (with every tensor inside its
// file) or throws sd::Error. Anything else (a crash, another exception) fails the test.
void fuzz(Fixtures & fx, const std::string & name, const Bytes & valid, int rounds, uint32_t seed) {
    std::mt19937 rng(seed);
    const std::string path = fx.dir + "/fuzz/" + name;
    int opened = 0, rejected = 0, bad = 0;
    const uint8_t interesting[] = {0x00, 0xff, 0x7f, 0x80, 0x01, 0x20, '{', '}', '"', '[', '.', 'q', 'X'};
    for (int r = 0; r < rounds; ++r) {
        Bytes b = valid;
        int kind = int(rng() % 8);
        int edits = 1 + int(rng() % 6);
        // Most interesting bytes are in the first few hundred (headers, directory, pickle).
        auto pick = [&]() -> size_t {
            if (b.empty()) return 0;
            return (rng() % 2) ? rng() % std::min<size_t>(b.size(), 256) : rng() % b.size();
        };
        for (int e = 0; e < edits && !b.empty(); ++e) {
            size_t at = pick();
            switch (kind) {
                case 0: b[at] = char(rng()); break;
                case 1: b[at] = char(interesting[rng() % sizeof interesting]); break;
                case 2: b[at] = char(uint8_t(b[at]) ^ (1u << (rng() % 8))); break;
                case 3: b.resize(pick()); break;                                       // truncate
                case 4: if (at + 8 <= b.size()) { uint64_t v = rng() % 4 ? rng() : UINT64_MAX - rng() % 16; std::memcpy(&b[at], &v, 8); } break;
                case 5: if (at + 4 <= b.size()) { uint32_t v = rng() % 2 ? 0xFFFFFFFFu : rng() % 300; std::memcpy(&b[at], &v, 4); } break;
                case 6: b.erase(at, std::min<size_t>(b.size() - at, 1 + rng() % 16)); break;  // delete a run
                default: b.insert(at, Bytes(1 + rng() % 8, char(rng()))); break;             // insert a run
            }
        }
        write_file(path, b);
        try {
            sd::ModelFile m = sd::open_model_file(path);
            ++opened;
            for (const auto & t : m.tensors) {
                uint64_t numel = 1;
                for (int64_t d : t.shape) numel *= uint64_t(d);
                if (t.offset > t.file->size() || t.nbytes > t.file->size() - t.offset || int64_t(numel) != t.numel()) {
                    ++bad;
                    std::fprintf(stderr, "fuzz %s round %d: tensor '%s' escapes its file\n", name.c_str(), r, t.name.c_str());
                }
            }
        } catch (const sd::Error &) {
            ++rejected;
        } catch (const std::exception & e) {
            ++bad;
            std::fprintf(stderr, "fuzz %s round %d: non-sd exception: %s\n", name.c_str(), r, e.what());
        }
    }
    CHECK(bad == 0);
    CHECK(opened + rejected == rounds);
    std::printf("fuzz %-12s %5d rounds: %5d opened, %5d rejected\n", name.c_str(), rounds, opened, rejected);
}

// Pickle-aware fuzzing: splices opcodes into data.pkl itself, keeping the zip around it valid.
void fuzz_pickle(Fixtures & fx, int rounds, uint32_t seed) {
    std::mt19937 rng(seed);
    const Bytes pkl = lightning_pickle();
    const Bytes s0 = floats({1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
    const char ops[] = "}])(012N\x88\x89JKM\x8a\x8bGXTUBC\x8c\x8d\x8e\x8f\x90\x91\x85\x86\x87tldaesuqr\x94hjc\x93R\x81\x92" "bQ.\x80\x95";
    const std::string path = fx.dir + "/fuzz/pickle.ckpt";
    int bad = 0;
    for (int r = 0; r < rounds; ++r) {
        Bytes b = pkl;
        for (int e = 0, n = 1 + int(rng() % 4); e < n; ++e) {
            size_t at = rng() % b.size();
            switch (rng() % 4) {
                case 0: b[at] = ops[rng() % (sizeof ops - 1)]; break;
                case 1: b.insert(at, 1, ops[rng() % (sizeof ops - 1)]); break;
                case 2: b.erase(at, 1 + rng() % 8); break;
                default: b[at] = char(rng()); break;
            }
            if (b.empty()) b = ".";
        }
        write_file(path, torch_checkpoint(b, s0, pattern(8, 7)));
        try {
            sd::ModelFile m = sd::open_model_file(path);
            for (const auto & t : m.tensors) bad += t.offset + t.nbytes > t.file->size();
        } catch (const sd::Error &) {
        } catch (const std::exception & e) {
            ++bad;
            std::fprintf(stderr, "fuzz pickle round %d: non-sd exception: %s\n", r, e.what());
        }
    }
    CHECK(bad == 0);
}

}  // namespace

int main(int argc, char ** argv) {
    Fixtures fx;
    fx.dir = tmp_dir();
    const int rounds = argc > 1 ? std::atoi(argv[1]) : 2500;
    try {
        test_json();
        test_safetensors(fx);
        test_sharded(fx);
        test_gguf(fx);
        test_torch(fx);
        test_diffusers(fx);
        test_common_failures(fx);
        test_safetensors_failures(fx);
        test_gguf_failures(fx);
        test_torch_failures(fx);
        fuzz(fx, "safetensors", fx.st, rounds, 1);
        fuzz(fx, "gguf", fx.gguf, rounds, 2);
        fuzz(fx, "torch", fx.torch, rounds, 3);
        fuzz_pickle(fx, rounds, 5);
        const std::string index = "{\"metadata\": {\"total_size\": 20}, \"weight_map\": {\"x\": \"model-00001-of-00002.safetensors\", "
                                  "\"z\": \"model-00002-of-00002.safetensors\"}}";
        // Shard index fuzzing reads shards relative to the fuzz file: put them beside it.
        fs::create_directories(fx.dir + "/fuzz");
        for (const char * shard : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"})
            fs::copy_file(fx.dir + "/sharded/" + shard, fx.dir + "/fuzz/" + shard, fs::copy_options::overwrite_existing);
        fuzz(fx, "index.json", index, rounds / 5, 4);
    } catch (const std::exception & e) {
        ++sdtest::failures();
        std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    }
    std::error_code ec;
    fs::remove_all(fx.dir, ec);
    return sdtest::finish("model_file_test");
}
