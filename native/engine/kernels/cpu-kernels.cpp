#include "kernels/cpu-kernels.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <cmath>

#include "kernels/cpu-kernels-impl.h"
#include "core/errors.h"
#include "core/log.h"
#include "ggml-alloc.h"

namespace sd {

namespace {

// What this CPU runs of the kernels' instruction sets (the AVX-512 files are only called then).
struct CpuIsa {
    bool avx512 = false;  // AVX-512F + FMA + F16C: the f16 and f32 kernels
    bool vnni = false;    // + BW/VL/DQ/VNNI: the q8_0 / q4_0 kernel
    bool dq = false;      // + DQ: the activation kernels (ggml-cpu's AVX-512 exp and SiLU need it too)
    bool amx = false;     // + AMX-BF16 tiles the OS lets this process use: the AMX f16 kernel
};

// AMX tile data is off for a Linux process until it asks (arch_prctl ARCH_REQ_XCOMP_PERM); the
// answer also says whether the kernel supports it at all.
bool request_amx() {
#if defined(__linux__) && defined(SDNODE_HAVE_AMX_KERNELS)
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
}

CpuIsa detect_isa() {
    CpuIsa isa;
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && defined(SDNODE_HAVE_AVX512_KERNELS)
    __builtin_cpu_init();
    isa.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    isa.dq = isa.avx512 && __builtin_cpu_supports("avx512dq");
    isa.vnni = isa.dq && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vnni");
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool amx_bf16 = __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (edx & (1u << 22)) && (edx & (1u << 24));
    isa.amx = isa.dq && __builtin_cpu_supports("avx512bw") && amx_bf16 && request_amx();
#endif
    return isa;
}

// Detected once (the AMX request is a system call).
const CpuIsa & cpu_isa() {
    static const CpuIsa isa = detect_isa();
    return isa;
}

// Packed operands per thread, grown to the largest product seen and kept (a few MB); shared by
// every kernel, which all run on the compute threads one op at a time.
// Aligned to 64 bytes: the kernels' vectors then never straddle cache lines (split loads and
// stores, and store forwarding failing on them, cost up to a third of a short product's time).
// Left uninitialized: pages a product does not use are never touched (no resident memory).
void * thread_scratch(size_t bytes) {
    thread_local std::unique_ptr<float[]> scratch;
    thread_local size_t size = 0;
    const size_t floats = (bytes + sizeof(float) - 1) / sizeof(float) + 16;
    if (size < floats) {
        scratch.reset();
        scratch.reset(new float[floats]);
        size = floats;
    }
    const auto addr = reinterpret_cast<uintptr_t>(scratch.get());
    return reinterpret_cast<void *>((addr + 63) & ~static_cast<uintptr_t>(63));
}

// The abort slots (KernelAbortSlot): slot i points at a flag or is null; 0 is never handed out.
constexpr size_t kAbortSlots = 65536;
std::atomic<const std::atomic<bool> *> g_abort_slots[kAbortSlots];
std::mutex g_abort_slots_mutex;
std::vector<uint16_t> g_free_abort_slots;  // released ones, reused first
uint32_t g_next_abort_slot = 1;

// An op's slot: the top 16 bits of its userdata, in every op that polls one.
constexpr int kAbortSlotShift = 48;
uintptr_t with_slot(uint64_t packed, uint16_t slot) {
    return static_cast<uintptr_t>(packed | (uint64_t{slot} << kAbortSlotShift));
}
const std::atomic<bool> * abort_of(void * userdata) {
    return kernel_abort_flag(static_cast<uint16_t>(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(userdata)) >> kAbortSlotShift));
}
constexpr uint64_t kParamsMask = (uint64_t{1} << kAbortSlotShift) - 1;

#if defined(SDNODE_HAVE_AMX_KERNELS)
// Products the AMX kernel takes: enough rows and k to fill tiles (a 4-channel output conv
// would waste most of each), and im2col offsets that fit its 32-bit gathers.
bool amx_suits(const cpu::Gemm & g) {
    if (g.kind != cpu::Gemm::Kind::F16 || g.M < 32 || g.K < 32) return false;
    if (g.kernel_w == 0) return true;
    const int64_t floats = static_cast<int64_t>(g.nb3 / sizeof(float)) * (g.N / (g.out_w * g.out_h));
    return floats < (int64_t{1} << 31);
}
#endif

void run(const cpu::Gemm & g, int ith, int nth, bool amx = false) {
#if defined(SDNODE_HAVE_AMX_KERNELS)
    if (amx && cpu_isa().amx && amx_suits(g)) {  // a graph built elsewhere never faults here
        cpu::gemm_amx(g, ith, nth, thread_scratch(cpu::gemm_amx_scratch_bytes(g)));
        return;
    }
#endif
#if defined(SDNODE_HAVE_AVX512_KERNELS)
    cpu::gemm_avx512(g, ith, nth, static_cast<float *>(thread_scratch(cpu::gemm_scratch_floats(g) * sizeof(float))));
#else
    (void)g, (void)ith, (void)nth, (void)amx;
#endif
}

// userdata of the conv and linear ops: stride and padding (12 bits each) and which optional
// operands follow w and x in dst->src, in this order.
constexpr uintptr_t kHasBias = uintptr_t{1} << 24, kHasResidual = uintptr_t{1} << 25;
// The other layout out: a convolution's result as tokens [N, H*W, M], a linear layer's as an
// image [N, M, H, W] (its rows the pixels).
constexpr uintptr_t kOtherLayout = uintptr_t{1} << 26;
// On AMX tiles, with a work counter (work_counter()) after the other operands: the AMX kernel's
// threads take units of work one at a time, so that a core slowed down by other work on the
// machine does fewer (measured here: one vCPU's tile throughput dropping 3x for seconds while the
// other's stays; the tile unit is per physical core, shared by its hyperthreads). The exact
// kernels keep fixed shares: cut finer for the same purpose they repack too much (measured
// 10-30% slower per product).
constexpr uintptr_t kAmx = uintptr_t{1} << 27;

cpu::Gemm gemm_common(const ggml_tensor * w, const ggml_tensor * x, ggml_tensor * dst, uintptr_t flags) {
    cpu::Gemm g{};
    g.w = static_cast<const uint16_t *>(w->data);
    g.x = static_cast<const char *>(x->data);
    g.nb1 = x->nb[1];
    g.nb2 = x->nb[2];
    g.nb3 = x->nb[3];
    g.out = static_cast<float *>(dst->data);
    int next = 2;
    const auto optional = [&](uintptr_t flag) {
        return (flags & flag) ? static_cast<const float *>(dst->src[next++]->data) : nullptr;
    };
    g.bias = optional(kHasBias);
    g.residual = optional(kHasResidual);
    if (flags & kAmx) g.next_unit = static_cast<int32_t *>(dst->src[next]->data);
    return g;
}

// userdata packs the convolution's stride and padding.
void conv2d_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const ggml_tensor * w = dst->src[0];
    const ggml_tensor * x = dst->src[1];
    const auto packed = static_cast<uintptr_t>(reinterpret_cast<uintptr_t>(userdata) & kParamsMask);
    cpu::Gemm g = gemm_common(w, x, dst, packed);
    g.abort = abort_of(userdata);
    g.kernel_w = static_cast<int>(w->ne[0]);
    g.kernel_h = static_cast<int>(w->ne[1]);
    g.stride = static_cast<int>(packed & 0xfff);
    g.pad = static_cast<int>((packed >> 12) & 0xfff);
    g.in_w = x->ne[0];
    g.in_h = x->ne[1];
    g.M = w->ne[3];
    g.K = w->ne[0] * w->ne[1] * w->ne[2];
    const bool tokens = (packed & kOtherLayout) != 0;
    g.out_w = tokens ? (x->ne[0] + 2 * g.pad - g.kernel_w) / g.stride + 1 : dst->ne[0];
    g.out_h = tokens ? (x->ne[1] + 2 * g.pad - g.kernel_h) / g.stride + 1 : dst->ne[1];
    g.N = g.out_w * g.out_h * x->ne[3];
    g.out_plane = tokens ? 0 : g.out_w * g.out_h;
    run(g, ith, nth, (packed & kAmx) != 0);
}

void linear_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const ggml_tensor * w = dst->src[0];
    const ggml_tensor * x = dst->src[1];
    const auto flags = static_cast<uintptr_t>(reinterpret_cast<uintptr_t>(userdata) & kParamsMask);
    cpu::Gemm g = gemm_common(w, x, dst, flags);
    g.abort = abort_of(userdata);
    if (flags & kOtherLayout) g.out_plane = dst->ne[0] * dst->ne[1];
    g.M = w->ne[1];
    g.K = w->ne[0];
    g.ne1 = x->ne[1];
    g.ne2 = x->ne[2];
    g.N = x->ne[1] * x->ne[2] * x->ne[3];
    run(g, ith, nth, (flags & kAmx) != 0);
}

void linear_q_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
#if defined(SDNODE_HAVE_AVX512_KERNELS)
    const ggml_tensor * w = dst->src[0];
    const ggml_tensor * x = dst->src[1];
    cpu::QGemm g{};
    g.w = w->data;
    g.row_bytes = w->nb[1];
    g.q4 = w->type == GGML_TYPE_Q4_0;
    g.M = w->ne[1];
    g.K = w->ne[0];
    g.N = x->ne[1] * x->ne[2] * x->ne[3];
    g.x = static_cast<const char *>(x->data);
    g.nb1 = x->nb[1];
    g.bias = dst->src[2] ? static_cast<const float *>(dst->src[2]->data) : nullptr;
    g.out = static_cast<float *>(dst->data);
    g.abort = abort_of(userdata);
    cpu::qgemm_avx512vnni(g, ith, nth, thread_scratch(cpu::qgemm_scratch_bytes(g)));
#else
    (void)dst, (void)ith, (void)nth, (void)userdata;
#endif
}

// A float parameter carried in an op's userdata pointer (its bits), and back.
uintptr_t float_bits(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(float));
    return bits;
}
float bits_float(uintptr_t bits) {
    const auto b = static_cast<uint32_t>(bits);
    float f;
    std::memcpy(&f, &b, sizeof(float));
    return f;
}

// Per batch slice: a [K, M] rows against b [K, N] columns -> dst [M, N].
void matmul_f32_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const ggml_tensor * a = dst->src[0];
    const ggml_tensor * b = dst->src[1];
    const std::atomic<bool> * abort = abort_of(userdata);
    for (int64_t i3 = 0; i3 < dst->ne[3]; ++i3) {
        for (int64_t i2 = 0; i2 < dst->ne[2]; ++i2) {
            cpu::Gemm g{};
            g.kind = cpu::Gemm::Kind::F32;
            g.a = reinterpret_cast<const float *>(static_cast<const char *>(a->data) + i2 * a->nb[2] + i3 * a->nb[3]);
            g.a_stride = static_cast<int64_t>(a->nb[1] / sizeof(float));
            g.x = static_cast<const char *>(b->data) + i2 * b->nb[2] + i3 * b->nb[3];
            g.nb1 = b->nb[1];
            g.nb2 = g.nb3 = 0;
            g.ne1 = b->ne[1];
            g.ne2 = 1;
            g.M = a->ne[1];
            g.K = a->ne[0];
            g.N = b->ne[1];
            g.out = reinterpret_cast<float *>(static_cast<char *>(dst->data) + i2 * dst->nb[2] + i3 * dst->nb[3]);
            g.bias = nullptr;
            g.abort = abort;
            if (cpu::stop_requested(abort)) return;
            run(g, ith, nth);
        }
    }
}

// Attention, fused (cpu_attention_f32): per (image, head) slice and block of queries, the scores
// K q as ggml_mul_mat(k, q), their scaled softmax in place, then probs V as ggml_mul_mat(v^T,
// probs), by the kernels above with nth = 1. The same floats as the separate ops, but a block's
// scores stay in L2 instead of every slice's going through memory (64 MB for SD1's 32x32
// latent, written once and read twice). Threads take whole slices.
// userdata: heads (bits 0-15), the softmax scale's bits (16-47), the abort slot (48-63).
struct Attention {
    int64_t heads, d, lq, lk, slices, block;
    float scale;
};

Attention attention_of(const ggml_tensor * dst, void * userdata) {
    const auto packed = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(userdata));
    Attention a{};
    a.heads = static_cast<int64_t>(packed & 0xffff);
    a.scale = bits_float(static_cast<uintptr_t>((packed >> 16) & 0xffffffffu));
    a.d = dst->src[0]->ne[0] / a.heads;
    a.lq = dst->src[0]->ne[1];
    a.lk = dst->src[1]->ne[1];
    a.slices = a.heads * dst->src[0]->ne[2];
    // Queries per block: its scores in ~1 MB (L2), but >= 256 of them, so that the slice kernel
    // takes the keys as its vectors and stores score rows whole (measured: 128 was 13-17% slower).
    constexpr int64_t kScoresBytes = 1024 * 1024;
    const int64_t fit = kScoresBytes / (a.lk * static_cast<int64_t>(sizeof(float))) / 64 * 64;
    a.block = std::min(a.lq, std::max<int64_t>(256, fit));
    return a;
}

#if defined(SDNODE_HAVE_AVX512_KERNELS)
// The two products of a block of `n` queries (pointers set per slice and block).
cpu::Gemm attention_qk(const Attention & a, const ggml_tensor * q, const ggml_tensor * k, int64_t n) {
    cpu::Gemm g{};
    g.kind = cpu::Gemm::Kind::F32;
    g.a_stride = static_cast<int64_t>(k->nb[1] / sizeof(float));
    g.M = a.lk;  // scores[query][key] = dot(K row, Q row)
    g.K = a.d;
    g.N = n;
    g.nb1 = q->nb[1];
    g.ne1 = n;
    g.ne2 = 1;
    return g;
}
cpu::Gemm attention_pv(const Attention & a, int64_t n) {
    cpu::Gemm g{};
    g.kind = cpu::Gemm::Kind::F32;
    g.a_stride = a.lk;  // rows of V^T: one per output feature
    g.M = a.d;
    g.K = a.lk;
    g.N = n;
    g.nb1 = static_cast<size_t>(a.lk) * sizeof(float);  // rows of probs
    g.ne1 = n;
    g.ne2 = 1;
    return g;
}
#endif

void attention_f32_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
#if defined(SDNODE_HAVE_AVX512_KERNELS)
    const ggml_tensor * q = dst->src[0];
    const ggml_tensor * k = dst->src[1];
    const ggml_tensor * v = dst->src[2];
    const Attention a = attention_of(dst, userdata);
    const std::atomic<bool> * abort = abort_of(userdata);
    // Scratch: a block's scores, V^T of a slice, a block's outputs, then the products' own.
    size_t gemm_floats = 0;
    for (int64_t n : {a.block, a.lq % a.block}) {
        if (n == 0) continue;
        gemm_floats = std::max({gemm_floats, cpu::gemm_scratch_floats(attention_qk(a, q, k, n)),
                                cpu::gemm_scratch_floats(attention_pv(a, n))});
    }
    const auto round16 = [](size_t f) { return (f + 15) / 16 * 16; };  // keep each part 64-byte aligned
    const size_t scores_f = round16(a.block * a.lk), vt_f = round16(a.d * a.lk), out_f = round16(a.block * a.d);
    float * scores = static_cast<float *>(thread_scratch((scores_f + vt_f + out_f + gemm_floats) * sizeof(float)));
    float * vt = scores + scores_f;
    float * out = vt + vt_f;
    float * gemm_scratch = out + out_f;
    for (int64_t s = ith; s < a.slices; s += nth) {
        const int64_t b = s / a.heads, h = s % a.heads;
        const size_t col = static_cast<size_t>(h * a.d) * sizeof(float);
        const char * qs = static_cast<const char *>(q->data) + b * q->nb[2] + col;
        const char * ks = static_cast<const char *>(k->data) + b * k->nb[2] + col;
        const char * vs = static_cast<const char *>(v->data) + b * v->nb[2] + col;
        char * ds = static_cast<char *>(dst->data) + b * dst->nb[2] + col;
        for (int64_t key = 0; key < a.lk; ++key) {
            const float * row = reinterpret_cast<const float *>(vs + key * v->nb[1]);
            for (int64_t j = 0; j < a.d; ++j) vt[j * a.lk + key] = row[j];
        }
        for (int64_t q0 = 0; q0 < a.lq; q0 += a.block) {
            if (cpu::stop_requested(abort)) return;  // a block: ~1 MB of scores, well under a millisecond
            const int64_t n = std::min(a.block, a.lq - q0);
            cpu::Gemm qk = attention_qk(a, q, k, n);
            qk.a = reinterpret_cast<const float *>(ks);
            qk.x = qs + q0 * q->nb[1];
            qk.out = scores;
            cpu::gemm_avx512(qk, 0, 1, gemm_scratch);
            cpu::SoftMax sm{scores, scores, a.lk, n, a.scale};
            cpu::soft_max_avx512(sm, 0, 1);
            cpu::Gemm pv = attention_pv(a, n);
            pv.a = vt;
            pv.x = reinterpret_cast<const char *>(scores);
            pv.out = out;
            cpu::gemm_avx512(pv, 0, 1, gemm_scratch);
            for (int64_t i = 0; i < n; ++i) {
                std::memcpy(ds + (q0 + i) * dst->nb[1], out + i * a.d, static_cast<size_t>(a.d) * sizeof(float));
            }
        }
    }
#else
    (void)dst, (void)ith, (void)nth, (void)userdata;
#endif
}

// userdata of the group-norm op: groups (16 bits), SiLU (bit 16), eps's bits (bits 32-63).
constexpr uint64_t kNormSilu = uint64_t{1} << 16;

void group_norm_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
#if defined(SDNODE_HAVE_AVX512_KERNELS)
    const ggml_tensor * x = dst->src[0];
    const auto packed = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(userdata));
    cpu::GroupNorm g{};
    g.x = static_cast<const float *>(x->data);
    g.add = dst->src[3] ? static_cast<const float *>(dst->src[3]->data) : nullptr;
    g.out = static_cast<float *>(dst->data);
    g.W = x->ne[0];
    g.H = x->ne[1];
    g.C = x->ne[2];
    g.N = x->ne[3];
    g.groups = static_cast<int64_t>(packed & 0xffff);
    g.eps = bits_float(static_cast<uintptr_t>(packed >> 32));
    g.weight = static_cast<const float *>(dst->src[1]->data);
    g.bias = static_cast<const float *>(dst->src[2]->data);
    g.silu = (packed & kNormSilu) != 0;
    cpu::group_norm_avx512(g, ith, nth);
#else
    (void)dst, (void)ith, (void)nth, (void)userdata;
#endif
}

// userdata: eps's bits; the bias, if any, is src[2].
void layer_norm_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
#if defined(SDNODE_HAVE_AVX512_KERNELS)
    cpu::LayerNorm l{};
    l.x = static_cast<const float *>(dst->src[0]->data);
    l.out = static_cast<float *>(dst->data);
    l.cols = dst->ne[0];
    l.rows = ggml_nrows(dst);
    l.eps = bits_float(reinterpret_cast<uintptr_t>(userdata));
    l.weight = static_cast<const float *>(dst->src[1]->data);
    l.bias = dst->src[2] ? static_cast<const float *>(dst->src[2]->data) : nullptr;
    cpu::layer_norm_avx512(l, ith, nth);
#else
    (void)dst, (void)ith, (void)nth, (void)userdata;
#endif
}

// userdata: the scale's bits.
void soft_max_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
#if defined(SDNODE_HAVE_AVX512_KERNELS)
    cpu::SoftMax s{};
    s.x = static_cast<const float *>(dst->src[0]->data);
    s.out = static_cast<float *>(dst->data);
    s.cols = dst->ne[0];
    s.rows = ggml_nrows(dst);
    s.scale = bits_float(reinterpret_cast<uintptr_t>(userdata));
    cpu::soft_max_avx512(s, ith, nth);
#else
    (void)dst, (void)ith, (void)nth, (void)userdata;
#endif
}

// ggml_gelu of every f16 value (ggml-cpu computes gelu through an f16 table), filled once by
// running ggml's own op on the backend: whatever its build computes, the table holds.
std::vector<float> & gelu_table() {
    static std::vector<float> table;
    return table;
}

void geglu_op(ggml_tensor * dst, int ith, int nth, void *) {
#if defined(SDNODE_HAVE_AVX512_KERNELS)
    cpu::Geglu g{};
    g.h = static_cast<const float *>(dst->src[0]->data);
    g.out = static_cast<float *>(dst->data);
    g.inner = dst->ne[0];
    g.rows = ggml_nrows(dst);
    g.gelu_table = gelu_table().data();
    cpu::geglu_avx512(g, ith, nth);
#else
    (void)dst, (void)ith, (void)nth;
#endif
}

void check_bias(const ggml_tensor * bias, int64_t outputs, const char * op) {
    if (bias && (bias->type != GGML_TYPE_F32 || !ggml_is_contiguous(bias) || ggml_nelements(bias) != outputs)) {
        throw Error(ErrorCode::Internal, std::string(op) + " needs a contiguous f32 bias with one value per output");
    }
}

void check_operands(const ggml_tensor * w, const ggml_tensor * x, const ggml_tensor * bias, int64_t outputs, const char * op) {
    check_bias(bias, outputs, op);
    if (w->type != GGML_TYPE_F16 || x->type != GGML_TYPE_F32 || !ggml_is_contiguous(w) || x->nb[0] != sizeof(float)) {
        throw Error(ErrorCode::Internal, std::string(op) + " needs contiguous f16 weights and f32 activations");
    }
}

// The optional operands after w and x (bias, residual, work counter) and their flags.
struct Extras {
    ggml_tensor * args[5];
    int count = 2;
    uintptr_t flags = 0;
    Extras(ggml_tensor * w, ggml_tensor * x) : args{w, x, nullptr, nullptr} {}
    void add(ggml_tensor * t, uintptr_t flag) {
        if (!t) return;
        args[count++] = t;
        flags |= flag;
    }
};

// A residual must be exactly the result's shape, contiguous f32.
void check_residual(const ggml_tensor * r, const int64_t (&ne)[4], const char * op) {
    if (r && (r->type != GGML_TYPE_F32 || !ggml_is_contiguous(r) || r->ne[0] != ne[0] || r->ne[1] != ne[1] ||
              r->ne[2] != ne[2] || r->ne[3] != ne[3])) {
        throw Error(ErrorCode::Internal, std::string(op) + ": the residual must be a contiguous f32 tensor of the result's shape");
    }
}

void zero_op(ggml_tensor * dst, int ith, int, void *) {
    if (ith == 0) std::memset(dst->data, 0, ggml_nbytes(dst));
}

// A work counter for the threads of the op that takes it: zeroed by a node of its own, which the
// graph runs (and every thread has passed) before that op starts. A cache line to itself.
ggml_tensor * work_counter(ggml_context * ctx) {
    return ggml_custom_4d(ctx, GGML_TYPE_I32, 16, 1, 1, 1, nullptr, 0, zero_op, 1, nullptr);
}

}  // namespace

bool cpu_kernels_available() {
    static const bool available = [] {
        const char * env = std::getenv("SDNODE_CPU_KERNELS");
        if (env && std::strcmp(env, "0") == 0) return false;
        return cpu_isa().avx512;
    }();
    return available;
}

namespace {

// One check: `ours` and `theirs` computed in one graph on `backend` from seeded inputs.
struct SelfCheck {
    ggml_context * ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    std::vector<std::pair<ggml_tensor *, ggml_tensor *>> pairs;
    SelfCheck() {
        ggml_init_params p{ggml_tensor_overhead() * 192 + ggml_graph_overhead(), nullptr, true};
        ctx = ggml_init(p);
    }
    ~SelfCheck() {
        if (buf) ggml_backend_buffer_free(buf);
        ggml_free(ctx);
    }
    ggml_tensor * input(ggml_type type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
        return ggml_new_tensor_4d(ctx, type, ne0, ne1, ne2, ne3);
    }
    // Allocates every tensor on `backend`, lets `set_inputs` fill the inputs, computes `outputs`.
    bool compute(ggml_backend_t backend, const std::vector<ggml_tensor *> & outputs, const std::function<void()> & set_inputs) {
        ggml_cgraph * gf = ggml_new_graph(ctx);
        for (ggml_tensor * t : outputs) ggml_build_forward_expand(gf, t);
        buf = ggml_backend_alloc_ctx_tensors(ctx, backend);
        if (!buf) return false;
        set_inputs();
        return ggml_backend_graph_compute(backend, gf) == GGML_STATUS_SUCCESS;
    }
};

void fill_inputs(ggml_context * ctx) {
    uint32_t state = 12345;
    for (ggml_tensor * t = ggml_get_first_tensor(ctx); t; t = ggml_get_next_tensor(ctx, t)) {
        if (t->op != GGML_OP_NONE) continue;
        std::vector<float> v(static_cast<size_t>(ggml_nelements(t)));
        for (float & x : v) {
            state = state * 1664525u + 1013904223u;
            x = (static_cast<float>(state >> 8) / 16777216.0f - 0.5f) * 2.0f;
        }
        if (t->type == GGML_TYPE_F16) {
            std::vector<ggml_fp16_t> h(v.size());
            ggml_fp32_to_fp16_row(v.data(), h.data(), static_cast<int64_t>(v.size()));
            ggml_backend_tensor_set(t, h.data(), 0, ggml_nbytes(t));
        } else {
            ggml_backend_tensor_set(t, v.data(), 0, ggml_nbytes(t));
        }
    }
}

// True when every pair matches bit for bit on `backend`.
bool run_checks(SelfCheck & c, ggml_backend_t backend) {
    std::vector<ggml_tensor *> outputs;
    for (auto & [a, b] : c.pairs) outputs.insert(outputs.end(), {a, b});
    if (!c.compute(backend, outputs, [&] { fill_inputs(c.ctx); })) return false;
    for (auto & [a, b] : c.pairs) {
        std::vector<char> x(ggml_nbytes(a)), y(ggml_nbytes(b));
        if (x.size() != y.size()) return false;
        ggml_backend_tensor_get(a, x.data(), 0, x.size());
        ggml_backend_tensor_get(b, y.data(), 0, y.size());
        if (std::memcmp(x.data(), y.data(), x.size()) != 0) return false;
    }
    return true;
}

// Runs ggml_gelu on every f16 value (as f32) on `backend` into gelu_table().
bool fill_gelu_table(ggml_backend_t backend) {
    constexpr int64_t kValues = 65536;
    SelfCheck c;
    ggml_tensor * in = c.input(GGML_TYPE_F32, kValues, 1, 1, 1);
    ggml_tensor * out = ggml_gelu(c.ctx, in);
    std::vector<ggml_fp16_t> halves(kValues);
    for (int64_t i = 0; i < kValues; ++i) halves[i] = static_cast<ggml_fp16_t>(i);
    std::vector<float> values(kValues);
    ggml_fp16_to_fp32_row(halves.data(), values.data(), kValues);
    if (!c.compute(backend, {out}, [&] { ggml_backend_tensor_set(in, values.data(), 0, ggml_nbytes(in)); })) return false;
    gelu_table().resize(kValues);
    ggml_backend_tensor_get(out, gelu_table().data(), 0, ggml_nbytes(out));
    return true;
}

// ggml's chains that the activation kernels replace, against them: rows that are whole 16-lane
// blocks, partial ones and shorter ones (ggml switches to libm there), values large enough to
// saturate the exp approximation, GEGLU gates past +-10.
bool verify_activations(ggml_backend_t backend) {
    if (!fill_gelu_table(backend)) return false;
    SelfCheck c;
    struct Norm {
        int64_t w, h, ch, n;
        float weight_scale;
    };
    for (const Norm & s : {Norm{32, 3, 64, 2, 1.0f}, Norm{8, 8, 64, 1, 100.0f}, Norm{20, 5, 32, 2, 3.0f}, Norm{4, 4, 64, 2, 1.0f}}) {
        ggml_tensor * x = c.input(GGML_TYPE_F32, s.w, s.h, s.ch, s.n);
        ggml_tensor * w = ggml_scale(c.ctx, c.input(GGML_TYPE_F32, s.ch, 1, 1, 1), s.weight_scale);
        ggml_tensor * b = c.input(GGML_TYPE_F32, s.ch, 1, 1, 1);
        ggml_tensor * theirs = ggml_group_norm(c.ctx, x, 32, 1e-6f);
        theirs = ggml_mul(c.ctx, theirs, ggml_reshape_4d(c.ctx, w, 1, 1, s.ch, 1));
        theirs = ggml_add(c.ctx, theirs, ggml_reshape_4d(c.ctx, b, 1, 1, s.ch, 1));
        c.pairs.push_back({theirs, cpu_group_norm(c.ctx, x, w, b, 32, 1e-6f, false)});
        c.pairs.push_back({ggml_silu(c.ctx, theirs), cpu_group_norm(c.ctx, x, w, b, 32, 1e-6f, true)});
        // With a per-image, per-channel addend first (the UNet's time embedding).
        ggml_tensor * e = c.input(GGML_TYPE_F32, s.ch, s.n, 1, 1);
        ggml_tensor * xe = ggml_add(c.ctx, x, ggml_reshape_4d(c.ctx, e, 1, 1, s.ch, s.n));
        ggml_tensor * theirs_e = ggml_group_norm(c.ctx, xe, 32, 1e-6f);
        theirs_e = ggml_mul(c.ctx, theirs_e, ggml_reshape_4d(c.ctx, w, 1, 1, s.ch, 1));
        theirs_e = ggml_add(c.ctx, theirs_e, ggml_reshape_4d(c.ctx, b, 1, 1, s.ch, 1));
        c.pairs.push_back({ggml_silu(c.ctx, theirs_e), cpu_group_norm(c.ctx, x, w, b, 32, 1e-6f, true, e)});
    }
    struct Rows {
        int64_t cols, rows, batch;
        float input_scale;
    };
    for (const Rows & s : {Rows{320, 19, 1, 1.0f}, Rows{77, 5, 2, 3.0f}, Rows{768, 9, 1, 1.0f}}) {
        ggml_tensor * x = ggml_scale(c.ctx, c.input(GGML_TYPE_F32, s.cols, s.rows, s.batch, 1), s.input_scale);
        ggml_tensor * w = c.input(GGML_TYPE_F32, s.cols, 1, 1, 1);
        ggml_tensor * b = c.input(GGML_TYPE_F32, s.cols, 1, 1, 1);
        ggml_tensor * theirs = ggml_mul(c.ctx, ggml_norm(c.ctx, x, 1e-5f), w);
        c.pairs.push_back({theirs, cpu_layer_norm(c.ctx, x, w, nullptr, 1e-5f)});
        c.pairs.push_back({ggml_add(c.ctx, theirs, b), cpu_layer_norm(c.ctx, x, w, b, 1e-5f)});
    }
    for (const Rows & s : {Rows{77, 5, 3, 1.0f}, Rows{256, 4, 2, 1.0f}, Rows{40, 6, 1, 300.0f}, Rows{13, 3, 1, 1.0f}}) {
        ggml_tensor * x = ggml_scale(c.ctx, c.input(GGML_TYPE_F32, s.cols, s.rows, s.batch, 1), s.input_scale);
        c.pairs.push_back({ggml_soft_max(c.ctx, ggml_scale(c.ctx, x, 0.158f)), cpu_soft_max(c.ctx, x, 0.158f)});
    }
    for (int64_t inner : {40, 64}) {
        ggml_tensor * h = ggml_scale(c.ctx, c.input(GGML_TYPE_F32, 2 * inner, 7, 2, 1), 12.0f);
        ggml_tensor * value = ggml_cont(c.ctx, ggml_view_3d(c.ctx, h, inner, 7, 2, h->nb[1], h->nb[2], 0));
        ggml_tensor * gate =
            ggml_cont(c.ctx, ggml_view_3d(c.ctx, h, inner, 7, 2, h->nb[1], h->nb[2], inner * sizeof(float)));
        c.pairs.push_back({ggml_mul(c.ctx, value, ggml_gelu(c.ctx, gate)), cpu_geglu(c.ctx, h)});
    }
    return run_checks(c, backend);
}

// True when every pair agrees within float rounding on `backend`: relative L2 error below 1e-5 and
// no element off by more than 1e-4 of the largest (a wrong index or layout is off by ~100%).
bool run_close_checks(SelfCheck & c, ggml_backend_t backend) {
    std::vector<ggml_tensor *> outputs;
    for (auto & [a, b] : c.pairs) outputs.insert(outputs.end(), {a, b});
    if (!c.compute(backend, outputs, [&] { fill_inputs(c.ctx); })) return false;
    for (auto & [a, b] : c.pairs) {
        if (ggml_nelements(a) != ggml_nelements(b)) return false;
        std::vector<float> x(static_cast<size_t>(ggml_nelements(a))), y(x.size());
        ggml_backend_tensor_get(a, x.data(), 0, ggml_nbytes(a));
        ggml_backend_tensor_get(b, y.data(), 0, ggml_nbytes(b));
        if (!cpu_close(x.data(), y.data(), x.size())) return false;
    }
    return true;
}

// The AMX kernel against ggml's ops: both conv paths (rows of pixels, gathered windows), stride
// and padding, both output layouts, bias and residual, partial tiles in rows, columns and k.
bool verify_amx(ggml_backend_t backend) {
    SelfCheck c;
    ggml_tensor * w = c.input(GGML_TYPE_F16, 3, 3, 20, 35);
    ggml_tensor * x = c.input(GGML_TYPE_F32, 19, 7, 20, 2);
    ggml_tensor * bias = c.input(GGML_TYPE_F32, 35, 1, 1, 1);
    ggml_tensor * conv = ggml_conv_2d(c.ctx, w, x, 1, 1, 1, 1, 1, 1);
    ggml_tensor * res = c.input(GGML_TYPE_F32, 19, 7, 35, 2);
    c.pairs.push_back({ggml_add(c.ctx, res, ggml_add(c.ctx, conv, ggml_reshape_4d(c.ctx, bias, 1, 1, 35, 1))),
                       cpu_conv2d_f16(c.ctx, w, x, 1, 1, bias, res, false, true)});
    ggml_tensor * x2 = c.input(GGML_TYPE_F32, 6, 5, 20, 3);  // rows shorter than a tile: gathered
    c.pairs.push_back({ggml_conv_2d(c.ctx, w, x2, 2, 2, 1, 1, 1, 1), cpu_conv2d_f16(c.ctx, w, x2, 2, 1, nullptr, nullptr, false, true)});
    c.pairs.push_back({ggml_cont(c.ctx, ggml_permute(c.ctx, ggml_reshape_3d(c.ctx, conv, 19 * 7, 35, 2), 1, 0, 2, 3)),
                       cpu_conv2d_f16(c.ctx, w, x, 1, 1, nullptr, nullptr, true, true)});
    ggml_tensor * wl = c.input(GGML_TYPE_F16, 72, 40, 1, 1);
    ggml_tensor * xl = c.input(GGML_TYPE_F32, 72, 37, 2, 1);
    ggml_tensor * bl = c.input(GGML_TYPE_F32, 40, 1, 1, 1);
    c.pairs.push_back({ggml_add(c.ctx, ggml_mul_mat(c.ctx, wl, xl), bl), cpu_linear_f16(c.ctx, wl, xl, bl, nullptr, 0, 0, true)});
    ggml_tensor * xi = c.input(GGML_TYPE_F32, 72, 12, 2, 1);  // 4 x 3 pixels' tokens -> image
    ggml_tensor * image = ggml_cont(c.ctx, ggml_permute(c.ctx, ggml_mul_mat(c.ctx, wl, xi), 1, 0, 2, 3));
    c.pairs.push_back({ggml_reshape_4d(c.ctx, image, 4, 3, 40, 2), cpu_linear_f16(c.ctx, wl, xi, nullptr, nullptr, 4, 3, true)});
    return run_close_checks(c, backend);
}

CpuKernels verify(ggml_backend_t backend) {
    CpuKernels k;
    k.activations = cpu_isa().dq && verify_activations(backend);
    {
        // f16: leftovers, a partial register tile, stride and padding, 16-row reduction.
        SelfCheck c;
        ggml_tensor * w = c.input(GGML_TYPE_F16, 3, 3, 20, 35);
        ggml_tensor * x = c.input(GGML_TYPE_F32, 9, 7, 20, 2);
        ggml_tensor * bias = c.input(GGML_TYPE_F32, 35, 1, 1, 1);
        c.pairs.push_back({ggml_add(c.ctx, ggml_conv_2d(c.ctx, w, x, 1, 1, 1, 1, 1, 1), ggml_reshape_4d(c.ctx, bias, 1, 1, 35, 1)),
                           cpu_conv2d_f16(c.ctx, w, x, 1, 1, bias)});
        ggml_tensor * w2 = c.input(GGML_TYPE_F16, 128, 33, 1, 1);
        ggml_tensor * x2 = c.input(GGML_TYPE_F32, 128, 13, 1, 1);
        c.pairs.push_back({ggml_mul_mat(c.ctx, w2, x2), cpu_linear_f16(c.ctx, w2, x2)});
        // The slice kernel's conv and linear paths (>= 128 columns).
        ggml_tensor * w3 = c.input(GGML_TYPE_F16, 3, 3, 64, 20);
        ggml_tensor * x3 = c.input(GGML_TYPE_F32, 12, 11, 64, 1);
        c.pairs.push_back({ggml_conv_2d(c.ctx, w3, x3, 1, 1, 1, 1, 1, 1), cpu_conv2d_f16(c.ctx, w3, x3, 1, 1)});
        ggml_tensor * w4 = c.input(GGML_TYPE_F16, 256, 20, 1, 1);
        ggml_tensor * x4 = c.input(GGML_TYPE_F32, 256, 130, 1, 1);
        c.pairs.push_back({ggml_mul_mat(c.ctx, w4, x4), cpu_linear_f16(c.ctx, w4, x4)});
        k.f16 = run_checks(c, backend);
    }
    if (k.f16) {
        // f32: every leftover shape attention meets (16-blocks, an 8-block, fused ones).
        SelfCheck c;
        for (int64_t K : {40, 77, 80, 160, 16, 13, 64 + 24}) {
            ggml_tensor * a = c.input(GGML_TYPE_F32, K, 37, 2, 1);
            ggml_tensor * b = c.input(GGML_TYPE_F32, K, 11, 2, 1);
            c.pairs.push_back({ggml_mul_mat(c.ctx, a, b), cpu_matmul_f32(c.ctx, a, b)});
        }
        for (int64_t K : {40, 64 + 24}) {  // the slice kernel's path (>= 128 columns)
            ggml_tensor * a = c.input(GGML_TYPE_F32, K, 20, 1, 1);
            ggml_tensor * b = c.input(GGML_TYPE_F32, K, 130, 1, 1);
            c.pairs.push_back({ggml_mul_mat(c.ctx, a, b), cpu_matmul_f32(c.ctx, a, b)});
        }
        k.f32 = run_checks(c, backend);
    }
    k.amx = k.f16 && cpu_isa().amx && verify_amx(backend);
    if (k.f16 && cpu_isa().vnni) {
        // q8_0 / q4_0 linear layers: partial tiles, a bias, an odd column count.
        SelfCheck c;
        for (ggml_type type : {GGML_TYPE_Q8_0, GGML_TYPE_Q4_0}) {
            ggml_tensor * w = c.input(type, 96, 13, 1, 1);
            ggml_tensor * x = c.input(GGML_TYPE_F32, 96, 7, 1, 1);
            ggml_tensor * bias = c.input(GGML_TYPE_F32, 13, 1, 1, 1);
            c.pairs.push_back({ggml_add(c.ctx, ggml_mul_mat(c.ctx, w, x), bias), cpu_linear_q(c.ctx, w, x, bias)});
        }
        k.quant = run_checks(c, backend);
    }
    return k;
}

}  // namespace

CpuKernels cpu_kernels_for(ggml_backend_t backend) {
    ggml_backend_dev_t dev = backend ? ggml_backend_get_device(backend) : nullptr;
    if (!dev || ggml_backend_dev_type(dev) != GGML_BACKEND_DEVICE_TYPE_CPU || !cpu_kernels_available()) return {};
    // Once per process: every CPU backend runs the same ggml-cpu code.
    static const CpuKernels verified = [&] {
        CpuKernels k = verify(backend);
        const char * env = std::getenv("SDNODE_CPU_AMX");
        if (env && std::strcmp(env, "0") == 0) k.amx = false;
        if (!k.f16) log(LogLevel::Warn, "sdnode's f16 CPU kernels do not match this ggml build; using ggml's ops");
        else if (!k.f32) log(LogLevel::Warn, "sdnode's f32 attention kernel does not match this ggml build; using ggml's op");
        if (cpu_isa().dq && !k.activations) {
            log(LogLevel::Warn, "sdnode's group norm / softmax / GEGLU kernels do not match this ggml build; using ggml's ops");
        }
        return k;
    }();
    return verified;
}

bool cpu_close(const float * ours, const float * theirs, size_t n) {
    double diff2 = 0, ref2 = 0, max_ref = 0, max_diff = 0;
    for (size_t i = 0; i < n; ++i) {
        const double d = static_cast<double>(ours[i]) - theirs[i];
        if (!(std::fabs(d) <= 1e300)) return false;  // NaN or inf where ggml has a number
        diff2 += d * d;
        ref2 += static_cast<double>(theirs[i]) * theirs[i];
        max_ref = std::max(max_ref, std::fabs(static_cast<double>(theirs[i])));
        max_diff = std::max(max_diff, std::fabs(d));
    }
    return diff2 <= 1e-10 * ref2 && max_diff <= 1e-4 * max_ref;
}

KernelAbortSlot::KernelAbortSlot() {
    std::lock_guard<std::mutex> lock(g_abort_slots_mutex);
    if (!g_free_abort_slots.empty()) {
        id_ = g_free_abort_slots.back();
        g_free_abort_slots.pop_back();
    } else if (g_next_abort_slot < kAbortSlots) {
        id_ = static_cast<uint16_t>(g_next_abort_slot++);
    } else {
        throw Error(ErrorCode::Internal, "too many graph runners at once (65535 kernel abort slots)");
    }
    g_abort_slots[id_].store(nullptr);
}

KernelAbortSlot::~KernelAbortSlot() {
    g_abort_slots[id_].store(nullptr);
    std::lock_guard<std::mutex> lock(g_abort_slots_mutex);
    g_free_abort_slots.push_back(id_);
}

void KernelAbortSlot::point_at(const std::atomic<bool> * flag) { g_abort_slots[id_].store(flag); }

const std::atomic<bool> * kernel_abort_flag(uint16_t id) { return id ? g_abort_slots[id].load() : nullptr; }

CpuKernels cpu_kernels_on_cpu() {
    if (!cpu_kernels_available()) return {};
    ggml_backend_t cpu = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr);
    if (!cpu) return {};
    const CpuKernels k = cpu_kernels_for(cpu);
    ggml_backend_free(cpu);
    return k;
}

ggml_tensor * cpu_conv2d_f16(ggml_context * ctx, ggml_tensor * w, ggml_tensor * x, int stride, int padding,
                             ggml_tensor * bias, ggml_tensor * residual, bool tokens_out, bool amx, uint16_t abort_slot) {
    check_operands(w, x, bias, w->ne[3], "cpu_conv2d_f16");
    if (stride < 1 || padding < 0 || stride > 0xfff || padding > 0xfff || w->ne[2] != x->ne[2]) {
        throw Error(ErrorCode::Internal, "cpu_conv2d_f16: bad stride, padding or channel count");
    }
    const int64_t ow = (x->ne[0] + 2 * padding - w->ne[0]) / stride + 1, oh = (x->ne[1] + 2 * padding - w->ne[1]) / stride + 1;
    const int64_t image[4] = {ow, oh, w->ne[3], x->ne[3]}, tokens[4] = {w->ne[3], ow * oh, x->ne[3], 1};
    const int64_t (&ne)[4] = tokens_out ? tokens : image;
    check_residual(residual, ne, "cpu_conv2d_f16");
    Extras e(w, x);
    e.add(bias, kHasBias);
    e.add(residual, kHasResidual);
    if (tokens_out) e.flags |= kOtherLayout;
    if (amx) e.add(work_counter(ctx), kAmx);
    void * params = reinterpret_cast<void *>(
        with_slot(static_cast<uint64_t>(stride) | (static_cast<uint64_t>(padding) << 12) | e.flags, abort_slot));
    return ggml_custom_4d(ctx, GGML_TYPE_F32, ne[0], ne[1], ne[2], ne[3], e.args, e.count, conv2d_op, GGML_N_TASKS_MAX,
                          params);
}

ggml_tensor * cpu_matmul_f32(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b, uint16_t abort_slot) {
    const auto rows_ok = [](const ggml_tensor * t) {
        return t->type == GGML_TYPE_F32 && t->nb[0] == sizeof(float) && t->nb[1] % sizeof(float) == 0 &&
               t->nb[1] >= t->ne[0] * sizeof(float);
    };
    if (!rows_ok(a) || !rows_ok(b) || a->ne[0] != b->ne[0] || a->ne[2] != b->ne[2] || a->ne[3] != b->ne[3]) {
        throw Error(ErrorCode::Internal, "cpu_matmul_f32 needs f32 operands with contiguous rows of the same width, and the same batch");
    }
    ggml_tensor * args[] = {a, b};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, a->ne[1], b->ne[1], b->ne[2], b->ne[3], args, 2, matmul_f32_op,
                          GGML_N_TASKS_MAX, reinterpret_cast<void *>(with_slot(0, abort_slot)));
}

ggml_tensor * cpu_attention_f32(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, int heads, float scale,
                                uint16_t abort_slot) {
    const auto rows_ok = [](const ggml_tensor * t) {
        return t->type == GGML_TYPE_F32 && t->nb[0] == sizeof(float) && t->ne[3] == 1;
    };
    if (sizeof(uintptr_t) < 8 || !rows_ok(q) || !rows_ok(k) || !rows_ok(v) || heads <= 0 || heads > 0xffff ||
        q->ne[0] % heads != 0 || k->ne[0] != q->ne[0] || v->ne[0] != q->ne[0] || v->ne[1] != k->ne[1] ||
        k->ne[2] != q->ne[2] || v->ne[2] != q->ne[2]) {
        throw Error(ErrorCode::Internal,
                    "cpu_attention_f32 needs f32 q [N, Lq, heads*d], k and v [N, Lk, heads*d] with unit element stride");
    }
    const uint64_t packed = static_cast<uint64_t>(heads) | (uint64_t{float_bits(scale)} << 16);
    ggml_tensor * args[] = {q, k, v};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, q->ne[0], q->ne[1], q->ne[2], 1, args, 3, attention_f32_op, GGML_N_TASKS_MAX,
                          reinterpret_cast<void *>(with_slot(packed, abort_slot)));
}

ggml_tensor * cpu_linear_q(ggml_context * ctx, ggml_tensor * w, ggml_tensor * x, ggml_tensor * bias, uint16_t abort_slot) {
    if ((w->type != GGML_TYPE_Q8_0 && w->type != GGML_TYPE_Q4_0) || ggml_n_dims(w) != 2 || !ggml_is_contiguous(w) ||
        x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x) || w->ne[0] != x->ne[0] || w->ne[0] % 32 != 0) {
        throw Error(ErrorCode::Internal, "cpu_linear_q needs contiguous q8_0/q4_0 weights and contiguous f32 rows of the same width");
    }
    check_bias(bias, w->ne[1], "cpu_linear_q");
    ggml_tensor * args[] = {w, x, bias};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, w->ne[1], x->ne[1], x->ne[2], x->ne[3], args, bias ? 3 : 2, linear_q_op,
                          GGML_N_TASKS_MAX, reinterpret_cast<void *>(with_slot(0, abort_slot)));
}

ggml_tensor * cpu_linear_f16(ggml_context * ctx, ggml_tensor * w, ggml_tensor * x, ggml_tensor * bias,
                             ggml_tensor * residual, int64_t image_w, int64_t image_h, bool amx, uint16_t abort_slot) {
    check_operands(w, x, bias, w->ne[1], "cpu_linear_f16");
    if (ggml_n_dims(w) != 2 || w->ne[0] != x->ne[0]) {
        throw Error(ErrorCode::Internal, "cpu_linear_f16: weight and input widths differ");
    }
    const bool image_out = image_w > 0;
    if (image_out && (image_h <= 0 || image_w * image_h != x->ne[1] || x->ne[3] != 1)) {
        throw Error(ErrorCode::Internal, "cpu_linear_f16: an image result needs [N, W*H, C] rows");
    }
    const int64_t rows[4] = {w->ne[1], x->ne[1], x->ne[2], x->ne[3]}, image[4] = {image_w, image_h, w->ne[1], x->ne[2]};
    const int64_t (&ne)[4] = image_out ? image : rows;
    check_residual(residual, ne, "cpu_linear_f16");
    Extras e(w, x);
    e.add(bias, kHasBias);
    e.add(residual, kHasResidual);
    if (image_out) e.flags |= kOtherLayout;
    if (amx) e.add(work_counter(ctx), kAmx);
    return ggml_custom_4d(ctx, GGML_TYPE_F32, ne[0], ne[1], ne[2], ne[3], e.args, e.count, linear_op, GGML_N_TASKS_MAX,
                          reinterpret_cast<void *>(with_slot(e.flags, abort_slot)));
}

ggml_tensor * cpu_group_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * weight, ggml_tensor * bias, int groups,
                             float eps, bool silu, ggml_tensor * add) {
    const int64_t channels = x->ne[2];
    const auto per_channel = [&](const ggml_tensor * t) {
        return t->type == GGML_TYPE_F32 && ggml_is_contiguous(t) && ggml_nelements(t) == channels;
    };
    if (sizeof(uintptr_t) < 8 || x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x) || groups <= 0 || groups > 0xffff ||
        channels % groups != 0 || !per_channel(weight) || !per_channel(bias) ||
        (add && (add->type != GGML_TYPE_F32 || !ggml_is_contiguous(add) || ggml_nelements(add) != channels * x->ne[3]))) {
        throw Error(ErrorCode::Internal,
                    "cpu_group_norm needs a contiguous f32 input whose channels divide into the groups, f32 weight and bias per "
                    "channel, and an f32 addend per image and channel");
    }
    const uint64_t packed = static_cast<uint64_t>(groups) | (silu ? kNormSilu : 0) | (uint64_t{float_bits(eps)} << 32);
    ggml_tensor * args[] = {x, weight, bias, add};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], args, add ? 4 : 3, group_norm_op,
                          GGML_N_TASKS_MAX, reinterpret_cast<void *>(static_cast<uintptr_t>(packed)));
}

ggml_tensor * cpu_layer_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * weight, ggml_tensor * bias, float eps) {
    const auto per_column = [&](const ggml_tensor * t) {
        return t->type == GGML_TYPE_F32 && ggml_is_contiguous(t) && ggml_nelements(t) == x->ne[0];
    };
    if (x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x) || !per_column(weight) || (bias && !per_column(bias))) {
        throw Error(ErrorCode::Internal, "cpu_layer_norm needs a contiguous f32 input and f32 weight (and bias) of its row width");
    }
    ggml_tensor * args[] = {x, weight, bias};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], args, bias ? 3 : 2, layer_norm_op,
                          GGML_N_TASKS_MAX, reinterpret_cast<void *>(float_bits(eps)));
}

ggml_tensor * cpu_soft_max(ggml_context * ctx, ggml_tensor * x, float scale) {
    if (x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x)) {
        throw Error(ErrorCode::Internal, "cpu_soft_max needs a contiguous f32 input");
    }
    ggml_tensor * args[] = {x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], args, 1, soft_max_op,
                          GGML_N_TASKS_MAX, reinterpret_cast<void *>(float_bits(scale)));
}

ggml_tensor * cpu_geglu(ggml_context * ctx, ggml_tensor * h) {
    if (h->type != GGML_TYPE_F32 || !ggml_is_contiguous(h) || h->ne[0] % 2 != 0 || gelu_table().empty()) {
        throw Error(ErrorCode::Internal, "cpu_geglu needs a contiguous f32 input of even width (and the verified gelu table)");
    }
    ggml_tensor * args[] = {h};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, h->ne[0] / 2, h->ne[1], h->ne[2], h->ne[3], args, 1, geglu_op,
                          GGML_N_TASKS_MAX, nullptr);
}

}  // namespace sd
