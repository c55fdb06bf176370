#include "cpu-kernels.h"

#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu-kernels-impl.h"
#include "errors.h"

namespace sd {

namespace {

bool cpu_has_avx512() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && defined(SDNODE_HAVE_AVX512_KERNELS)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return false;
#endif
}

// Packed activations per thread, grown to the largest product seen and kept (a few MB).
float * thread_scratch(size_t floats) {
    thread_local std::vector<float> scratch;
    if (scratch.size() < floats) scratch.resize(floats);
    return scratch.data();
}

void run(const cpu::F16Gemm & g, int ith, int nth) {
#if defined(SDNODE_HAVE_AVX512_KERNELS)
    cpu::f16_gemm_avx512(g, ith, nth, thread_scratch(cpu::f16_gemm_scratch_floats(g)));
#else
    (void)g, (void)ith, (void)nth;
#endif
}

cpu::F16Gemm gemm_common(const ggml_tensor * w, const ggml_tensor * x, ggml_tensor * dst) {
    cpu::F16Gemm g{};
    g.w = static_cast<const uint16_t *>(w->data);
    g.x = static_cast<const char *>(x->data);
    g.nb1 = x->nb[1];
    g.nb2 = x->nb[2];
    g.nb3 = x->nb[3];
    g.out = static_cast<float *>(dst->data);
    return g;
}

// userdata packs the convolution's stride and padding.
void conv2d_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const ggml_tensor * w = dst->src[0];
    const ggml_tensor * x = dst->src[1];
    const auto packed = reinterpret_cast<uintptr_t>(userdata);
    cpu::F16Gemm g = gemm_common(w, x, dst);
    g.kernel_w = static_cast<int>(w->ne[0]);
    g.kernel_h = static_cast<int>(w->ne[1]);
    g.stride = static_cast<int>(packed & 0xffff);
    g.pad = static_cast<int>(packed >> 16);
    g.in_w = x->ne[0];
    g.in_h = x->ne[1];
    g.out_w = dst->ne[0];
    g.out_h = dst->ne[1];
    g.M = w->ne[3];
    g.K = w->ne[0] * w->ne[1] * w->ne[2];
    g.N = dst->ne[0] * dst->ne[1] * dst->ne[3];
    run(g, ith, nth);
}

void linear_op(ggml_tensor * dst, int ith, int nth, void *) {
    const ggml_tensor * w = dst->src[0];
    const ggml_tensor * x = dst->src[1];
    cpu::F16Gemm g = gemm_common(w, x, dst);
    g.M = w->ne[1];
    g.K = w->ne[0];
    g.ne1 = x->ne[1];
    g.ne2 = x->ne[2];
    g.N = x->ne[1] * x->ne[2] * x->ne[3];
    run(g, ith, nth);
}

void check_operands(const ggml_tensor * w, const ggml_tensor * x, const char * op) {
    if (w->type != GGML_TYPE_F16 || x->type != GGML_TYPE_F32 || !ggml_is_contiguous(w) || x->nb[0] != sizeof(float)) {
        throw Error(ErrorCode::Internal, std::string(op) + " needs contiguous f16 weights and f32 activations");
    }
}

}  // namespace

bool cpu_kernels_available() {
    static const bool available = [] {
        const char * env = std::getenv("SDNODE_CPU_KERNELS");
        if (env && std::strcmp(env, "0") == 0) return false;
        return cpu_has_avx512();
    }();
    return available;
}

ggml_tensor * cpu_conv2d_f16(ggml_context * ctx, ggml_tensor * w, ggml_tensor * x, int stride, int padding) {
    check_operands(w, x, "cpu_conv2d_f16");
    if (stride < 1 || padding < 0 || stride > 0xffff || padding > 0xffff || w->ne[2] != x->ne[2]) {
        throw Error(ErrorCode::Internal, "cpu_conv2d_f16: bad stride, padding or channel count");
    }
    const int64_t out_w = (x->ne[0] + 2 * padding - w->ne[0]) / stride + 1;
    const int64_t out_h = (x->ne[1] + 2 * padding - w->ne[1]) / stride + 1;
    ggml_tensor * args[] = {w, x};
    void * params = reinterpret_cast<void *>(static_cast<uintptr_t>(stride) | (static_cast<uintptr_t>(padding) << 16));
    return ggml_custom_4d(ctx, GGML_TYPE_F32, out_w, out_h, w->ne[3], x->ne[3], args, 2, conv2d_op, GGML_N_TASKS_MAX,
                          params);
}

ggml_tensor * cpu_linear_f16(ggml_context * ctx, ggml_tensor * w, ggml_tensor * x) {
    check_operands(w, x, "cpu_linear_f16");
    if (ggml_n_dims(w) != 2 || w->ne[0] != x->ne[0]) {
        throw Error(ErrorCode::Internal, "cpu_linear_f16: weight and input widths differ");
    }
    ggml_tensor * args[] = {w, x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, w->ne[1], x->ne[1], x->ne[2], x->ne[3], args, 2, linear_op,
                          GGML_N_TASKS_MAX, nullptr);
}

}  // namespace sd
