// Times sdnode's kernels (f16 convolutions and linear layers, q8_0/q4_0 linear layers, f32
// attention products) on the shapes of an SD1 UNet step and VAE decode at 256x256 (2 threads by
// default) against ggml's im2col + mul_mat / mul_mat, printing GFLOP/s side by side.
// Not a test: `build-tests/kernel_bench [threads] [reps] [filter]`; KBENCH_GGML=1 adds ggml's op,
// KBENCH_COLD=1 flushes the caches before each run.
#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cpu-kernels.h"
#include "ggml-cpu.h"
#include "ggml.h"

namespace {

struct Shape {
    const char * name;
    int64_t W, H, IC, OC, N;
    int k;
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// KBENCH_COLD=1: caches flushed before each run (a UNet's weights come from memory, not L3).
void flush_caches() {
    static const bool cold = std::getenv("KBENCH_COLD") != nullptr;
    if (!cold) return;
    static std::vector<char> junk(size_t(512) << 20);
    for (size_t i = 0; i < junk.size(); i += 64) junk[i] = static_cast<char>(junk[i] + 1);
}

double time_graph(ggml_context * ctx, ggml_tensor * out, int threads, int reps) {
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    std::vector<double> t;
    for (int r = 0; r < reps + 1; ++r) {
        flush_caches();
        const auto a = std::chrono::steady_clock::now();
        ggml_graph_compute_with_ctx(ctx, gf, threads);
        const auto b = std::chrono::steady_clock::now();
        if (r > 0) t.push_back(std::chrono::duration<double>(b - a).count());
    }
    return *std::min_element(t.begin(), t.end());  // least disturbed run: this VM is noisy
}

}  // namespace

int main(int argc, char ** argv) {
    const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
    const int reps = argc > 2 ? std::atoi(argv[2]) : 3;
    const char * filter = argc > 3 ? argv[3] : nullptr;
    const bool with_ggml = std::getenv("KBENCH_GGML") != nullptr;
    // Verifies the kernels once; f16 products then also run on the AVX-512 kernel (bit for bit
    // ggml's numbers) where AMX takes them by default.
    const bool amx = sd::cpu_kernels_on_cpu().amx;
    const Shape shapes[] = {
        {"unet 32x32 320->320", 32, 32, 320, 320, 2, 3},    {"unet 32x32 960->320", 32, 32, 960, 320, 2, 3},
        {"unet 16x16 640->640", 16, 16, 640, 640, 2, 3},    {"unet 16x16 1920->640", 16, 16, 1920, 640, 2, 3},
        {"unet 16x16 1280->1280", 16, 16, 1280, 1280, 2, 3}, {"unet 8x8 1280->1280", 8, 8, 1280, 1280, 2, 3},
        {"unet 8x8 2560->1280", 8, 8, 2560, 1280, 2, 3},    {"unet 4x4 1280->1280", 4, 4, 1280, 1280, 2, 3},
        {"unet 32x32 320->320 1x1", 32, 32, 320, 320, 2, 1},
        {"vae 32x32 512->512", 32, 32, 512, 512, 1, 3},      {"vae 64x64 512->512", 64, 64, 512, 512, 1, 3},
        {"lin 2048x320->2560", 2048, 1, 320, 2560, 1, 0}, {"lin 2048x320->320", 2048, 1, 320, 320, 1, 0},
        {"lin 512x640->5120", 512, 1, 640, 5120, 1, 0},   {"lin 128x1280->10240", 128, 1, 1280, 10240, 1, 0},
        {"q8 lin 2048x320->2560", 2048, 1, 320, 2560, 1, -8}, {"q4 lin 2048x320->2560", 2048, 1, 320, 2560, 1, -4},
        {"q4 lin 128x1280->10240", 128, 1, 1280, 10240, 1, -4}, {"q4 lin 512x640->5120", 512, 1, 640, 5120, 1, -4},
        {"q8 lin 128x1280->1280", 128, 1, 1280, 1280, 1, -8}, {"q8 lin 2048x320->320", 2048, 1, 320, 320, 1, -8},
        {"lin 32x1280->1280", 32, 1, 1280, 1280, 1, 0},   {"lin 32x11520->1280", 32, 1, 11520, 1280, 1, 0},
        {"lin 128x1280->1280", 128, 1, 1280, 1280, 1, 0}, {"lin 128x5120->1280", 128, 1, 5120, 1280, 1, 0},
        {"attn qk 1024x40 x1024 h16", 1024, 1024, 40, -16, 1, 0}, {"attn pv 40x1024 x1024 h16", 40, 1024, 1024, -16, 1, 0},
        {"vae 128x128 256->256", 128, 128, 256, 256, 1, 3},  {"vae 256x256 128->128", 256, 256, 128, 128, 1, 3},
    };
    std::printf("%-28s %10s %10s %10s %10s\n", "shape", "ms", "GFLOP/s", with_ggml ? "ggml GF/s" : "", amx ? "AVX512 GF/s" : "");
    for (const Shape & s : shapes) {
        if (filter && !std::strstr(s.name, filter)) continue;
        ggml_init_params p{size_t(1) << 30, nullptr, false};
        ggml_context * ctx = ggml_init(p);
        if (s.OC < 0) {  // attention product: a [heads, W, IC] x b [heads, H, IC] (f32)
            ggml_tensor * a = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, s.IC, s.W, -s.OC);
            ggml_tensor * b = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, s.IC, s.H, -s.OC);
            for (ggml_tensor * t : {a, b})
                for (int64_t i = 0; i < ggml_nelements(t); ++i) static_cast<float *>(t->data)[i] = float((i * 7919) % 1000) * 1e-3f - 0.5f;
            const double flop = 2.0 * s.IC * s.W * s.H * -s.OC;
            const double ours = time_graph(ctx, sd::cpu_matmul_f32(ctx, a, b), threads, reps);
            const double theirs = with_ggml ? time_graph(ctx, ggml_mul_mat(ctx, a, b), threads, reps) : 0.0;
            std::printf("%-28s %10.2f %10.1f %10.1f\n", s.name, ours * 1e3, flop / ours * 1e-9, with_ggml ? flop / theirs * 1e-9 : 0.0);
            ggml_free(ctx);
            continue;
        }
        if (s.k < 0) {  // a q8_0 (k = -8) or q4_0 (k = -4) linear layer, W rows of IC inputs -> OC outputs
            const ggml_type type = s.k == -8 ? GGML_TYPE_Q8_0 : GGML_TYPE_Q4_0;
            std::vector<float> wf(static_cast<size_t>(s.IC * s.OC));
            for (size_t i = 0; i < wf.size(); ++i) wf[i] = float((i * 7919) % 1000) * 1e-4f - 0.05f;
            ggml_tensor * w = ggml_new_tensor_2d(ctx, type, s.IC, s.OC);
            ggml_quantize_chunk(type, wf.data(), w->data, 0, s.OC, s.IC, nullptr);
            ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, s.IC, s.W);
            auto * xd = static_cast<float *>(x->data);
            for (int64_t i = 0; i < ggml_nelements(x); ++i) xd[i] = float((i * 104729) % 2000) * 1e-3f - 1.0f;
            const double flop = 2.0 * s.OC * s.IC * s.W;
            const double ours = time_graph(ctx, sd::cpu_linear_q(ctx, w, x), threads, reps);
            const double theirs = with_ggml ? time_graph(ctx, ggml_mul_mat(ctx, w, x), threads, reps) : 0.0;
            std::printf("%-28s %10.2f %10.1f %10.1f\n", s.name, ours * 1e3, flop / ours * 1e-9, with_ggml ? flop / theirs * 1e-9 : 0.0);
            ggml_free(ctx);
            continue;
        }
        // k == 0: a linear layer, W rows of IC inputs -> OC outputs.
        ggml_tensor * w = s.k ? ggml_new_tensor_4d(ctx, GGML_TYPE_F16, s.k, s.k, s.IC, s.OC)
                              : ggml_new_tensor_2d(ctx, GGML_TYPE_F16, s.IC, s.OC);
        ggml_tensor * x = s.k ? ggml_new_tensor_4d(ctx, GGML_TYPE_F32, s.W, s.H, s.IC, s.N)
                              : ggml_new_tensor_2d(ctx, GGML_TYPE_F32, s.IC, s.W);
        auto * wd = static_cast<ggml_fp16_t *>(w->data);
        for (int64_t i = 0; i < ggml_nelements(w); ++i) wd[i] = ggml_fp32_to_fp16(float((i * 7919) % 1000) * 1e-4f - 0.05f);
        auto * xd = static_cast<float *>(x->data);
        for (int64_t i = 0; i < ggml_nelements(x); ++i) xd[i] = float((i * 104729) % 2000) * 1e-3f - 1.0f;
        const int pad = s.k / 2;
        const double flop = 2.0 * s.OC * s.IC * (s.k ? s.k * s.k : 1) * s.W * s.H * s.N;
        const auto product = [&](bool on_amx) {
            return s.k ? sd::cpu_conv2d_f16(ctx, w, x, 1, pad, nullptr, nullptr, false, on_amx)
                       : sd::cpu_linear_f16(ctx, w, x, nullptr, nullptr, 0, 0, on_amx);
        };
        const double ours = time_graph(ctx, product(amx), threads, reps);
        double theirs = 0, exact = 0;
        if (with_ggml)
            theirs = time_graph(ctx, s.k ? ggml_conv_2d(ctx, w, x, 1, 1, pad, pad, 1, 1) : ggml_mul_mat(ctx, w, x), threads, reps);
        if (amx) exact = time_graph(ctx, product(false), threads, reps);
        std::printf("%-28s %10.2f %10.1f %10.1f %10.1f\n", s.name, ours * 1e3, flop / ours * 1e-9,
                    with_ggml ? flop / theirs * 1e-9 : 0.0, amx ? flop / exact * 1e-9 : 0.0);
        ggml_free(ctx);
    }
    // Whole attention, SD1 UNet self-attention per latent size (2 images, 8 heads): the fused op
    // against the three separate ops (the same kernels, scores through memory). "ggml GF/s" here
    // is the separate ops' rate.
    struct Attn {
        const char * name;
        int64_t d, l;
    };
    for (const Attn & s : {Attn{"attn fused 32x32 d40", 40, 1024}, Attn{"attn fused 16x16 d80", 80, 256},
                           Attn{"attn fused 8x8 d160", 160, 64}}) {
        if (filter && !std::strstr(s.name, filter)) continue;
        ggml_init_params p{size_t(1) << 30, nullptr, false};
        ggml_context * ctx = ggml_init(p);
        const int64_t heads = 8, n = 2, width = heads * s.d;
        ggml_tensor * t[3];
        for (ggml_tensor *& x : t) {
            x = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, width, s.l, n);
            for (int64_t i = 0; i < ggml_nelements(x); ++i) static_cast<float *>(x->data)[i] = float((i * 7919) % 1000) * 1e-3f - 0.5f;
        }
        const float scale = 1.0f / std::sqrt(float(s.d));
        const auto per_head = [&](ggml_tensor * x) {
            return ggml_permute(ctx, ggml_reshape_4d(ctx, x, s.d, heads, s.l, n), 0, 2, 1, 3);
        };
        ggml_tensor * vt = ggml_reshape_3d(
            ctx, ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_4d(ctx, t[2], s.d, heads, s.l, n), 1, 2, 0, 3)), s.l, s.d, heads * n);
        ggml_tensor * kq = ggml_reshape_3d(ctx, sd::cpu_matmul_f32(ctx, per_head(t[1]), per_head(t[0])), s.l, s.l, heads * n);
        ggml_tensor * o = sd::cpu_matmul_f32(ctx, vt, sd::cpu_soft_max(ctx, kq, scale));
        o = ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_4d(ctx, o, s.d, s.l, heads, n), 0, 2, 1, 3));
        const double flop = 4.0 * s.d * s.l * s.l * heads * n;
        const double ours = time_graph(ctx, sd::cpu_attention_f32(ctx, t[0], t[1], t[2], int(heads), scale), threads, reps);
        const double separate = time_graph(ctx, o, threads, reps);
        std::printf("%-28s %10.2f %10.1f %10.1f\n", s.name, ours * 1e3, flop / ours * 1e-9, flop / separate * 1e-9);
        ggml_free(ctx);
    }
    return 0;
}
