// A restricted unpickler for torch checkpoints (data.pkl inside the zip).
//
// It interprets the opcodes torch.save emits (protocols 2-5) as a small stack machine that only
// builds data: None/bool/int/float/str/bytes, tuples, lists, dicts, and tensors. Globals are
// looked up in an allow-list; the allowed callables are never run, REDUCE just recognises the
// handful we understand (OrderedDict, _rebuild_tensor_v2, _rebuild_parameter, ...) and turns
// everything else allowed into an inert placeholder. All values live in one arena addressed by
// index, so self-referencing or deeply nested input cannot recurse or leak.
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "io/model-file-internal.h"

namespace sd {
namespace detail {

namespace {

constexpr size_t kMaxValues = 4u << 20;   // SD checkpoints need ~30k; this bounds memory on hostile input
constexpr size_t kMaxStack = 1u << 20;
constexpr size_t kMaxMarks = 1u << 16;
constexpr int kMaxFlattenDepth = 32;
constexpr size_t kMaxGlobalName = 512;

struct StorageType {
    const char * name;  // torch.<name>
    DType dtype;
    ggml_type type;
    uint64_t size;
};
const StorageType kStorageTypes[] = {
    {"FloatStorage", DType::F32, GGML_TYPE_F32, 4},    {"HalfStorage", DType::F16, GGML_TYPE_F16, 2},
    {"BFloat16Storage", DType::BF16, GGML_TYPE_BF16, 2}, {"DoubleStorage", DType::F64, GGML_TYPE_F64, 8},
    {"LongStorage", DType::I64, GGML_TYPE_I64, 8},     {"IntStorage", DType::I32, GGML_TYPE_I32, 4},
    {"ShortStorage", DType::I16, GGML_TYPE_I16, 2},    {"CharStorage", DType::I8, GGML_TYPE_I8, 1},
    {"ByteStorage", DType::U8, GGML_TYPE_COUNT, 1},    {"BoolStorage", DType::Bool, GGML_TYPE_COUNT, 1},
};

// What an allowed global stands for.
enum class Callable { OrderedDict, RebuildTensorV2, RebuildTensor, RebuildParameter, RebuildFromTypeV2, Storage, TensorType, Inert };

// Allowed callables that mean something to us.
const struct { const char * name; Callable what; } kKnownGlobals[] = {
    {"collections.OrderedDict", Callable::OrderedDict},
    {"torch._utils._rebuild_tensor_v2", Callable::RebuildTensorV2},
    {"torch._utils._rebuild_tensor", Callable::RebuildTensor},
    {"torch._utils._rebuild_parameter", Callable::RebuildParameter},
    {"torch._utils._rebuild_parameter_with_state", Callable::RebuildParameter},
    {"torch._tensor._rebuild_from_type_v2", Callable::RebuildFromTypeV2},
    {"torch.Tensor", Callable::TensorType},
    {"torch.nn.parameter.Parameter", Callable::TensorType},
};

// Training-state classes and numpy scalars found in real checkpoints: kept as inert placeholders.
const char * const kInertGlobals[] = {
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
    "_codecs.encode",  // protocol 2 spells bytes as _codecs.encode(str, 'latin1')
    "torch.torch_version.TorchVersion", "torch.device", "argparse.Namespace",
};
const char * const kInertPrefixes[] = {"pytorch_lightning.", "lightning.pytorch.", "lightning_fabric."};

struct Value {
    enum class Kind : uint8_t { None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict, Global, Inert, Storage, Tensor };
    Kind kind = Kind::None;
    int64_t i = 0;                // Bool/Int; Global: Callable; Storage: kStorageTypes index; Tensor: tensors_ index
    size_t storage_type = 0;      // Global of Callable::Storage: kStorageTypes index
    double f = 0;                 // Float
    std::string s;                // Str/Bytes; Global: "module.name"; Storage: key
    std::vector<uint32_t> items;  // Tuple/List; Dict: key, value, key, value, ...
};
using Kind = Value::Kind;

class Unpickler {
public:
    Unpickler(const uint8_t * data, uint64_t size, const std::string & path) : data_(data), size_(size), path_(path) {}

    uint32_t run() {
        for (;;) {
            if (pos_ >= size_) fail("ends without a STOP opcode");
            op_pos_ = pos_;
            uint8_t op = data_[pos_++];
            if (step(op)) break;
        }
        if (stack_.empty()) fail("STOP with an empty stack");
        return stack_.back();
    }

    const Value & value(uint32_t i) const { return values_[i]; }
    const PickledTensor & tensor(const Value & v) const { return tensors_[size_t(v.i)]; }
    [[noreturn]] void fail(const std::string & what) const {
        throw_format(path_, "data.pkl: " + what + " (at byte " + std::to_string(op_pos_) + ")");
    }

private:
    const uint8_t * data_;
    uint64_t size_;
    uint64_t pos_ = 0, op_pos_ = 0;
    const std::string & path_;
    std::vector<Value> values_;
    std::vector<PickledTensor> tensors_;
    std::vector<uint32_t> stack_;
    std::vector<size_t> marks_;
    std::unordered_map<uint32_t, uint32_t> memo_;

    // ---- input
    const uint8_t * take(uint64_t n) {
        if (n > size_ - pos_) fail("truncated: opcode needs " + std::to_string(n) + " more bytes");
        const uint8_t * p = data_ + pos_;
        pos_ += n;
        return p;
    }
    template <typename T> T le() {
        T v;
        std::memcpy(&v, take(sizeof(T)), sizeof(T));
        return v;
    }
    std::string line() {  // GLOBAL's "module\n" / "name\n"
        const void * nl = std::memchr(data_ + pos_, '\n', size_t(std::min<uint64_t>(size_ - pos_, kMaxGlobalName)));
        if (!nl) fail("GLOBAL name without a newline within " + std::to_string(kMaxGlobalName) + " bytes");
        size_t n = size_t(static_cast<const uint8_t *>(nl) - (data_ + pos_));
        std::string s(reinterpret_cast<const char *>(take(n)), n);
        ++pos_;
        return s;
    }

    // ---- values and stack
    uint32_t make(Value v) {
        if (values_.size() >= kMaxValues) fail("more than " + std::to_string(kMaxValues) + " objects");
        values_.push_back(std::move(v));
        return uint32_t(values_.size() - 1);
    }
    uint32_t make(Kind k) {
        Value v;
        v.kind = k;
        return make(std::move(v));
    }
    void push(uint32_t v) {
        if (stack_.size() >= kMaxStack) fail("stack deeper than " + std::to_string(kMaxStack));
        stack_.push_back(v);
    }
    uint32_t pop() {
        if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail("stack underflow");
        uint32_t v = stack_.back();
        stack_.pop_back();
        return v;
    }
    uint32_t top() {
        if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail("stack underflow");
        return stack_.back();
    }
    std::vector<uint32_t> pop_mark() {  // everything above the last MARK
        if (marks_.empty()) fail("no MARK to pop to");
        size_t m = marks_.back();
        marks_.pop_back();
        std::vector<uint32_t> items(stack_.begin() + std::ptrdiff_t(m), stack_.end());
        stack_.resize(m);
        return items;
    }
    uint32_t make_tuple(std::vector<uint32_t> items) {
        Value v;
        v.kind = Kind::Tuple;
        v.items = std::move(items);
        return make(std::move(v));
    }
    uint32_t make_int(int64_t i) {
        Value v;
        v.kind = Kind::Int;
        v.i = i;
        return make(std::move(v));
    }
    uint32_t make_str(Kind k, uint64_t n) {
        const uint8_t * p = take(n);
        Value v;
        v.kind = k;
        v.s.assign(reinterpret_cast<const char *>(p), size_t(n));
        return make(std::move(v));
    }
    void memo_put(uint32_t key) { memo_[key] = top(); }
    void memo_get(uint32_t key) {
        auto it = memo_.find(key);
        if (it == memo_.end()) fail("memo key " + std::to_string(key) + " was never stored");
        push(it->second);
    }

    // Adds items to a list (APPEND/APPENDS); placeholders swallow them.
    void append(uint32_t target, const std::vector<uint32_t> & items) {
        Value & t = values_[target];
        if (t.kind == Kind::List) t.items.insert(t.items.end(), items.begin(), items.end());
        else if (t.kind != Kind::Inert) fail("APPEND to something that is not a list");
    }
    void set_items(uint32_t target, const std::vector<uint32_t> & kv) {
        if (kv.size() % 2) fail("SETITEMS with an odd number of items");
        Value & t = values_[target];
        if (t.kind == Kind::Dict) t.items.insert(t.items.end(), kv.begin(), kv.end());
        else if (t.kind != Kind::Inert) fail("SETITEM on something that is not a dict");
    }

    // ---- globals
    uint32_t make_global(const std::string & module, const std::string & name) {
        const std::string full = module + "." + name;
        Value v;
        v.kind = Kind::Global;
        v.s = full;
        bool allowed = false;
        for (const auto & g : kKnownGlobals) {
            if (full == g.name) { v.i = int64_t(g.what); allowed = true; }
        }
        if (!allowed && module == "torch" && name.size() > 7 && name.compare(name.size() - 7, 7, "Storage") == 0) {
            for (size_t k = 0; k < sizeof kStorageTypes / sizeof kStorageTypes[0]; ++k) {
                if (name == kStorageTypes[k].name) {
                    v.i = int64_t(Callable::Storage);
                    v.storage_type = k;
                    allowed = true;
                }
            }
            if (!allowed) throw_unsupported(path_, "tensor storage type " + full + " is not supported; expected Float, Half, "
                                                   "BFloat16, Double, Long, Int, Short, Char, Byte or Bool storage");
        }
        for (const char * g : kInertGlobals) {
            if (!allowed && full == g) { v.i = int64_t(Callable::Inert); allowed = true; }
        }
        for (const char * p : kInertPrefixes) {
            if (!allowed && full.compare(0, std::strlen(p), p) == 0) { v.i = int64_t(Callable::Inert); allowed = true; }
        }
        if (!allowed)
            throw_format(path_, "data.pkl asks for global " + full +
                                    "; only tensor rebuilding and plain containers are allowed");
        return make(std::move(v));
    }

    // ---- calls (REDUCE): recognised, never executed
    const Value & arg(const Value & args, size_t i, const char * fn) {
        if (args.kind != Kind::Tuple || i >= args.items.size()) fail(std::string(fn) + " called with too few arguments");
        return values_[args.items[i]];
    }
    int64_t int_arg(const Value & args, size_t i, const char * fn) {
        const Value & v = arg(args, i, fn);
        if (v.kind != Kind::Int) fail(std::string(fn) + " argument " + std::to_string(i) + " is not an integer");
        return v.i;
    }
    std::vector<int64_t> ints_arg(const Value & args, size_t i, const char * fn) {
        const Value & v = arg(args, i, fn);
        if (v.kind != Kind::Tuple && v.kind != Kind::List) fail(std::string(fn) + " argument " + std::to_string(i) + " is not a tuple");
        std::vector<int64_t> out;
        for (uint32_t x : v.items) {
            if (values_[x].kind != Kind::Int) fail(std::string(fn) + " argument " + std::to_string(i) + " holds a non-integer");
            out.push_back(values_[x].i);
        }
        return out;
    }

    uint32_t rebuild_tensor(const Value & args) {
        const char * fn = "_rebuild_tensor_v2";
        const Value & storage = arg(args, 0, fn);
        if (storage.kind != Kind::Storage) fail("_rebuild_tensor_v2 expects a storage (persistent id) as its first argument");
        int64_t offset = int_arg(args, 1, fn);
        std::vector<int64_t> size = ints_arg(args, 2, fn);
        std::vector<int64_t> stride = ints_arg(args, 3, fn);
        if (offset < 0) fail("tensor storage offset " + std::to_string(offset) + " is negative");
        if (size.size() != stride.size())
            fail("tensor has " + std::to_string(size.size()) + " sizes but " + std::to_string(stride.size()) + " strides");
        for (int64_t d : size) if (d < 0) fail("tensor size " + shape_text(size) + " has a negative dim");
        uint64_t numel;
        if (!shape_numel(size, numel)) fail("tensor size " + shape_text(size) + " is too large");
        const StorageType & st = kStorageTypes[size_t(storage.i)];
        PickledTensor t;
        t.storage_key = storage.s;
        t.dtype = st.dtype;
        t.type = st.type;
        t.elem_size = st.size;
        t.storage_offset = uint64_t(offset);
        t.shape = std::move(size);
        t.stride = std::move(stride);
        tensors_.push_back(std::move(t));
        Value v;
        v.kind = Kind::Tensor;
        v.i = int64_t(tensors_.size() - 1);
        return make(std::move(v));
    }

    uint32_t reduce(uint32_t fn_index, uint32_t args_index) {
        const Value & fn = values_[fn_index];
        const Value args = values_[args_index];  // copy: make() may grow values_
        if (fn.kind == Kind::Inert) return make(Kind::Inert);  // e.g. calling a placeholder's result
        if (fn.kind != Kind::Global) fail("REDUCE on something that is not an allowed global");
        switch (Callable(fn.i)) {
            case Callable::OrderedDict: return make(Kind::Dict);  // items follow through SETITEMS
            case Callable::RebuildTensorV2:
            case Callable::RebuildTensor: return rebuild_tensor(args);
            case Callable::RebuildParameter:
            case Callable::TensorType: {
                // Parameter(data, ...) is its tensor.
                if (args.kind == Kind::Tuple && !args.items.empty() && values_[args.items[0]].kind == Kind::Tensor)
                    return args.items[0];
                return make(Kind::Inert);
            }
            case Callable::RebuildFromTypeV2: {  // (func, type, args, state) -> func(*args)
                const Value & inner_fn = arg(args, 0, "_rebuild_from_type_v2");
                const Value & inner_args = arg(args, 2, "_rebuild_from_type_v2");
                // Only plain tensor rebuilding inside: no chains of nested calls.
                if (inner_fn.kind != Kind::Global || inner_args.kind != Kind::Tuple ||
                    (Callable(inner_fn.i) != Callable::RebuildTensorV2 && Callable(inner_fn.i) != Callable::RebuildTensor))
                    fail("_rebuild_from_type_v2 wraps something other than _rebuild_tensor_v2");
                return reduce(args.items[0], args.items[2]);
            }
            case Callable::Storage: fail("a storage class is called directly; expected it only in a persistent id");
            case Callable::Inert: return make(Kind::Inert);
        }
        return make(Kind::Inert);
    }

    // persistent id ('storage', StorageClass, key, location, numel) -> storage reference
    uint32_t persistent_load(uint32_t pid_index) {
        const Value & pid = values_[pid_index];
        if (pid.kind != Kind::Tuple || pid.items.size() < 3) fail("persistent id is not a ('storage', type, key, ...) tuple");
        const Value & tag = values_[pid.items[0]];
        const Value & type = values_[pid.items[1]];
        const Value & key = values_[pid.items[2]];
        if (tag.kind != Kind::Str || tag.s != "storage") fail("persistent id tag is not 'storage'");
        if (type.kind != Kind::Global || Callable(type.i) != Callable::Storage) fail("persistent id names no storage class");
        if (key.kind != Kind::Str) fail("persistent id storage key is not a string");
        Value v;
        v.kind = Kind::Storage;
        v.i = int64_t(type.storage_type);
        v.s = key.s;
        return make(std::move(v));
    }

    // One opcode; true at STOP.
    bool step(uint8_t op) {
        switch (op) {
            case 0x80: take(1); return false;                // PROTO
            case 0x95: take(8); return false;                // FRAME: framing is only a read hint
            case '.': return true;                           // STOP
            case '(':                                        // MARK
                if (marks_.size() >= kMaxMarks) fail("too many nested MARKs");
                marks_.push_back(stack_.size());
                return false;
            case '0': pop(); return false;                   // POP
            case '1': pop_mark(); return false;              // POP_MARK
            case '2': push(top()); return false;             // DUP
            case 'N': push(make(Kind::None)); return false;
            case 0x88: case 0x89: {                          // NEWTRUE / NEWFALSE
                Value v;
                v.kind = Kind::Bool;
                v.i = op == 0x88;
                push(make(std::move(v)));
                return false;
            }
            case 'J': push(make_int(le<int32_t>())); return false;   // BININT
            case 'K': push(make_int(le<uint8_t>())); return false;   // BININT1
            case 'M': push(make_int(le<uint16_t>())); return false;  // BININT2
            case 0x8a: {                                     // LONG1: little-endian two's complement
                uint8_t n = le<uint8_t>();
                const uint8_t * p = take(n);
                if (n > 8) { push(make(Kind::Inert)); return false; }  // bigger than int64: never a tensor field
                uint64_t u = 0;
                for (int k = n - 1; k >= 0; --k) u = (u << 8) | p[k];
                if (n > 0 && n < 8 && (p[n - 1] & 0x80)) u |= ~uint64_t(0) << (8 * n);  // sign-extend
                push(make_int(int64_t(u)));
                return false;
            }
            case 0x8b: {                                     // LONG4
                int32_t n = le<int32_t>();
                if (n < 0) fail("LONG4 with negative length");
                take(uint64_t(n));
                push(make(Kind::Inert));
                return false;
            }
            case 'G': {                                      // BINFLOAT: big-endian double
                const uint8_t * p = take(8);
                uint8_t b[8];
                for (int k = 0; k < 8; ++k) b[k] = p[7 - k];
                Value v;
                v.kind = Kind::Float;
                std::memcpy(&v.f, b, 8);
                push(make(std::move(v)));
                return false;
            }
            case 'X': push(make_str(Kind::Str, le<uint32_t>())); return false;   // BINUNICODE
            case 0x8c: push(make_str(Kind::Str, le<uint8_t>())); return false;   // SHORT_BINUNICODE
            case 0x8d: push(make_str(Kind::Str, le<uint64_t>())); return false;  // BINUNICODE8
            case 'T': {                                                          // BINSTRING
                int32_t n = le<int32_t>();
                if (n < 0) fail("BINSTRING with negative length");
                push(make_str(Kind::Str, uint64_t(n)));
                return false;
            }
            case 'U': push(make_str(Kind::Str, le<uint8_t>())); return false;    // SHORT_BINSTRING
            case 'B': push(make_str(Kind::Bytes, le<uint32_t>())); return false; // BINBYTES
            case 'C': push(make_str(Kind::Bytes, le<uint8_t>())); return false;  // SHORT_BINBYTES
            case 0x8e: push(make_str(Kind::Bytes, le<uint64_t>())); return false;  // BINBYTES8
            case 0x96: push(make_str(Kind::Bytes, le<uint64_t>())); return false;  // BYTEARRAY8
            case '}': push(make(Kind::Dict)); return false;  // EMPTY_DICT
            case ']': push(make(Kind::List)); return false;  // EMPTY_LIST
            case ')': push(make_tuple({})); return false;    // EMPTY_TUPLE
            case 0x8f: push(make(Kind::Inert)); return false;  // EMPTY_SET: contents never matter
            case 0x90: append(top_below_mark(), pop_mark()); return false;  // ADDITEMS
            case 0x91: pop_mark(); push(make(Kind::Inert)); return false;   // FROZENSET
            case 0x85: { uint32_t a = pop(); push(make_tuple({a})); return false; }  // TUPLE1
            case 0x86: { uint32_t b = pop(), a = pop(); push(make_tuple({a, b})); return false; }
            case 0x87: { uint32_t c = pop(), b = pop(), a = pop(); push(make_tuple({a, b, c})); return false; }
            case 't': push(make_tuple(pop_mark())); return false;  // TUPLE
            case 'l': {                                            // LIST
                Value v;
                v.kind = Kind::List;
                v.items = pop_mark();
                push(make(std::move(v)));
                return false;
            }
            case 'd': {                                            // DICT
                Value v;
                v.kind = Kind::Dict;
                v.items = pop_mark();
                if (v.items.size() % 2) fail("DICT with an odd number of items");
                push(make(std::move(v)));
                return false;
            }
            case 'a': { uint32_t x = pop(); append(top(), {x}); return false; }  // APPEND
            case 'e': { auto items = pop_mark(); append(top(), items); return false; }  // APPENDS
            case 's': { uint32_t v = pop(), k = pop(); set_items(top(), {k, v}); return false; }  // SETITEM
            case 'u': { auto kv = pop_mark(); set_items(top(), kv); return false; }  // SETITEMS
            case 'q': memo_put(le<uint8_t>()); return false;       // BINPUT
            case 'r': memo_put(le<uint32_t>()); return false;      // LONG_BINPUT
            case 0x94: memo_put(uint32_t(memo_.size())); return false;  // MEMOIZE
            case 'h': memo_get(le<uint8_t>()); return false;       // BINGET
            case 'j': memo_get(le<uint32_t>()); return false;      // LONG_BINGET
            case 'c': {                                            // GLOBAL
                std::string module = line();
                std::string name = line();
                push(make_global(module, name));
                return false;
            }
            case 0x93: {                                           // STACK_GLOBAL
                uint32_t name = pop(), module = pop();
                if (values_[name].kind != Kind::Str || values_[module].kind != Kind::Str) fail("STACK_GLOBAL needs two strings");
                push(make_global(values_[module].s, values_[name].s));
                return false;
            }
            case 'R': { uint32_t args = pop(), fn = pop(); push(reduce(fn, args)); return false; }  // REDUCE
            case 0x81: {                                           // NEWOBJ cls.__new__(cls, *args)
                uint32_t args = pop(), cls = pop();
                push(reduce(cls, args));
                return false;
            }
            case 0x92: {                                           // NEWOBJ_EX cls, args, kwargs
                pop();
                uint32_t args = pop(), cls = pop();
                push(reduce(cls, args));
                return false;
            }
            case 'b': pop(); top(); return false;                  // BUILD: state is irrelevant to us
            case 'Q': push(persistent_load(pop())); return false;  // BINPERSID
            default: {
                char buf[8];
                std::snprintf(buf, sizeof buf, "0x%02x", op);
                fail(std::string("opcode ") + buf + " is not one torch.save emits");
            }
        }
    }

    uint32_t top_below_mark() {
        if (marks_.empty() || marks_.back() == 0) fail("ADDITEMS without a set below the MARK");
        return stack_[marks_.back() - 1];
    }

    friend class Flattener;
};

// Walks the unpickled object to the state dict and lists its tensors.
class Flattener {
public:
    Flattener(const Unpickler & u, const std::string & path) : u_(u), path_(path) {}

    std::vector<PickledTensor> run(uint32_t root) {
        // Unwrap {"state_dict": {...}} / {"model": {...}} / {"module": {...}} (also nested once more).
        for (int i = 0; i < 3; ++i) {
            uint32_t inner;
            if (!(find_dict(root, "state_dict", inner) || find_dict(root, "model", inner) || find_dict(root, "module", inner))) break;
            root = inner;
        }
        if (u_.value(root).kind != Kind::Dict) throw_format(path_, "data.pkl does not hold a dict of tensors");
        walk(root, "", 0);
        return std::move(out_);
    }

private:
    const Unpickler & u_;
    const std::string & path_;
    std::vector<PickledTensor> out_;
    std::unordered_map<std::string, size_t> index_;  // name -> out_ slot (a later SETITEM wins)
    std::unordered_set<uint32_t> visited_;  // each dict once: shared or cyclic dicts cannot blow up

    bool find_dict(uint32_t dict, const char * key, uint32_t & found) const {
        const Value & d = u_.value(dict);
        if (d.kind != Kind::Dict) return false;
        for (size_t k = 0; k + 1 < d.items.size(); k += 2) {
            const Value & name = u_.value(d.items[k]);
            if (name.kind == Kind::Str && name.s == key && u_.value(d.items[k + 1]).kind == Kind::Dict) {
                found = d.items[k + 1];
                return true;
            }
        }
        return false;
    }

    void walk(uint32_t dict, const std::string & prefix, int depth) {
        if (depth > kMaxFlattenDepth) throw_format(path_, "data.pkl nests dicts deeper than " + std::to_string(kMaxFlattenDepth));
        if (!visited_.insert(dict).second) return;
        const Value & d = u_.value(dict);
        for (size_t k = 0; k + 1 < d.items.size(); k += 2) {
            const Value & key = u_.value(d.items[k]);
            if (key.kind != Kind::Str) continue;  // class objects or ints as keys: training state
            const Value & val = u_.value(d.items[k + 1]);
            std::string name = prefix + key.s;
            if (val.kind == Kind::Tensor) {
                PickledTensor t = u_.tensor(val);
                t.name = name;
                auto it = index_.find(name);
                if (it != index_.end()) out_[it->second] = std::move(t);
                else {
                    index_.emplace(name, out_.size());
                    out_.push_back(std::move(t));
                }
            } else if (val.kind == Kind::Dict) {
                walk(d.items[k + 1], name + ".", depth + 1);
            }
        }
    }
};

}  // namespace

std::vector<PickledTensor> unpickle_state_dict(const uint8_t * data, uint64_t size, const std::string & path) {
    Unpickler u(data, size, path);
    uint32_t root = u.run();
    return Flattener(u, path).run(root);
}

}  // namespace detail
}  // namespace sd
