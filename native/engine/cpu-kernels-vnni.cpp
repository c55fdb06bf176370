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
// Here two outputs share a register (8 lanes each), a tile is 4 weight rows x 6 columns, the
// weights are unpacked once per row block (q4_0 nibbles to bytes, |w| and sign masks) and the
// activations are quantized once per column group.
#include "cpu-kernels-impl.h"

#if defined(SDNODE_HAVE_AVX512_KERNELS)
#include <immintrin.h>

#include <cstring>

namespace sd::cpu {

namespace {

constexpr int kQK = 32;           // elements per q8_0 / q4_0 block
constexpr int kRows = 4;          // weight rows per register tile
constexpr int kPairs = 3;         // column pairs per register tile
constexpr int64_t kGroupPairs = 96;   // column pairs quantized at once
constexpr int64_t kRowBlock = 64;     // weight rows unpacked at once

int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

// Column pair p's block b: qs of column 2p then 2p+1 (64 bytes), and their scales as
// [d(2p) x 8 | d(2p+1) x 8].
struct PackedColumns {
    int8_t * qs;   // [pairs][blocks][64]
    float * d;     // [pairs][blocks][16]
};

// quantize_row_q8_0 of one activation row into a column slot (half h of each pair block).
void quantize_column(const float * x, int64_t blocks, int8_t * qs, float * d, int h) {
    for (int64_t b = 0; b < blocks; ++b) {
        const __m512 v0 = _mm512_loadu_ps(x + b * kQK);
        const __m512 v1 = _mm512_loadu_ps(x + b * kQK + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float scale = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        const __m512 mul = _mm512_set1_ps(id);
        const __m512i i0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v0, mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m512i i1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v1, mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        int8_t * dst = qs + b * 64 + h * kQK;
        _mm_storeu_si128(reinterpret_cast<__m128i *>(dst), _mm512_cvtsepi32_epi8(i0));
        _mm_storeu_si128(reinterpret_cast<__m128i *>(dst + 16), _mm512_cvtsepi32_epi8(i1));
        // The stored fp16 scale, read back as ggml reads it.
        const float stored = half_to_float(_cvtss_sh(scale, _MM_FROUND_TO_NEAREST_INT));
        float * dd = d + b * 16 + h * 8;
        for (int l = 0; l < 8; ++l) dd[l] = stored;
    }
}

// Weight rows unpacked: per row and block, |w| as 32 bytes duplicated to 64, the sign mask of w
// (duplicated to 64 bits) and the row's scale.
struct PackedRows {
    uint8_t * absw;    // [rows][blocks][64]
    uint64_t * neg;    // [rows][blocks]
    float * d;         // [rows][blocks]
};

void unpack_rows(const QGemm & g, int64_t m0, int64_t rows, const PackedRows & pr) {
    const int64_t blocks = g.K / kQK;
    for (int64_t r = 0; r < rows; ++r) {
        const uint8_t * row = static_cast<const uint8_t *>(g.w) + (m0 + r) * g.row_bytes;
        for (int64_t b = 0; b < blocks; ++b) {
            uint16_t dh;
            __m256i v;
            if (g.q4) {
                // Low nibbles are elements 0-15, high nibbles 16-31, each minus 8.
                const uint8_t * blk = row + b * 18;
                std::memcpy(&dh, blk, 2);
                const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i *>(blk + 2));
                const __m128i low = _mm_and_si128(packed, _mm_set1_epi8(0x0F));
                const __m128i high = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0F));
                v = _mm256_sub_epi8(_mm256_set_m128i(high, low), _mm256_set1_epi8(8));
            } else {
                const uint8_t * blk = row + b * 34;
                std::memcpy(&dh, blk, 2);
                v = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(blk + 2));
            }
            const __m256i a = _mm256_abs_epi8(v);
            uint8_t * dst = pr.absw + (r * blocks + b) * 64;
            _mm256_storeu_si256(reinterpret_cast<__m256i *>(dst), a);
            _mm256_storeu_si256(reinterpret_cast<__m256i *>(dst + 32), a);
            const uint64_t m = static_cast<uint32_t>(_mm256_movemask_epi8(v));
            pr.neg[r * blocks + b] = m | (m << 32);
            pr.d[r * blocks + b] = half_to_float(dh);
        }
    }
}

// ggml's hsum_float_8 on each 8-lane half of `acc`: outputs for the pair's two columns.
void hsum_pairs(__m512 acc, float * lo, float * hi) {
    const __m512 t = _mm512_add_ps(acc, _mm512_shuffle_f32x4(acc, acc, _MM_SHUFFLE(2, 3, 0, 1)));  // a[i] + a[i^4]
    const __m512 u = _mm512_add_ps(t, _mm512_permute_ps(t, _MM_SHUFFLE(3, 2, 3, 2)));            // t0+t2, t1+t3
    const __m512 v = _mm512_add_ps(u, _mm512_movehdup_ps(u));                                   // u0 + u1
    *lo = _mm512_cvtss_f32(v);
    *hi = _mm512_cvtss_f32(_mm512_castps256_ps512(_mm512_extractf32x8_ps(v, 1)));
}

template <int R, int P>
void tile(const PackedRows & pr, int64_t r0, const PackedColumns & pc, int64_t p0, int64_t blocks, __m512 acc[R][P]) {
    for (int r = 0; r < R; ++r)
        for (int p = 0; p < P; ++p) acc[r][p] = _mm512_setzero_ps();
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t b = 0; b < blocks; ++b) {
        __m512i x[P];
        __m512 xd[P];
        for (int p = 0; p < P; ++p) {
            x[p] = _mm512_loadu_si512(pc.qs + ((p0 + p) * blocks + b) * 64);
            xd[p] = _mm512_loadu_ps(pc.d + ((p0 + p) * blocks + b) * 16);
        }
        for (int r = 0; r < R; ++r) {
            const int64_t i = (r0 + r) * blocks + b;
            const __m512i aw = _mm512_loadu_si512(pr.absw + i * 64);
            const __mmask64 neg = pr.neg[i];
            const __m512 wd = _mm512_set1_ps(pr.d[i]);
            for (int p = 0; p < P; ++p) {
                const __m512i sx = _mm512_mask_sub_epi8(x[p], neg, zero, x[p]);  // x * sign(w)
                const __m512 q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, aw, sx));
                acc[r][p] = _mm512_fmadd_ps(_mm512_mul_ps(wd, xd[p]), q, acc[r][p]);
            }
        }
    }
}

template <int R>
void tile_rows(int p, const PackedRows & pr, int64_t r0, const PackedColumns & pc, int64_t p0, int64_t blocks,
               __m512 (*acc)[kPairs]) {
    switch (p) {
        case 3: tile<R, 3>(pr, r0, pc, p0, blocks, acc); return;
        case 2: { __m512 a[R][2]; tile<R, 2>(pr, r0, pc, p0, blocks, a); for (int r = 0; r < R; ++r) for (int q = 0; q < 2; ++q) acc[r][q] = a[r][q]; return; }
        default: { __m512 a[R][1]; tile<R, 1>(pr, r0, pc, p0, blocks, a); for (int r = 0; r < R; ++r) acc[r][0] = a[r][0]; return; }
    }
}

}  // namespace

size_t qgemm_scratch_bytes(const QGemm & g) {
    const int64_t blocks = g.K / kQK;
    const int64_t cols = kGroupPairs * (blocks * 64 + blocks * 16 * 4);
    const int64_t rows = kRowBlock * blocks * (64 + 8 + 4);
    return static_cast<size_t>(cols + rows + 256);
}

void qgemm_avx512vnni(const QGemm & g, int ith, int nth, void * scratch) {
    const int64_t blocks = g.K / kQK;
    const int64_t pairs = (g.N + 1) / 2;
    int64_t q0 = 0, q1 = pairs, m0 = 0, m1 = g.M;
    if (pairs >= 4 * nth) {
        q0 = pairs * ith / nth;
        q1 = pairs * (ith + 1) / nth;
    } else {
        const int64_t tiles = (g.M + kRows - 1) / kRows;
        m0 = min64(g.M, tiles * ith / nth * kRows);
        m1 = min64(g.M, tiles * (ith + 1) / nth * kRows);
    }
    if (q0 >= q1 || m0 >= m1) return;

    auto * base = static_cast<uint8_t *>(scratch);
    base += (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
    PackedColumns pc{reinterpret_cast<int8_t *>(base), nullptr};
    pc.d = reinterpret_cast<float *>(base + kGroupPairs * blocks * 64);
    uint8_t * rows_base = base + kGroupPairs * (blocks * 64 + blocks * 16 * 4);
    PackedRows pr{rows_base, nullptr, nullptr};
    pr.neg = reinterpret_cast<uint64_t *>(rows_base + kRowBlock * blocks * 64);
    pr.d = reinterpret_cast<float *>(rows_base + kRowBlock * blocks * (64 + 8));

    for (int64_t qg = q0; qg < q1; qg += kGroupPairs) {
        const int64_t gp = min64(kGroupPairs, q1 - qg);
        for (int64_t p = 0; p < gp; ++p) {
            for (int h = 0; h < 2; ++h) {
                const int64_t n = (qg + p) * 2 + h;
                int8_t * qs = pc.qs + p * blocks * 64;
                float * d = pc.d + p * blocks * 16;
                if (n < g.N) {
                    quantize_column(reinterpret_cast<const float *>(g.x + n * g.nb1), blocks, qs, d, h);
                } else {
                    for (int64_t b = 0; b < blocks; ++b) {
                        std::memset(qs + b * 64 + h * kQK, 0, kQK);
                        for (int l = 0; l < 8; ++l) d[b * 16 + h * 8 + l] = 0.0f;
                    }
                }
            }
        }
        for (int64_t mb = m0; mb < m1; mb += kRowBlock) {
            const int64_t rows = min64(kRowBlock, m1 - mb);
            unpack_rows(g, mb, rows, pr);
            for (int64_t p = 0; p < gp; p += kPairs) {
                const int pn = static_cast<int>(min64(kPairs, gp - p));
                for (int64_t r = 0; r < rows; r += kRows) {
                    const int rn = static_cast<int>(min64(kRows, rows - r));
                    __m512 acc[kRows][kPairs];
                    switch (rn) {
                        case 4: tile_rows<4>(pn, pr, r, pc, p, blocks, acc); break;
                        case 3: tile_rows<3>(pn, pr, r, pc, p, blocks, acc); break;
                        case 2: tile_rows<2>(pn, pr, r, pc, p, blocks, acc); break;
                        default: tile_rows<1>(pn, pr, r, pc, p, blocks, acc); break;
                    }
                    for (int i = 0; i < rn; ++i) {
                        const int64_t m = mb + r + i;
                        const float bias = g.bias ? g.bias[m] : 0.0f;
                        for (int q = 0; q < pn; ++q) {
                            float lo, hi;
                            hsum_pairs(acc[i][q], &lo, &hi);
                            const int64_t n = (qg + p + q) * 2;
                            // The bias as ggml_add adds it: a separate float add.
                            if (n < g.N) g.out[n * g.M + m] = g.bias ? lo + bias : lo;
                            if (n + 1 < g.N) g.out[(n + 1) * g.M + m] = g.bias ? hi + bias : hi;
                        }
                    }
                }
            }
        }
    }
}

}  // namespace sd::cpu

#endif  // SDNODE_HAVE_AVX512_KERNELS
