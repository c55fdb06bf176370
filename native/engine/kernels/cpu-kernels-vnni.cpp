// Linear layers with q8_0 / q4_0 weights (cpu-kernels.h), for CPUs with AVX-512 VNNI. Built with
// AVX-512 BW/VL/VNNI flags -ffp-contract=off and called only after a CPU check; file-local code
// only (see cpu-kernels-impl.h).
//
// Per output value the arithmetic is ggml-cpu's (ggml_vec_dot_q8_0_q8_0 / _q4_0_q8_0 on AVX2 or
// better, after quantize_row_q8_0 of the activations):
//   activations: per block of 32, amax = max |x|, d = fp16(amax / 127), id = 127 / amax,
//                q = round-half-even(x * id)
//   per block b: lanes l = 0..7 hold the exact integer sum over elements 4l..4l+3 of w * q,
//                acc[l] = fma(d_w * d_x, (float) sum, acc[l])
//   out = ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) + (acc3 + acc7))
//
// Here a register holds one lane l of 16 outputs (16 weight rows, one column), so each d_w * d_x
// multiply serves 16 outputs and the final sums are plain vector adds. VNNI multiplies unsigned by
// signed bytes, so the weights are stored offset to unsigned (u = w + 8 for q4_0's nibbles,
// w ^ 0x80 = w + 128 for q8_0) and the integer sums start from -offset * (sum of the 4
// activations), which makes them exact: sum u*q - offset*sum q = sum w*q. A tile is 16 rows x 3
// columns (24 lane accumulators); weight rows are repacked once per group of columns, lane-major
// ([block][lane][row][4 bytes]), and activations are quantized once per group.
#include "kernels/cpu-kernels-impl.h"

#if defined(SDNODE_HAVE_AVX512_KERNELS)
#include <immintrin.h>

#include <cstring>

namespace sd::cpu {

namespace {

constexpr int kQK = 32;               // elements per q8_0 / q4_0 block
constexpr int kLanesPerBlock = 8;     // ggml's 8 partial sums of 4 elements per block
constexpr int kSlab = 16;             // weight rows per register tile (one per float lane)
constexpr int kCols = 3;              // columns per register tile
constexpr int64_t kGroupCols = 192;   // columns quantized at once
constexpr int64_t kRowBlock = 64;     // weight rows repacked at once (a multiple of kSlab)

int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

// Quantized activations of a group of columns, column-major.
struct PackedColumns {
    int8_t * qs;     // [col][block][32]
    int32_t * corr;  // [col][block][8]: -offset * sum of the lane's 4 values
    float * d;       // [col][block]
};

// quantize_row_q8_0 of one activation row into column slot c.
__attribute__((noinline)) void quantize_column(const float * x, int64_t blocks, int32_t offset, const PackedColumns & pc, int64_t c) {
    const __m256i ones = _mm256_set1_epi8(1);
    const __m256i neg_offset = _mm256_set1_epi32(-offset);
    for (int64_t b = 0; b < blocks; ++b) {
        const __m512 v0 = _mm512_loadu_ps(x + b * kQK);
        const __m512 v1 = _mm512_loadu_ps(x + b * kQK + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float scale = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        const __m512 mul = _mm512_set1_ps(id);
        const __m512i i0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v0, mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m512i i1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v1, mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256i q = _mm256_set_m128i(_mm512_cvtsepi32_epi8(i1), _mm512_cvtsepi32_epi8(i0));
        const int64_t i = c * blocks + b;
        _mm256_storeu_si256(reinterpret_cast<__m256i *>(pc.qs + i * kQK), q);
        const __m256i sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, q);
        _mm256_storeu_si256(reinterpret_cast<__m256i *>(pc.corr + i * kLanesPerBlock), _mm256_mullo_epi32(sums, neg_offset));
        // The stored fp16 scale, read back as ggml reads it.
        pc.d[i] = half_to_float(_cvtss_sh(scale, _MM_FROUND_TO_NEAREST_INT));
    }
}

// Weight rows repacked per slab of 16 rows: for block b and lane l, the 4 offset weights of each
// row (64 bytes: a register's worth), and the rows' scales (0 for rows past M).
struct PackedRows {
    uint8_t * u;  // [slab][block][lane][row][4]
    float * d;    // [slab][block][row]
};

__attribute__((noinline)) void pack_rows(const QGemm & g, int64_t m0, int64_t rows, const PackedRows & pr) {
    const int64_t blocks = g.K / kQK;
    const int64_t slabs = (rows + kSlab - 1) / kSlab;
    alignas(64) uint8_t row_u[kSlab][kQK];
    for (int64_t s = 0; s < slabs; ++s) {
        for (int64_t b = 0; b < blocks; ++b) {
            float * d = pr.d + (s * blocks + b) * kSlab;
            for (int r = 0; r < kSlab; ++r) {
                const int64_t m = m0 + s * kSlab + r;
                if (m >= m0 + rows) {
                    std::memset(row_u[r], 0, kQK);
                    d[r] = 0.0f;
                    continue;
                }
                const uint8_t * row = static_cast<const uint8_t *>(g.w) + m * g.row_bytes;
                uint16_t dh;
                __m256i u;
                if (g.q4) {
                    // Low nibbles are elements 0-15, high nibbles 16-31; the nibble is w + 8.
                    const uint8_t * blk = row + b * 18;
                    std::memcpy(&dh, blk, 2);
                    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i *>(blk + 2));
                    const __m128i low = _mm_and_si128(packed, _mm_set1_epi8(0x0F));
                    const __m128i high = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0F));
                    u = _mm256_set_m128i(high, low);
                } else {
                    const uint8_t * blk = row + b * 34;
                    std::memcpy(&dh, blk, 2);
                    u = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(blk + 2)),
                                         _mm256_set1_epi8(static_cast<char>(0x80)));
                }
                _mm256_store_si256(reinterpret_cast<__m256i *>(row_u[r]), u);
                d[r] = half_to_float(dh);
            }
            // Transpose 16 rows x 8 lanes of 4 bytes: lane l of every row side by side.
            uint8_t * dst = pr.u + (s * blocks + b) * (kLanesPerBlock * kSlab * 4);
            for (int l = 0; l < kLanesPerBlock; ++l)
                for (int r = 0; r < kSlab; ++r) std::memcpy(dst + (l * kSlab + r) * 4, row_u[r] + l * 4, 4);
        }
    }
}

int32_t load_i32(const void * p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// 16 rows (slab s) x C columns (c0..): out vectors of 16 rows per column.
template <int C>
void tile(const PackedRows & pr, int64_t s, const PackedColumns & pc, int64_t c0, int64_t blocks, __m512 out[C]) {
    __m512 acc[C][kLanesPerBlock];
    for (int c = 0; c < C; ++c)
        for (int l = 0; l < kLanesPerBlock; ++l) acc[c][l] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
        const __m512 wd = _mm512_loadu_ps(pr.d + (s * blocks + b) * kSlab);
        __m512 d[C];
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) d[c] = _mm512_mul_ps(wd, _mm512_set1_ps(pc.d[(c0 + c) * blocks + b]));
        const uint8_t * u = pr.u + (s * blocks + b) * (kLanesPerBlock * kSlab * 4);
#pragma GCC unroll 8
        for (int l = 0; l < kLanesPerBlock; ++l) {
            const __m512i w = _mm512_load_si512(u + l * kSlab * 4);
#pragma GCC unroll 4
            for (int c = 0; c < C; ++c) {
                const int64_t i = (c0 + c) * blocks + b;
                const __m512i init = _mm512_set1_epi32(pc.corr[i * kLanesPerBlock + l]);
                const __m512i x = _mm512_set1_epi32(load_i32(pc.qs + i * kQK + l * 4));
                const __m512i sum = _mm512_dpbusd_epi32(init, w, x);
                acc[c][l] = _mm512_fmadd_ps(d[c], _mm512_cvtepi32_ps(sum), acc[c][l]);
            }
        }
    }
    // ggml's hsum_float_8, lane by lane.
    for (int c = 0; c < C; ++c)
        out[c] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(acc[c][0], acc[c][4]), _mm512_add_ps(acc[c][2], acc[c][6])),
                               _mm512_add_ps(_mm512_add_ps(acc[c][1], acc[c][5]), _mm512_add_ps(acc[c][3], acc[c][7])));
}

}  // namespace

size_t qgemm_scratch_bytes(const QGemm & g) {
    const int64_t blocks = g.K / kQK;
    const int64_t cols = kGroupCols * blocks * (kQK + kLanesPerBlock * 4 + 4);
    const int64_t rows = kRowBlock * blocks * (kQK + 4);
    return static_cast<size_t>(cols + rows + 3 * 64);
}

void qgemm_avx512vnni(const QGemm & g, int ith, int nth, void * scratch) {
    const int64_t blocks = g.K / kQK;
    // Columns split over threads where there are enough of them, else slabs of rows. Each
    // thread quantizes its columns and repacks its rows: repacking a row costs about what
    // quantizing a column does, so rows are split when there are more of them.
    int64_t n0 = 0, n1 = g.N, m0 = 0, m1 = g.M;
    if (g.N >= 8 * nth && g.N >= g.M) {
        n0 = g.N * ith / nth;
        n1 = g.N * (ith + 1) / nth;
    } else {
        const int64_t slabs = (g.M + kSlab - 1) / kSlab;
        m0 = min64(g.M, slabs * ith / nth * kSlab);
        m1 = min64(g.M, slabs * (ith + 1) / nth * kSlab);
    }
    if (n0 >= n1 || m0 >= m1) return;

    auto align = [](uint8_t * p) { return p + (64 - reinterpret_cast<uintptr_t>(p) % 64) % 64; };
    uint8_t * base = align(static_cast<uint8_t *>(scratch));
    PackedRows pr{base, reinterpret_cast<float *>(base + kRowBlock * blocks * kQK)};
    uint8_t * cols = align(base + kRowBlock * blocks * (kQK + 4));
    PackedColumns pc{reinterpret_cast<int8_t *>(cols), nullptr, nullptr};
    pc.corr = reinterpret_cast<int32_t *>(cols + kGroupCols * blocks * kQK);
    pc.d = reinterpret_cast<float *>(cols + kGroupCols * blocks * (kQK + kLanesPerBlock * 4));
    const int32_t offset = g.q4 ? 8 : 128;

    for (int64_t ng = n0; ng < n1; ng += kGroupCols) {
        const int64_t gc = min64(kGroupCols, n1 - ng);
        for (int64_t c = 0; c < gc; ++c)
            quantize_column(reinterpret_cast<const float *>(g.x + (ng + c) * g.nb1), blocks, offset, pc, c);
        for (int64_t mb = m0; mb < m1; mb += kRowBlock) {
            if (stop_requested(g.abort)) return;
            const int64_t rows = min64(kRowBlock, m1 - mb);
            pack_rows(g, mb, rows, pr);
            for (int64_t s = 0; s * kSlab < rows; ++s) {
                const int64_t m = mb + s * kSlab;
                const int live = static_cast<int>(min64(kSlab, m1 - m));
                const __mmask16 mask = static_cast<__mmask16>((1u << live) - 1);
                const __m512 bias = g.bias ? _mm512_maskz_loadu_ps(mask, g.bias + m) : _mm512_setzero_ps();
                for (int64_t c = 0; c < gc; c += kCols) {
                    __m512 out[kCols];
                    const int cn = static_cast<int>(min64(kCols, gc - c));
                    switch (cn) {
                        case 3: tile<3>(pr, s, pc, c, blocks, out); break;
                        case 2: tile<2>(pr, s, pc, c, blocks, out); break;
                        default: tile<1>(pr, s, pc, c, blocks, out); break;
                    }
                    for (int j = 0; j < cn; ++j) {
                        // The bias as ggml_add adds it: a separate float add.
                        const __m512 v = g.bias ? _mm512_add_ps(out[j], bias) : out[j];
                        _mm512_mask_storeu_ps(g.out + (ng + c + j) * g.M + m, mask, v);
                    }
                }
            }
        }
    }
}

}  // namespace sd::cpu

#endif  // SDNODE_HAVE_AVX512_KERNELS
