// The compute graphs on tiny random weights built in memory: blocks against naive loops, whole
// UNet / VAE decoder / CLIP for shapes, finiteness, determinism, batching; input validation;
// abort. Full-size numbers against stable-diffusion.cpp are in reference_test.cpp.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "check.h"
#include "kernels/cpu-kernels.h"
#include "core/errors.h"
#include "ggml-cpu.h"
#include "graph-fixtures.h"
#include "runtime/graph-runner.h"
#include "components/text-encoder.h"
#include "components/unet.h"
#include "components/vae.h"
#include "model/options.h"

using sdtest::MemoryWeights;
using sdtest::random_vector;
using sdtest::relative_l2;

namespace {

bool all_finite(const std::vector<float> & v) {
    for (float x : v) {
        if (!std::isfinite(x)) return false;
    }
    return true;
}

sd::HostTensor host(std::vector<float> data, int64_t ne0, int64_t ne1 = 1, int64_t ne2 = 1, int64_t ne3 = 1) {
    sd::HostTensor t;
    t.data = std::move(data);
    t.ne[0] = ne0; t.ne[1] = ne1; t.ne[2] = ne2; t.ne[3] = ne3;
    return t;
}

// ---------------------------------------------------------------- blocks vs naive loops

void test_group_norm(ggml_backend_t backend) {
    const int64_t W = 5, H = 3, C = 64, N = 2;
    MemoryWeights w;
    w.norm("gn", C);
    w.finish(backend, 1);
    auto x = random_vector(W * H * C * N, 2, 2.0f);
    for (size_t i = 0; i < x.size(); ++i) x[i] += 0.5f;  // non-zero mean
    sd::GraphRunner runner(backend, 2);
    auto out = runner.run("gn", [&](sd::GraphBuilder & b) {
        sd::Graph g{b.ctx(), w};
        return sd::group_norm(g, b.input_f32("x", x.data(), W, H, C, N), "gn");
    });
    std::vector<float> ref(x.size());
    const int64_t per_group = C / 32;
    for (int64_t n = 0; n < N; ++n) {
        for (int64_t grp = 0; grp < 32; ++grp) {
            double sum = 0, sq = 0;
            const int64_t count = per_group * H * W;
            const float * base = x.data() + (n * C + grp * per_group) * H * W;
            for (int64_t i = 0; i < count; ++i) sum += base[i];
            const double mean = sum / count;
            for (int64_t i = 0; i < count; ++i) sq += (base[i] - mean) * (base[i] - mean);
            const double inv = 1.0 / std::sqrt(sq / count + 1e-6);
            for (int64_t i = 0; i < count; ++i) {
                const int64_t c = grp * per_group + i / (H * W);
                ref[(n * C + grp * per_group) * H * W + i] =
                    static_cast<float>((base[i] - mean) * inv * w.host("gn.weight")[c] + w.host("gn.bias")[c]);
            }
        }
    }
    CHECK(out.ne[0] == W && out.ne[1] == H && out.ne[2] == C && out.ne[3] == N);
    CHECK(relative_l2(out.data, ref) < 1e-5);
}

void test_layer_norm(ggml_backend_t backend) {
    const int64_t C = 48, L = 5;
    MemoryWeights w;
    w.norm("ln", C);
    w.finish(backend, 3);
    auto x = random_vector(C * L, 4, 3.0f);
    sd::GraphRunner runner(backend, 2);
    auto out = runner.run("ln", [&](sd::GraphBuilder & b) {
        sd::Graph g{b.ctx(), w};
        return sd::layer_norm(g, b.input_f32("x", x.data(), C, L), "ln");
    });
    std::vector<float> ref(x.size());
    for (int64_t l = 0; l < L; ++l) {
        double sum = 0, sq = 0;
        for (int64_t c = 0; c < C; ++c) sum += x[l * C + c];
        const double mean = sum / C;
        for (int64_t c = 0; c < C; ++c) sq += (x[l * C + c] - mean) * (x[l * C + c] - mean);
        const double inv = 1.0 / std::sqrt(sq / C + 1e-5);
        for (int64_t c = 0; c < C; ++c) {
            ref[l * C + c] = static_cast<float>((x[l * C + c] - mean) * inv * w.host("ln.weight")[c] + w.host("ln.bias")[c]);
        }
    }
    CHECK(relative_l2(out.data, ref) < 1e-5);
}

// softmax(q k^T / sqrt(d)) v per head; q [N, Lq, H*d] flat.
std::vector<float> naive_attention(const std::vector<float> & q, const std::vector<float> & k, const std::vector<float> & v,
                                   int64_t n_batch, int64_t lq, int64_t lk, int heads, int64_t d, bool causal) {
    const int64_t width = heads * d;
    std::vector<float> out(static_cast<size_t>(n_batch * lq * width));
    for (int64_t n = 0; n < n_batch; ++n) {
        for (int hd = 0; hd < heads; ++hd) {
            for (int64_t i = 0; i < lq; ++i) {
                std::vector<double> s(static_cast<size_t>(lk));
                double mx = -1e300;
                for (int64_t j = 0; j < lk; ++j) {
                    double dot = 0;
                    for (int64_t e = 0; e < d; ++e) dot += double(q[(n * lq + i) * width + hd * d + e]) * k[(n * lk + j) * width + hd * d + e];
                    s[j] = (causal && j > i) ? -1e300 : dot / std::sqrt(double(d));
                    mx = std::max(mx, s[j]);
                }
                double z = 0;
                for (int64_t j = 0; j < lk; ++j) { s[j] = (causal && j > i) ? 0.0 : std::exp(s[j] - mx); z += s[j]; }
                for (int64_t e = 0; e < d; ++e) {
                    double acc = 0;
                    for (int64_t j = 0; j < lk; ++j) acc += s[j] / z * v[(n * lk + j) * width + hd * d + e];
                    out[(n * lq + i) * width + hd * d + e] = static_cast<float>(acc);
                }
            }
        }
    }
    return out;
}

void test_attention(ggml_backend_t backend, bool causal) {
    const int64_t N = 2, Lq = 5, Lk = causal ? 5 : 7, d = 8;
    const int heads = 3;
    const int64_t width = heads * d;
    auto q = random_vector(N * Lq * width, 5, 1.5f);
    auto k = random_vector(N * Lk * width, 6, 1.5f);
    auto v = random_vector(N * Lk * width, 7, 1.0f);
    MemoryWeights none;
    none.finish(backend, 0);
    sd::GraphRunner runner(backend, 2);
    auto out = runner.run("attn", [&](sd::GraphBuilder & b) {
        return sd::ops::attention(b.ctx(), b.input_f32("q", q.data(), width, Lq, N), b.input_f32("k", k.data(), width, Lk, N),
                             b.input_f32("v", v.data(), width, Lk, N), heads, causal, "attn");
    });
    auto ref = naive_attention(q, k, v, N, Lq, Lk, heads, d, causal);
    CHECK(out.ne[0] == width && out.ne[1] == Lq && out.ne[2] == N);
    CHECK(relative_l2(out.data, ref) < 1e-5);

    // Heads in groups (score matrices over the limit): the same floats, for each group size,
    // with ggml's ops and with sdnode's kernels where they run (products, softmax; non-causal:
    // the fused op, which ignores the limit): those give ggml's floats too.
    const sd::CpuKernels kernels = sd::cpu_kernels_for(backend);
    for (const sd::CpuKernels & cpu : {sd::CpuKernels{}, kernels}) {
        // Budgets in scores of one head: 6, 1, 2, 4 heads per group; then under one head (blocks
        // of queries: 2 or 3 rows, then one row each).
        const int64_t head_scores = Lq * Lk * static_cast<int64_t>(sizeof(float));
        for (int64_t budget : {6 * head_scores, head_scores, 2 * head_scores, 4 * head_scores, head_scores / 2,
                               head_scores / 3, int64_t{1}}) {
            const std::string key = "attn-" + std::to_string(cpu.f32) + std::to_string(cpu.activations) + "-" + std::to_string(budget);
            auto grouped = runner.run(key, [&](sd::GraphBuilder & b) {
                return sd::ops::attention(b.ctx(), b.input_f32("q", q.data(), width, Lq, N), b.input_f32("k", k.data(), width, Lk, N),
                                     b.input_f32("v", v.data(), width, Lk, N), heads, causal, "attn", cpu, budget);
            });
            CHECK(grouped.data == out.data);
        }
    }
}

// Blocks of queries at a size where ggml's tiled f32 product runs: the same floats as one block.
void test_attention_query_blocks(ggml_backend_t backend) {
    const int64_t N = 1, Lq = 1024, Lk = 1024, d = 40;
    const int heads = 2;
    const int64_t width = heads * d;
    auto q = random_vector(N * Lq * width, 15, 1.5f);
    auto k = random_vector(N * Lk * width, 16, 1.5f);
    auto v = random_vector(N * Lk * width, 17, 1.0f);
    sd::GraphRunner runner(backend, 2);
    const int64_t head_scores = Lq * Lk * static_cast<int64_t>(sizeof(float));
    std::vector<float> whole;
    for (int64_t budget : {2 * head_scores, head_scores / 4, head_scores / 7}) {
        auto out = runner.run("attn-blocks-" + std::to_string(budget), [&](sd::GraphBuilder & b) {
            return sd::ops::attention(b.ctx(), b.input_f32("q", q.data(), width, Lq, N), b.input_f32("k", k.data(), width, Lk, N),
                                      b.input_f32("v", v.data(), width, Lk, N), heads, false, "attn", sd::CpuKernels{}, budget);
        });
        if (whole.empty()) whole = out.data;
        else CHECK(out.data == whole);
    }
}

void test_conv2d(ggml_backend_t backend) {
    const int64_t W = 6, H = 7, C = 3, O = 5, N = 2, K = 3;
    const int stride = 2, pad = 1;
    MemoryWeights w;
    w.conv("c", O, C, K);
    w.finish(backend, 8);
    auto x = random_vector(W * H * C * N, 9);
    sd::GraphRunner runner(backend, 2);
    auto out = runner.run("conv", [&](sd::GraphBuilder & b) {
        sd::Graph g{b.ctx(), w};
        return sd::conv2d(g, b.input_f32("x", x.data(), W, H, C, N), "c", stride, pad);
    });
    const int64_t OW = (W + 2 * pad - K) / stride + 1, OH = (H + 2 * pad - K) / stride + 1;
    CHECK(out.ne[0] == OW && out.ne[1] == OH && out.ne[2] == O && out.ne[3] == N);
    const auto & kw = w.host("c.weight");
    const auto & kb = w.host("c.bias");
    std::vector<float> ref(static_cast<size_t>(OW * OH * O * N));
    for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < O; ++o)
            for (int64_t oy = 0; oy < OH; ++oy)
                for (int64_t ox = 0; ox < OW; ++ox) {
                    double acc = kb[o];
                    for (int64_t c = 0; c < C; ++c)
                        for (int64_t ky = 0; ky < K; ++ky)
                            for (int64_t kx = 0; kx < K; ++kx) {
                                const int64_t iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                acc += double(kw[((o * C + c) * K + ky) * K + kx]) * x[((n * C + c) * H + iy) * W + ix];
                            }
                    ref[((n * O + o) * OH + oy) * OW + ox] = static_cast<float>(acc);
                }
    // im2col runs in f16 (the kernel's type), as in stable-diffusion.cpp: ~1e-3 relative.
    CHECK(relative_l2(out.data, ref) < 2e-3);
}

// Which kernels a component's graphs use: AMX (where verified) for f16 weights, never for
// quantized ones; and on AMX a convolution and a linear layer equal the exact kernels' results
// to float rounding.
void test_graph_kernels(ggml_backend_t backend) {
    const sd::CpuKernels verified = sd::cpu_kernels_for(backend);
    MemoryWeights w;
    w.conv("c", 40, 16, 3);
    w.linear("l", 48, 64);
    w.finish(backend, 10);
    CHECK(!w.quantized());
    CHECK(sd::ops::graph_kernels(backend, w).amx == verified.amx);
    MemoryWeights q;  // types only: never allocated or computed
    q.add("l.weight", {48, 64}, 0.1f, 0.0f, GGML_TYPE_Q8_0);
    CHECK(q.quantized());
    CHECK(!sd::ops::graph_kernels(backend, q).amx);
    setenv("SDNODE_CPU_AMX", "all", 1);  // AMX for quantized components too, where verified
    CHECK(sd::ops::graph_kernels(backend, q).amx == verified.amx);
    unsetenv("SDNODE_CPU_AMX");
    if (!verified.amx) return;

    auto x = random_vector(9 * 7 * 16 * 2, 11);
    auto rows = random_vector(64 * 37, 12);
    sd::CpuKernels exact = verified;
    exact.amx = false;
    std::vector<float> results[2][2];
    sd::GraphRunner runner(backend, 2);
    for (int amx = 0; amx < 2; ++amx) {
        const sd::CpuKernels k = amx ? verified : exact;
        results[amx][0] = runner.run("conv-amx" + std::to_string(amx), [&](sd::GraphBuilder & b) {
            sd::Graph g{b.ctx(), w, k};
            return sd::conv2d(g, b.input_f32("x", x.data(), 9, 7, 16, 2), "c", 1, 1);
        }).data;
        results[amx][1] = runner.run("linear-amx" + std::to_string(amx), [&](sd::GraphBuilder & b) {
            sd::Graph g{b.ctx(), w, k};
            return sd::linear(g, b.input_f32("x", rows.data(), 64, 37), "l");
        }).data;
    }
    for (int i = 0; i < 2; ++i) {
        CHECK(results[1][i].size() == results[0][i].size());
        CHECK(sd::cpu_close(results[1][i].data(), results[0][i].data(), results[0][i].size()));
    }
}

void test_timestep_embedding(ggml_backend_t backend) {
    std::vector<float> t = {999.0f, 1.5f, 0.0f};
    const int dim = 320;
    sd::GraphRunner runner(backend, 1);
    auto out = runner.run("temb", [&](sd::GraphBuilder & b) {
        return sd::timestep_embedding(b.ctx(), b.input_f32("t", t.data(), 3), dim);
    });
    CHECK(out.ne[0] == dim && out.ne[1] == 3);
    double worst = 0;
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < dim / 2; ++j) {
            const double freq = std::exp(-std::log(10000.0) * j / (dim / 2));
            worst = std::max(worst, std::fabs(out.data[i * dim + j] - std::cos(t[i] * freq)));
            worst = std::max(worst, std::fabs(out.data[i * dim + dim / 2 + j] - std::sin(t[i] * freq)));
        }
    }
    CHECK(worst < 2e-3);
}

// ---------------------------------------------------------------- tiny models

sd::UnetParams tiny_unet_params() {
    sd::UnetParams p;
    p.present = true;
    p.in_channels = 4;
    p.out_channels = 4;
    p.model_channels = 32;
    p.channel_mult = {1, 2};
    p.num_res_blocks = {1, 1};
    p.transformer_depth = {1, 1};
    p.transformer_depth_middle = 1;
    p.context_dim = 16;
    p.num_heads = 2;
    p.time_embed_dim = 64;
    return p;
}

void add_resblock(MemoryWeights & w, const std::string & p, int64_t in, int64_t out, int64_t emb) {
    w.norm(p + ".in_layers.0", in);
    w.conv(p + ".in_layers.2", out, in, 3);
    w.linear(p + ".emb_layers.1", out, emb);
    w.norm(p + ".out_layers.0", out);
    w.conv(p + ".out_layers.3", out, out, 3);
    if (in != out) w.conv(p + ".skip_connection", out, in, 1);
}

void add_transformer(MemoryWeights & w, const std::string & p, int64_t ch, int64_t ctx, int depth) {
    w.norm(p + ".norm", ch);
    w.conv(p + ".proj_in", ch, ch, 1);
    for (int i = 0; i < depth; ++i) {
        const std::string b = p + ".transformer_blocks." + std::to_string(i);
        w.norm(b + ".norm1", ch);
        w.norm(b + ".norm2", ch);
        w.norm(b + ".norm3", ch);
        for (const char * a : {".attn1", ".attn2"}) {
            const int64_t kv_in = std::string(a) == ".attn1" ? ch : ctx;
            w.linear(b + a + ".to_q", ch, ch, false);
            w.linear(b + a + ".to_k", ch, kv_in, false);
            w.linear(b + a + ".to_v", ch, kv_in, false);
            w.linear(b + a + ".to_out.0", ch, ch);
        }
        w.linear(b + ".ff.net.0.proj", ch * 8, ch);
        w.linear(b + ".ff.net.2", ch, ch * 4);
    }
    w.conv(p + ".proj_out", ch, ch, 1);
}

void add_unet(MemoryWeights & w, const sd::UnetParams & p) {
    const int64_t mc = p.model_channels, ted = p.time_embed_dim;
    w.linear("time_embed.0", ted, mc);
    w.linear("time_embed.2", ted, ted);
    w.conv("input_blocks.0.0", mc, p.in_channels, 3);
    std::vector<int64_t> chans = {mc};
    int64_t ch = mc;
    int block = 1;
    const int levels = static_cast<int>(p.channel_mult.size());
    for (int l = 0; l < levels; ++l) {
        for (int r = 0; r < p.num_res_blocks[l]; ++r, ++block) {
            const std::string pre = "input_blocks." + std::to_string(block);
            add_resblock(w, pre + ".0", ch, mc * p.channel_mult[l], ted);
            ch = mc * p.channel_mult[l];
            if (p.transformer_depth[l]) add_transformer(w, pre + ".1", ch, p.context_dim, p.transformer_depth[l]);
            chans.push_back(ch);
        }
        if (l != levels - 1) {
            w.conv("input_blocks." + std::to_string(block) + ".0.op", ch, ch, 3);
            chans.push_back(ch);
            ++block;
        }
    }
    add_resblock(w, "middle_block.0", ch, ch, ted);
    add_transformer(w, "middle_block.1", ch, p.context_dim, p.transformer_depth_middle);
    add_resblock(w, "middle_block.2", ch, ch, ted);
    block = 0;
    for (int l = levels - 1; l >= 0; --l) {
        for (int r = 0; r <= p.num_res_blocks[l]; ++r, ++block) {
            const std::string pre = "output_blocks." + std::to_string(block);
            const int64_t skip = chans.back();
            chans.pop_back();
            add_resblock(w, pre + ".0", ch + skip, mc * p.channel_mult[l], ted);
            ch = mc * p.channel_mult[l];
            int next = 1;
            if (p.transformer_depth[l]) { add_transformer(w, pre + ".1", ch, p.context_dim, p.transformer_depth[l]); next = 2; }
            if (l > 0 && r == p.num_res_blocks[l]) w.conv(pre + "." + std::to_string(next) + ".conv", ch, ch, 3);
        }
    }
    w.norm("out.0", ch);
    w.conv("out.2", p.out_channels, ch, 3);
}

void test_unet(ggml_backend_t backend) {
    const sd::UnetParams p = tiny_unet_params();
    MemoryWeights w;
    add_unet(w, p);
    w.finish(backend, 11);
    sd::Unet unet(w, p);
    sd::GraphRunner runner(backend, 2);

    const int64_t W = 6, H = 4, N = 2, T = 77;
    auto x = host(random_vector(W * H * 4 * N, 12), W, H, 4, N);
    auto ctx = host(random_vector(p.context_dim * T * N, 13), p.context_dim, T, N);
    std::vector<float> t = {999.0f, 321.0f};
    auto out = unet.forward(runner, {x, t, ctx});
    CHECK(out.ne[0] == W && out.ne[1] == H && out.ne[2] == 4 && out.ne[3] == N);
    CHECK(all_finite(out.data));
    double norm = 0;
    for (float v : out.data) norm += v * v;
    CHECK(norm > 0);
    const size_t reserved = runner.compute_buffer_bytes();

    auto again = unet.forward(runner, {x, t, ctx});
    CHECK(again.data == out.data);                          // deterministic
    CHECK(runner.compute_buffer_bytes() == reserved);       // same shape: nothing new reserved

    // Item 1 alone gives what it gave inside the batch.
    auto x1 = host(std::vector<float>(x.data.begin() + W * H * 4, x.data.end()), W, H, 4, 1);
    auto c1 = host(std::vector<float>(ctx.data.begin() + p.context_dim * T, ctx.data.end()), p.context_dim, T, 1);
    auto one = unet.forward(runner, {x1, {t[1]}, c1});
    std::vector<float> batch_item(out.data.begin() + W * H * 4, out.data.end());
    // Batched and single evaluations may take different matmul kernels (tinyBLAS for larger
    // shapes, ggml's f16 dot products otherwise), so they agree up to f16 rounding, which this
    // random tiny UNet amplifies (measured 0.18%).
    CHECK(relative_l2(one.data, batch_item) < 5e-3);

    // The timestep matters.
    auto other_t = unet.forward(runner, {x, {10.0f, 321.0f}, ctx});
    CHECK(relative_l2(other_t.data, out.data) > 1e-4);

    // Validation before any graph is built.
    CHECK_THROWS_CODE(unet.forward(runner, {host(random_vector(5 * 4 * 4, 1), 5, 4, 4, 1), {1.0f}, c1}),
                      sd::ErrorCode::InvalidArgument);  // width not a multiple of 2
    CHECK_THROWS_CODE(unet.forward(runner, {host(random_vector(4 * 4 * 3, 1), 4, 4, 3, 1), {1.0f}, c1}),
                      sd::ErrorCode::InvalidArgument);  // channels
    CHECK_THROWS_CODE(unet.forward(runner, {x1, {1.0f, 2.0f}, c1}), sd::ErrorCode::InvalidArgument);  // timesteps
    CHECK_THROWS_CODE(unet.forward(runner, {x1, {1.0f}, host(random_vector(8 * 77, 1), 8, 77, 1)}),
                      sd::ErrorCode::InvalidArgument);  // context width
    CHECK_THROWS_CODE(unet.forward(runner, {x1, {1.0f}, host(random_vector(16 * 70, 1), 16, 70, 1)}),
                      sd::ErrorCode::InvalidArgument);  // tokens not a multiple of 77
    CHECK_THROWS_CODE(unet.forward(runner, {x, t, c1}), sd::ErrorCode::InvalidArgument);  // context batch
    CHECK_THROWS_CODE(unet.forward(runner, {host({}, 4, 4, 4, 0), {}, host({}, 16, 77, 0)}),
                      sd::ErrorCode::InvalidArgument);  // empty batch

    // A weight of the wrong shape is reported, not asserted on.
    MemoryWeights bad;
    add_unet(bad, p);
    bad.finish(backend, 1);
    sd::UnetParams wrong = p;
    wrong.in_channels = 9;  // the conv_in kernel takes 4
    sd::Unet bad_unet(bad, wrong);
    CHECK_THROWS_CODE(bad_unet.forward(runner, {host(random_vector(4 * 4 * 9, 1), 4, 4, 9, 1), {1.0f}, c1}),
                      sd::ErrorCode::ModelFormat);

    // Abort: raised before compute, and raised by a node in the middle of the graph.
    std::atomic<bool> abort{true};
    runner.set_abort_flag(&abort);
    CHECK_THROWS_CODE(unet.forward(runner, {x, t, ctx}), sd::ErrorCode::Aborted);
    abort = false;
    auto raise = [](ggml_tensor * dst, const ggml_tensor * a, int ith, int, void * data) {
        if (ith == 0) {
            std::memcpy(dst->data, a->data, ggml_nbytes(a));
            static_cast<std::atomic<bool> *>(data)->store(true);
        }
    };
    bool reached_end = false;
    CHECK_THROWS_CODE(runner.run("abort-mid", [&](sd::GraphBuilder & b) {
        ggml_tensor * v = b.input_f32("v", x.data.data(), 8);
        v = ggml_map_custom1(b.ctx(), v, raise, 1, &abort);
        for (int i = 0; i < 50; ++i) v = ggml_scale(b.ctx(), v, 1.0f);
        reached_end = true;
        return v;
    }), sd::ErrorCode::Aborted);
    CHECK(reached_end);
    abort = false;
    auto after = unet.forward(runner, {x, t, ctx});  // usable again once lowered
    CHECK(after.data == out.data);
    runner.set_abort_flag(nullptr);
}

void test_vae(ggml_backend_t backend) {
    sd::VaeParams p;
    p.present = p.has_decoder = true;
    p.ch = 32;
    p.channel_mult = {1, 2};
    p.num_res_blocks = 1;
    p.z_channels = 4;
    MemoryWeights w;
    w.conv("post_quant_conv", 4, 4, 1);
    int64_t block_in = p.ch * p.channel_mult.back();
    w.conv("decoder.conv_in", block_in, 4, 3);
    for (const char * b : {"decoder.mid.block_1", "decoder.mid.block_2"}) {
        w.norm(std::string(b) + ".norm1", block_in);
        w.conv(std::string(b) + ".conv1", block_in, block_in, 3);
        w.norm(std::string(b) + ".norm2", block_in);
        w.conv(std::string(b) + ".conv2", block_in, block_in, 3);
    }
    w.norm("decoder.mid.attn_1.norm", block_in);
    for (const char * q : {".q", ".k", ".v", ".proj_out"}) w.conv(std::string("decoder.mid.attn_1") + q, block_in, block_in, 1);
    for (int l = 1; l >= 0; --l) {
        const int64_t out = p.ch * p.channel_mult[l];
        for (int b = 0; b <= p.num_res_blocks; ++b) {
            const std::string pre = "decoder.up." + std::to_string(l) + ".block." + std::to_string(b);
            w.norm(pre + ".norm1", block_in);
            w.conv(pre + ".conv1", out, block_in, 3);
            w.norm(pre + ".norm2", out);
            w.conv(pre + ".conv2", out, out, 3);
            if (block_in != out) w.conv(pre + ".nin_shortcut", out, block_in, 1);
            block_in = out;
        }
        if (l != 0) w.conv("decoder.up." + std::to_string(l) + ".upsample.conv", block_in, block_in, 3);
    }
    w.norm("decoder.norm_out", block_in);
    w.conv("decoder.conv_out", 3, block_in, 3);
    w.finish(backend, 21);

    sd::Vae vae(w, p);
    sd::GraphRunner runner(backend, 2);
    auto z = host(random_vector(5 * 3 * 4, 22, 0.18f), 5, 3, 4, 1);
    runner.set_debug_outputs({"decoder.mid.attn_1", "decoder.up.1.upsample"});
    auto img = vae.decode(runner, z);
    CHECK(img.ne[0] == 10 && img.ne[1] == 6 && img.ne[2] == 3 && img.ne[3] == 1);
    CHECK(all_finite(img.data));
    CHECK(runner.debug_values().count("decoder.mid.attn_1") == 1);
    CHECK(runner.debug_values().count("decoder.up.1.upsample") == 1 &&
          runner.debug_values().at("decoder.up.1.upsample").ne[0] == 10);
    auto again = vae.decode(runner, z);
    CHECK(again.data == img.data);
    auto rgb = sd::image_to_rgb8(img);
    CHECK(rgb.size() == 10 * 6 * 3);
    CHECK_THROWS_CODE(vae.decode(runner, host(random_vector(5 * 3 * 3, 1), 5, 3, 3, 1)), sd::ErrorCode::InvalidArgument);
}

void test_text_encoder(ggml_backend_t backend) {
    sd::TextEncoderParams p;
    p.present = true;
    p.width = 32;
    p.layers = 3;
    p.heads = 2;
    p.intermediate = 64;
    p.vocab = 100;
    p.max_positions = 77;
    p.activation = "quick_gelu";
    MemoryWeights w;
    w.add("text_model.embeddings.token_embedding.weight", {p.vocab, p.width}, 1.0f);
    w.add("text_model.embeddings.position_embedding.weight", {p.max_positions, p.width}, 0.5f);
    for (int i = 0; i < p.layers; ++i) {
        const std::string l = "text_model.encoder.layers." + std::to_string(i);
        w.norm(l + ".layer_norm1", p.width);
        w.norm(l + ".layer_norm2", p.width);
        for (const char * proj : {".q_proj", ".k_proj", ".v_proj", ".out_proj"}) w.linear(l + ".self_attn" + proj, p.width, p.width);
        w.linear(l + ".mlp.fc1", p.intermediate, p.width);
        w.linear(l + ".mlp.fc2", p.width, p.intermediate);
    }
    w.norm("text_model.final_layer_norm", p.width);
    w.finish(backend, 31);

    sd::TextEncoder enc(w, p);
    sd::GraphRunner runner(backend, 2);
    std::vector<int32_t> tokens(2 * 77, 99);
    for (int i = 0; i < 2 * 77; ++i) tokens[i] = (i * 37 + 5) % 99;
    auto h = enc.encode(runner, tokens, 1);
    CHECK(h.ne[0] == 32 && h.ne[1] == 77 && h.ne[2] == 2);
    CHECK(all_finite(h.data));

    // Causal: changing token 10 of chunk 0 leaves positions 0..9 and chunk 1 as they were.
    auto changed = tokens;
    changed[10] = (changed[10] + 1) % 99;
    auto h2 = enc.encode(runner, changed, 1);
    bool before_same = std::equal(h.data.begin(), h.data.begin() + 10 * 32, h2.data.begin());
    bool chunk1_same = std::equal(h.data.begin() + 77 * 32, h.data.end(), h2.data.begin() + 77 * 32);
    bool at_changed = !std::equal(h.data.begin() + 10 * 32, h.data.begin() + 11 * 32, h2.data.begin() + 10 * 32);
    CHECK(before_same);
    CHECK(chunk1_same);
    CHECK(at_changed);

    // clip_skip 2 stops a layer early; chunk 0 alone is chunk 0 of the batch.
    auto skip2 = enc.encode(runner, tokens, 2);
    CHECK(relative_l2(skip2.data, h.data) > 1e-3);
    auto first = enc.encode(runner, std::vector<int32_t>(tokens.begin(), tokens.begin() + 77), 1);
    CHECK(relative_l2(first.data, std::vector<float>(h.data.begin(), h.data.begin() + 77 * 32)) < 1e-6);

    CHECK_THROWS_CODE(enc.encode(runner, std::vector<int32_t>(76, 1), 1), sd::ErrorCode::InvalidArgument);
    CHECK_THROWS_CODE(enc.encode(runner, std::vector<int32_t>(77, 100), 1), sd::ErrorCode::InvalidArgument);
    CHECK_THROWS_CODE(enc.encode(runner, std::vector<int32_t>(77, -1), 1), sd::ErrorCode::InvalidArgument);
    CHECK_THROWS_CODE(enc.encode(runner, tokens, 0), sd::ErrorCode::InvalidArgument);
    CHECK_THROWS_CODE(enc.encode(runner, tokens, 4), sd::ErrorCode::InvalidArgument);
    CHECK(sd::arch_defaults(sd::Arch::SD1).clip_skip == 1 && sd::arch_defaults(sd::Arch::SD2).clip_skip == 2);
}

void test_token_weights() {
    // Two chunks of width 2: weights scale tokens, then each chunk keeps its mean.
    sd::HostTensor h = host(std::vector<float>(2 * 77 * 2), 2, 77, 2);
    for (size_t i = 0; i < h.data.size(); ++i) h.data[i] = 0.5f + 0.01f * static_cast<float>(i % 13);
    const auto original = h.data;
    std::vector<float> weights(2 * 77, 1.0f);
    weights[3] = 1.5f;
    weights[80] = 0.5f;
    sd::apply_token_weights(h, weights);
    for (int c = 0; c < 2; ++c) {
        double before = 0, after = 0;
        for (int i = 0; i < 77 * 2; ++i) {
            before += original[c * 154 + i];
            after += h.data[c * 154 + i];
        }
        CHECK_NEAR(after, before, 1e-3);
    }
    // Relative to an unweighted token, token 3 grew by 1.5.
    CHECK_NEAR(h.data[3 * 2] / h.data[4 * 2], 1.5 * original[3 * 2] / original[4 * 2], 1e-5);
    std::vector<float> all_one(2 * 77, 1.0f);
    sd::HostTensor same = host(original, 2, 77, 2);
    sd::apply_token_weights(same, all_one);
    CHECK(relative_l2(same.data, original) < 1e-6);
    CHECK_THROWS_CODE(sd::apply_token_weights(same, std::vector<float>(10, 1.0f)), sd::ErrorCode::InvalidArgument);
}

}  // namespace

int main() {
    ggml_backend_t backend = ggml_backend_cpu_init();
    test_group_norm(backend);
    test_layer_norm(backend);
    test_attention(backend, false);
    test_attention(backend, true);
    test_attention_query_blocks(backend);
    test_conv2d(backend);
    test_graph_kernels(backend);
    test_timestep_embedding(backend);
    test_unet(backend);
    test_vae(backend);
    test_text_encoder(backend);
    test_token_weights();
    ggml_backend_free(backend);
    return sdtest::finish("graphs_test");
}
