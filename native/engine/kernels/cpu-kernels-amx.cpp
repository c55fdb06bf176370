// The AMX product kernel behind cpu-kernels.h's f16 convolutions and linear layers, for CPUs
// with AMX-BF16 tiles (Intel Sapphire Rapids and later). Built with AMX and AVX-512 flags, called
// only after a CPU and OS check (cpu-kernels.cpp).
//
// Exact products, f32 sums in another order. ggml multiplies f16 weights by activations rounded
// to f16, each product exact in f32, and sums in f32. Here every f16 value v is split into two
// bf16 values, hi = v's top 8 significant bits and lo = v - hi (its last 3: exact), so that
//   w * x = w_hi*x_hi + w_lo*x_hi + w_hi*x_lo + w_lo*x_lo,
// four bf16 products, each exact in the tile unit's f32 arithmetic. A weight's pair (w_hi, w_lo)
// meets an activation's pairs (x_hi, x_hi) and (x_lo, x_lo) in two TDPBF16PS. So each output is
// ggml's sum of the same exact products, in the tile unit's order (f32, round to nearest)
// instead of ggml's: it differs from ggml's by float rounding only (a few ulp of the sum of
// |products|; cpu_kernels_test bounds it), at 4 bf16 products per f16 one on a unit that does
// 16x the f32 FMAs of AVX-512.
//
// Tiles: A = weights, 16 rows x 16 k (u32 pairs); B = activations, 16 k x 16 columns (u32 pairs,
// hi and lo); C = 16 rows x 16 columns f32. A micro-kernel keeps 2 x 2 C tiles (32 rows x 32
// columns) in tile registers over a chunk of K, loading two A tiles and four B tiles per 16 k.
// Blocking: threads take units of work (rectangles of rows x columns, see Plan) one at a time;
// within a unit, per block of columns and chunk of kKc k, the activations are packed once (im2col
// on the fly, rounded to f16, split) and each 32-row weight block's chunk once; partial sums wait
// in a per-thread buffer until the last chunk, then bias, residual and the output layout are
// applied on the way out.
#include "kernels/cpu-kernels-impl.h"

#if defined(SDNODE_HAVE_AMX_KERNELS)
#include <immintrin.h>

#include "kernels/cpu-kernels-avx512-inl.h"

#include <cstring>

namespace sd::cpu {

namespace {

constexpr int64_t kKc = 256;                // k per chunk (a multiple of 16)
constexpr int64_t kNc = 256;                // columns per packed activation block (a multiple of 32)
constexpr int64_t kBlockBytes = 1 << 20;    // a row block's packed weights and partial sums
constexpr int64_t kTileU32 = 256;          // one 16 x 16 tile of u32 (1 KB)

int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

struct TileConfig {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

// Eight tiles of 16 rows x 64 bytes: tmm0-3 partial sums, tmm4-5 weights, tmm6-7 activations.
void configure_tiles() {
    alignas(64) TileConfig c;
    std::memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; ++t) {
        c.colsb[t] = 64;
        c.rows[t] = 16;
    }
    _tile_loadconfig(&c);
}

// An f16 value (as f32) split into bf16 halves: hi's bits (low 16 zero) and lo = v - hi (exact,
// at most 3 significant bits, so its low 16 bits are zero too).
struct Split {
    __m512i hi, lo;
};
inline __attribute__((always_inline)) Split split(__m512 v) {
    const __m512i hi = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
    const __m512 lo = _mm512_sub_ps(v, _mm512_castsi512_ps(hi));
    return {hi, _mm512_castps_si512(lo)};
}
// A bf16 pair (a, b) in one u32: a in the low half (the pair's first element).
inline __attribute__((always_inline)) __m512i pair(__m512i a, __m512i b) {
    return _mm512_or_si512(_mm512_srli_epi32(a, 16), b);
}
inline __attribute__((always_inline)) __m512 round_to_half(__m512 v) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
// 16 activations (already f16 values) for one k as B tile rows: (hi, hi) and (lo, lo) pairs.
inline __attribute__((always_inline)) void store_activations(uint32_t * hi_row, uint32_t * lo_row, __m512 v) {
    const Split s = split(v);
    _mm512_store_si512(hi_row, pair(s.hi, s.hi));
    _mm512_store_si512(lo_row, pair(s.lo, s.lo));
}

__mmask16 first_lanes(int64_t n) { return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1); }

// Weight rows [m0, m0 + 32) x k [k0, k0 + 16*nq) as A tiles (0 past M or K):
//   a[((q*2 + h)*16 + r)*16 + i] = pair(w_hi, w_lo) of row m0 + 16h + r, k = k0 + 16q + i.
void pack_weights(const Gemm & g, int64_t m0, int64_t k0, int64_t nq, uint32_t * a) {
    for (int64_t r = 0; r < 32; ++r) {
        uint32_t * dst = a + (r / 16) * kTileU32 + (r % 16) * 16;
        if (m0 + r >= g.M) {
            for (int64_t q = 0; q < nq; ++q) _mm512_store_si512(dst + q * 2 * kTileU32, _mm512_setzero_si512());
            continue;
        }
        const uint16_t * row = g.w + (m0 + r) * g.K + k0;
        const int64_t left = g.K - k0;
        for (int64_t q = 0; q < nq; ++q) {
            const __mmask16 mask = first_lanes(left - 16 * q);
            const __m512 v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, row + 16 * q));
            const Split s = split(v);
            _mm512_store_si512(dst + q * 2 * kTileU32, pair(s.hi, s.lo));
        }
    }
}

// The activation block's layout: tile column t (16 columns) holds, per q, a (hi, lo) pair of B
// tiles: b[((t*nq + q)*2 + s)*256 + i*16 + j] = column 16t + j's k = k0 + 16q + i, s = 0 hi, 1 lo.
uint32_t * b_tile(uint32_t * b, int64_t t, int64_t nq, int64_t q) { return b + (t * nq + q) * 2 * kTileU32; }

// Conv columns [n0, n0 + 16*tiles): the im2col block of k [k0, k0 + 16*nq), rounded to f16.
void pack_conv(const Gemm & g, int64_t n0, int64_t tiles, int64_t k0, int64_t nq, uint32_t * b) {
    const int64_t out_pixels = g.out_w * g.out_h, khw = static_cast<int64_t>(g.kernel_h) * g.kernel_w;
    const int64_t s1 = static_cast<int64_t>(g.nb1 / sizeof(float)), s2 = static_cast<int64_t>(g.nb2 / sizeof(float)),
                  s3 = static_cast<int64_t>(g.nb3 / sizeof(float));
    const float * x = reinterpret_cast<const float *>(g.x);
    // Per k of the chunk: its window offset (c*s2 + ky*s1 + kx), ky and kx; -1 past K.
    alignas(64) int32_t koff[kKc], kys[kKc], kxs[kKc];
    for (int64_t i = 0; i < 16 * nq; ++i) {
        const int64_t k = k0 + i;
        if (k >= g.K) {
            kys[i] = -1;
            continue;
        }
        const int64_t c = k / khw;
        kys[i] = static_cast<int32_t>((k / g.kernel_w) % g.kernel_h);
        kxs[i] = static_cast<int32_t>(k % g.kernel_w);
        koff[i] = static_cast<int32_t>(c * s2 + kys[i] * s1 + kxs[i]);
    }
    for (int64_t t = 0; t < tiles; ++t) {
        const int64_t c0 = n0 + 16 * t, valid = min64(16, g.N - c0);
        if (valid <= 0) {
            for (int64_t q = 0; q < nq; ++q) {
                uint32_t * dst = b_tile(b, t, nq, q);
                for (int i = 0; i < 32; ++i) _mm512_store_si512(dst + 16 * i, _mm512_setzero_si512());
            }
            continue;
        }
        const int64_t batch = c0 / out_pixels, p = c0 % out_pixels, oy = p / g.out_w, ox = p % g.out_w;
        // One output row at stride 1: each k is 16 consecutive input floats (masked at the borders).
        const bool row_run = g.stride == 1 && ox + valid <= g.out_w;
        const float * row0 = x + batch * s3 + (oy - g.pad) * s1 + (ox - g.pad);  // k = 0's input for column c0
        alignas(64) int32_t iy0[16], ix0[16], base[16];
        for (int j = 0; j < 16; ++j) {
            const int64_t n = c0 + min64(j, valid - 1), bj = n / out_pixels, pj = n % out_pixels;
            iy0[j] = static_cast<int32_t>((pj / g.out_w) * g.stride - g.pad);
            ix0[j] = static_cast<int32_t>((pj % g.out_w) * g.stride - g.pad);
            base[j] = static_cast<int32_t>(bj * s3 + iy0[j] * s1 + ix0[j]);
        }
        const __m512i viy0 = _mm512_load_si512(iy0), vix0 = _mm512_load_si512(ix0), vbase = _mm512_load_si512(base);
        const __m512i vh = _mm512_set1_epi32(static_cast<int>(g.in_h)), vw = _mm512_set1_epi32(static_cast<int>(g.in_w));
        const __mmask16 lanes = first_lanes(valid);
        for (int64_t q = 0; q < nq; ++q) {
            uint32_t * dst = b_tile(b, t, nq, q);
            for (int i = 0; i < 16; ++i) {
                const int64_t e = 16 * q + i, ky = kys[e], kx = kxs[e];
                __m512 v = _mm512_setzero_ps();
                if (ky >= 0) {
                    if (row_run) {
                        const int64_t iy = oy * g.stride - g.pad + ky, ix = ox - g.pad + kx;
                        if (iy >= 0 && iy < g.in_h) {
                            // Lanes whose input column lies inside the row.
                            const int64_t lo = max64(0, -ix), hi = min64(valid, g.in_w - ix);
                            if (lo < hi) {
                                const __mmask16 m = static_cast<__mmask16>(first_lanes(hi) & ~first_lanes(lo));
                                v = _mm512_maskz_loadu_ps(m, row0 + koff[e]);
                            }
                        }
                    } else {
                        const __m512i iy = _mm512_add_epi32(viy0, _mm512_set1_epi32(static_cast<int>(ky)));
                        const __m512i ix = _mm512_add_epi32(vix0, _mm512_set1_epi32(static_cast<int>(kx)));
                        const __mmask16 m = lanes & _mm512_cmpge_epi32_mask(iy, _mm512_setzero_si512()) &
                                            _mm512_cmplt_epi32_mask(iy, vh) & _mm512_cmpge_epi32_mask(ix, _mm512_setzero_si512()) &
                                            _mm512_cmplt_epi32_mask(ix, vw);
                        v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, _mm512_add_epi32(vbase, _mm512_set1_epi32(koff[e])), x, 4);
                    }
                }
                store_activations(dst + i * 16, dst + kTileU32 + i * 16, round_to_half(v));
            }
        }
    }
}

// Linear columns (rows of x) [n0, n0 + 16*tiles), k [k0, k0 + 16*nq), rounded to f16: 16 rows x
// 16 k transposed at a time.
void pack_linear(const Gemm & g, int64_t n0, int64_t tiles, int64_t k0, int64_t nq, uint32_t * b) {
    for (int64_t t = 0; t < tiles; ++t) {
        const float * rows[16];
        for (int j = 0; j < 16; ++j) {
            const int64_t n = n0 + 16 * t + j;
            if (n >= g.N) {
                rows[j] = nullptr;
                continue;
            }
            const int64_t i1 = n % g.ne1, i2 = (n / g.ne1) % g.ne2, i3 = n / (g.ne1 * g.ne2);
            rows[j] = reinterpret_cast<const float *>(g.x + i1 * g.nb1 + i2 * g.nb2 + i3 * g.nb3) + k0;
        }
        for (int64_t q = 0; q < nq; ++q) {
            const __mmask16 mask = first_lanes(g.K - k0 - 16 * q);
            __m512 in[16], out[16];
            for (int j = 0; j < 16; ++j) in[j] = rows[j] ? _mm512_maskz_loadu_ps(mask, rows[j] + 16 * q) : _mm512_setzero_ps();
            transpose16(in, out);
            uint32_t * dst = b_tile(b, t, nq, q);
            for (int i = 0; i < 16; ++i) store_activations(dst + i * 16, dst + kTileU32 + i * 16, round_to_half(out[i]));
        }
    }
}

// 32 rows x 32 columns over nq steps of 16 k: acc (row stride ldc floats) += A . B, or = when
// `first`.
void micro_kernel(const uint32_t * a, const uint32_t * b0, const uint32_t * b1, int64_t nq, float * acc, int64_t ldc,
                  bool first) {
    const size_t stride = static_cast<size_t>(ldc) * sizeof(float);
    float * c10 = acc + 16 * ldc;
    if (first) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    } else {
        _tile_loadd(0, acc, stride);
        _tile_loadd(1, acc + 16, stride);
        _tile_loadd(2, c10, stride);
        _tile_loadd(3, c10 + 16, stride);
    }
    for (int64_t q = 0; q < nq; ++q) {
        const uint32_t * aq = a + q * 2 * kTileU32;
        const uint32_t * b0q = b0 + q * 2 * kTileU32;
        const uint32_t * b1q = b1 + q * 2 * kTileU32;
        _tile_loadd(4, aq, 64);
        _tile_loadd(5, aq + kTileU32, 64);
        _tile_loadd(6, b0q, 64);
        _tile_loadd(7, b1q, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
        _tile_loadd(6, b0q + kTileU32, 64);
        _tile_loadd(7, b1q + kTileU32, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, acc, stride);
    _tile_stored(1, acc + 16, stride);
    _tile_stored(2, c10, stride);
    _tile_stored(3, c10 + 16, stride);
}

// Finished sums acc[r*ldc + j] (rows m0 + r < m1, columns n0 + j < n1) to out: + bias[m], then
// + residual at out's index (ggml_add(conv, bias), then ggml_add(residual, .)).
void write_out(const Gemm & g, const float * acc, int64_t ldc, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    if (g.out_plane > 0) {
        // Image [b, m, p]: a row's columns are runs of consecutive p.
        for (int64_t m = m0; m < m1; ++m) {
            const float * row = acc + (m - m0) * ldc;
            const __m512 bias = _mm512_set1_ps(g.bias ? g.bias[m] : 0.0f);
            for (int64_t n = n0; n < n1;) {
                const int64_t batch = n / g.out_plane, p = n % g.out_plane, run = min64(g.out_plane - p, n1 - n);
                const int64_t o = (batch * g.M + m) * g.out_plane + p;
                for (int64_t j = 0; j < run; j += 16) {
                    const __mmask16 mask = first_lanes(run - j);
                    __m512 v = _mm512_maskz_loadu_ps(mask, row + (n - n0) + j);
                    if (g.bias) v = _mm512_add_ps(v, bias);
                    if (g.residual) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, g.residual + o + j), v);
                    _mm512_mask_storeu_ps(g.out + o + j, mask, v);
                }
                n += run;
            }
        }
        return;
    }
    // Tokens [n, m]: 16 rows x 16 columns transposed at a time.
    for (int64_t m = m0; m < m1; m += 16) {
        const __mmask16 mask = first_lanes(m1 - m);
        const __m512 bias = g.bias ? _mm512_maskz_loadu_ps(mask, g.bias + m) : _mm512_setzero_ps();
        for (int64_t n = n0; n < n1; n += 16) {
            __m512 in[16], out[16];
            for (int r = 0; r < 16; ++r) in[r] = _mm512_loadu_ps(acc + (m - m0 + r) * ldc + (n - n0));
            transpose16(in, out);
            for (int64_t j = 0; j < min64(16, n1 - n); ++j) {
                const int64_t o = (n + j) * g.M + m;
                __m512 v = out[j];
                if (g.bias) v = _mm512_add_ps(v, bias);
                if (g.residual) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, g.residual + o), v);
                _mm512_mask_storeu_ps(g.out + o, mask, v);
            }
        }
    }
}

// Work comes in units, rectangles of rows x columns that threads take one at a time (from a
// shared counter where the op has one: a core slowed by a neighbour then simply takes fewer).
// A unit packs its own weights and activations, so units are cut, down to about 4 per thread,
// along whichever side adds less repacking.
//
// Within a unit, per column block and k chunk, the loops hold one 32-column pair of packed
// activations (kKc k: 64 KB, mostly in L1) while every 32-row weight block of the chunk streams
// past it from L2; the partial sums wait in `acc` (L2) between chunks. Rows per block are capped
// so that the packed weights and the partial sums of a block stay in L2 together. (kKc 128, all
// in L1, measured slower: the partial sums then travel twice as often; 512 no faster than 256.)
struct Plan {
    int64_t um, un;            // rows and columns per unit (multiples of 32)
    int64_t units_m, units_n;  // units down and across
    int64_t nc;                // columns per block (a multiple of 32)
    int64_t mc;                // rows per block (a multiple of 32)
};

Plan plan_for(const Gemm & g, int nth) {
    Plan p{};
    p.um = round_up(g.M, 32);
    p.un = round_up(g.N, 32);
    const auto across = [&] { return (g.N + p.un - 1) / p.un; };
    const auto down = [&] { return (g.M + p.um - 1) / p.um; };
    while (down() * across() < 4 * nth && (p.um > 32 || p.un > 32)) {
        // Bytes packed once more: another column block repacks all weights (4 bytes per value),
        // another row block all activations (8 bytes per value).
        const int64_t more_weights = across() * g.M * 4, more_activations = down() * g.N * 8;
        if (p.un > 32 && (p.um <= 32 || more_weights <= more_activations)) p.un = round_up(p.un / 2, 32);
        else p.um = round_up(p.um / 2, 32);
    }
    p.units_m = down();
    p.units_n = across();
    p.nc = min64(p.un, p.um <= 640 ? kNc : kNc / 2);
    p.mc = min64(p.um, max64(32, kBlockBytes / (kKc * 4 + p.nc * 4) / 32 * 32));
    return p;
}

struct Scratch {
    uint32_t * b;  // nc columns x kKc
    uint32_t * a;  // mc rows x kKc
    float * acc;   // mc rows x nc
};

// Rows [m0, m1) x columns [n0, n1) of the product, written out.
void compute_unit(const Gemm & g, const Plan & p, const Scratch & s, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const bool conv = g.kernel_w > 0;
    for (int64_t nb = n0; nb < n1; nb += p.nc) {
        const int64_t nb1 = min64(n1, nb + p.nc), pairs = (nb1 - nb + 31) / 32;
        for (int64_t mb = m0; mb < m1; mb += p.mc) {
            const int64_t mb1 = min64(m1, mb + p.mc), blocks = (mb1 - mb + 31) / 32;
            for (int64_t k0 = 0; k0 < g.K; k0 += kKc) {
                const int64_t nq = (min64(kKc, g.K - k0) + 15) / 16;
                if (conv) pack_conv(g, nb, 2 * pairs, k0, nq, s.b);
                else pack_linear(g, nb, 2 * pairs, k0, nq, s.b);
                for (int64_t i = 0; i < blocks; ++i) pack_weights(g, mb + 32 * i, k0, nq, s.a + i * 32 * nq * 16);
                for (int64_t j = 0; j < pairs; ++j) {
                    const uint32_t * b0 = b_tile(s.b, 2 * j, nq, 0), * b1 = b_tile(s.b, 2 * j + 1, nq, 0);
                    for (int64_t i = 0; i < blocks; ++i) {
                        micro_kernel(s.a + i * 32 * nq * 16, b0, b1, nq, s.acc + i * 32 * p.nc + 32 * j, p.nc, k0 == 0);
                    }
                }
            }
            write_out(g, s.acc, p.nc, mb, mb1, nb, nb1);
        }
    }
}

}  // namespace

size_t gemm_amx_scratch_bytes(const Gemm & g) {
    // Plan::mc * (kKc + nc) * 4 <= kBlockBytes (+ one row block when mc is at its floor of 32).
    return static_cast<size_t>(kBlockBytes + 32 * (kKc + kNc) * 4 + kNc * kKc * 8 + 64);
}

void gemm_amx(const Gemm & g, int ith, int nth, void * scratch) {
    int32_t * next_unit = g.next_unit;
    const Plan p = plan_for(g, nth);
    Scratch s;
    s.b = static_cast<uint32_t *>(scratch);
    s.a = s.b + p.nc * kKc * 2;
    s.acc = reinterpret_cast<float *>(s.a + p.mc * kKc);
    const int64_t units = p.units_m * p.units_n;
    // Without a counter, thread ith takes an equal share in order.
    int64_t u = next_unit ? __atomic_fetch_add(next_unit, 1, __ATOMIC_RELAXED) : units * ith / nth;
    const int64_t last = next_unit ? units : units * (ith + 1) / nth;
    if (u >= last) return;
    configure_tiles();
    while (u < last && !stop_requested(g.abort)) {
        const int64_t m0 = (u / p.units_n) * p.um, n0 = (u % p.units_n) * p.un;
        compute_unit(g, p, s, m0, min64(g.M, m0 + p.um), n0, min64(g.N, n0 + p.un));
        u = next_unit ? __atomic_fetch_add(next_unit, 1, __ATOMIC_RELAXED) : u + 1;
    }
    _tile_release();
}

}  // namespace sd::cpu

#endif  // SDNODE_HAVE_AMX_KERNELS
