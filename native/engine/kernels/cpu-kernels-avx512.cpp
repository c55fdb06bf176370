// The AVX-512 product kernel behind cpu-kernels.h. Built with -mavx512f -mfma -mf16c
// -ffp-contract=off (every FMA here is written out; a product that ggml rounds before adding
// must stay rounded) and called only on CPUs that have them. Everything here is file-local (no
// shared templates or inline functions: see cpu-kernels-impl.h).
//
// Per output value the arithmetic is ggml_vec_dot_f16's on AVX-512, step for step:
//   acc[s] (s = 0..3, 16 lanes each) += x[64c + 16s + l] * w[64c + 16s + l]   (FMA, c ascending)
//   sum  = (double) reduce_add((acc[0] + acc[2]) + (acc[1] + acc[3]))
//   sum += (double)(x[k] * w[k]) for the K % 64 leftover k, ascending;  out = (float) sum
// with x (the activations) rounded to f16 first. In F32 mode (ggml_vec_dot_f32, attention) the
// same 4 x 16-lane FMA part runs on f32 x and rows, the reduction is kept in float, and the
// K % 64 leftovers follow ggml-cpu's compiled loop: products rounded and added one by one for
// blocks of 16 and then one of 8, fused multiply-adds for the last < 8 (cpu-kernels.cpp checks
// this against ggml at run time before using it). What differs is the order in which outputs are
// computed: a register tile of kMR weight rows x kNR columns, one accumulator s at a time
// ("pass" s), so every loaded vector feeds several FMAs.
//
// Blocking: a thread takes a rectangle of rows x column panels. Columns are packed kNR at a
// time (a panel: im2col on the fly, rounded to f16, stored as f32 in pass-major order so a pass
// streams contiguously), a group of panels at once so the weights of a row block are reused
// across the group while they sit in L2. Pass partial sums go to a small buffer, then each tile
// is reduced and written out.
#include "kernels/cpu-kernels-impl.h"

#if defined(SDNODE_HAVE_AVX512_KERNELS)
#include <immintrin.h>

#include "kernels/cpu-kernels-avx512-inl.h"

#include <cstring>

namespace sd::cpu {

namespace {

constexpr int kNR = 6;       // columns per register tile (and per packed panel)
constexpr int kMR = 4;       // weight rows per register tile
constexpr int kStep = 64;    // ggml's GGML_F16_STEP on AVX-512: 4 accumulators x 16 lanes
constexpr int kPasses = 4;
constexpr int kLanes = 16;

constexpr int64_t kPanelGroupBytes = 768 * 1024;  // packed activations kept hot (L2)
constexpr int64_t kRowBlockBytes = 512 * 1024;    // weight rows kept hot (L2)
constexpr int64_t kMinColumnsToPackRows = 36;
constexpr int64_t kFewPanelsBytes = 4 << 20;      // packed activations of a small product, all at once
constexpr int64_t kL1Bytes = 40 * 1024;           // of a 48 KB L1d, leaving room for the rest
constexpr int64_t kMaxL1Panels = 4;

int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

struct Blocking {
    int64_t np;          // K rounded down to kStep: the vectorized part
    int64_t nc;          // np / kStep
    int64_t tail;        // K - np, summed in double
    int64_t panels;      // ceil(N / kNR)
    int64_t group;       // panels packed at once
    int64_t row_block;   // rows per block (multiple of kMR, of 16 unless it is all of M)
    bool f16_rows;       // weights read as f16 in the kernel instead of packed as f32
    int64_t l1_panels;   // panels whose pass data fits L1 beside a weight tile's
    int64_t chunk;       // c per pass chunk: a panel's chunk and the row block's fit L1
};

Blocking blocking_for(const Gemm & g) {
    Blocking b;
    b.np = g.K & ~static_cast<int64_t>(kStep - 1);
    b.nc = b.np / kStep;
    b.tail = g.K - b.np;
    b.panels = (g.N + kNR - 1) / kNR;
    b.group = max64(1, kPanelGroupBytes / (4 * kNR * g.K));
    // Few columns: all panels at once, so that the weights (then the large operand) stream from
    // memory once rather than once per group.
    if (b.panels * kNR * g.K * 4 <= kFewPanelsBytes) b.group = b.panels;
    // Packing weight rows as f32 pays when a group has enough columns to reuse them.
    b.f16_rows = g.kind == Gemm::Kind::F16 && min64(b.group, b.panels) * kNR < kMinColumnsToPackRows;
    // A multiple of 16 rows, so that outputs are reduced 16 at a time (reduce16).
    b.row_block = max64(kLanes, (kRowBlockBytes / ((b.f16_rows ? 2 : 4) * g.K)) / kLanes * kLanes);
    b.row_block = min64(b.row_block, (g.M + kMR - 1) / kMR * kMR);
    const int64_t tile_pass_bytes = b.nc * kMR * kLanes * (b.f16_rows ? 2 : 4);
    const int64_t panel_pass_bytes = max64(1, b.nc * kNR * kLanes * 4);
    b.l1_panels = min64(kMaxL1Panels, max64(1, (kL1Bytes - tile_pass_bytes) / panel_pass_bytes));
    // Chunks only where a whole pass does not fit: then a panel's chunk plus the block's weight
    // tiles' take about kL1Bytes.
    const int64_t block_step_bytes = b.row_block * kLanes * (b.f16_rows ? 2 : 4), panel_step_bytes = kNR * kLanes * 4;
    b.chunk = b.l1_panels > 1 || tile_pass_bytes + panel_pass_bytes <= kL1Bytes
                  ? max64(1, b.nc)
                  : max64(8, kL1Bytes / (block_step_bytes + panel_step_bytes));
    return b;
}

float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

// F32 mode: row m of `a`.
const float * a_row(const Gemm & g, int64_t m) { return g.a + m * g.a_stride; }

// A finished sum for row m stored at out[o]: + bias, then + residual (two float additions).
float epilogue(const Gemm & g, float v, int64_t m, int64_t o) {
    if (g.bias) v += g.bias[m];
    if (g.residual) v += g.residual[o];
    return v;
}
float round_to_half(float v) { return _cvtsh_ss(_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT)); }

// Conv column n's K activations (f32, not yet rounded; 0 outside the image) into `dst`.
__attribute__((noinline)) void gather_column(const Gemm & g, int64_t n, float * dst) {
    const int64_t ox = n % g.out_w, oy = (n / g.out_w) % g.out_h, b = n / (g.out_w * g.out_h);
    const int64_t x0 = ox * g.stride - g.pad, y0 = oy * g.stride - g.pad;
    const int kw = g.kernel_w, kh = g.kernel_h;
    const int64_t channels = g.K / (static_cast<int64_t>(kw) * kh);
    // Most windows lie inside the image: copy their rows without per-element bounds checks.
    const bool inside_x = x0 >= 0 && x0 + kw <= g.in_w;
    float * d = dst;
    for (int64_t c = 0; c < channels; ++c) {
        const char * plane = g.x + b * g.nb3 + c * g.nb2;
        for (int ky = 0; ky < kh; ++ky, d += kw) {
            const int64_t iy = y0 + ky;
            if (iy < 0 || iy >= g.in_h) {
                for (int kx = 0; kx < kw; ++kx) d[kx] = 0.0f;
                continue;
            }
            const float * row = reinterpret_cast<const float *>(plane + iy * g.nb1) + x0;
            if (inside_x) {
                if (kw == 3) {
                    d[0] = row[0];
                    d[1] = row[1];
                    d[2] = row[2];
                } else {
                    for (int kx = 0; kx < kw; ++kx) d[kx] = row[kx];
                }
            } else {
                for (int kx = 0; kx < kw; ++kx) d[kx] = (x0 + kx >= 0 && x0 + kx < g.in_w) ? row[kx] : 0.0f;
            }
        }
    }
}

// Packs panel columns [n0, n0 + kNR) (zeros past N), rounded to f16:
//   vec[((s*nc + c)*kNR + j)*16 + l] = column j, element 64c + 16s + l
//   tail[j*tail + t]                = column j, element np + t
// Element offsets (in floats) of a conv window's K elements from its top-left corner, for
// windows that lie inside the image: offsets[k] for k = (c*kh + ky)*kw + kx.
void window_offsets(const Gemm & g, int32_t * offsets) {
    const int64_t channels = g.K / (static_cast<int64_t>(g.kernel_w) * g.kernel_h);
    int32_t * o = offsets;
    for (int64_t c = 0; c < channels; ++c)
        for (int ky = 0; ky < g.kernel_h; ++ky)
            for (int kx = 0; kx < g.kernel_w; ++kx)
                *o++ = static_cast<int32_t>((c * g.nb2 + ky * g.nb1) / sizeof(float) + kx);
}

// Whether window_offsets() can address this input (32-bit offsets).
bool offsets_fit(const Gemm & g) {
    if (g.kernel_w == 0) return false;
    const int64_t channels = g.K / (static_cast<int64_t>(g.kernel_w) * g.kernel_h);
    const int64_t span = (channels * static_cast<int64_t>(g.nb2) + g.kernel_h * static_cast<int64_t>(g.nb1)) / 4 + g.kernel_w;
    return g.nb1 % 4 == 0 && g.nb2 % 4 == 0 && span < (int64_t{1} << 31);
}

// Packs panel columns [n0, n0 + kNR) (zeros past N), rounded to f16 in F16 mode:
//   vec[((s*nc + c)*kNR + j)*16 + l] = column j, element 64c + 16s + l
//   tail[j*tail + t]                = column j, element np + t
// A column is read straight from the input when it can be (a linear layer's row, a conv window
// inside the image through `offsets`, 16 elements per gather), else gathered into `tmp` first.
__attribute__((noinline)) void pack_panel(const Gemm & g, const Blocking & bl, int64_t n0, const int32_t * offsets, float * tmp, float * vec,
                float * tail) {
    const bool round = g.kind == Gemm::Kind::F16;
    for (int j = 0; j < kNR; ++j) {
        const int64_t n = n0 + j;
        const float * src = tmp;        // contiguous column
        const char * window = nullptr;  // or a conv window's corner, addressed through offsets
        if (n >= g.N) {
            std::memset(tmp, 0, static_cast<size_t>(g.K) * sizeof(float));
        } else if (g.kernel_w == 0) {
            const int64_t i1 = n % g.ne1, i2 = (n / g.ne1) % g.ne2, i3 = n / (g.ne1 * g.ne2);
            src = reinterpret_cast<const float *>(g.x + i1 * g.nb1 + i2 * g.nb2 + i3 * g.nb3);
        } else {
            const int64_t ox = n % g.out_w, oy = (n / g.out_w) % g.out_h, b = n / (g.out_w * g.out_h);
            const int64_t x0 = ox * g.stride - g.pad, y0 = oy * g.stride - g.pad;
            if (offsets && x0 >= 0 && y0 >= 0 && x0 + g.kernel_w <= g.in_w && y0 + g.kernel_h <= g.in_h) {
                window = g.x + b * g.nb3 + y0 * g.nb1 + x0 * sizeof(float);
            } else {
                gather_column(g, n, tmp);
            }
        }
        for (int64_t q = 0; q < bl.np / kLanes; ++q) {
            __m512 v = window ? _mm512_i32gather_ps(_mm512_loadu_si512(offsets + q * kLanes), window, 4)
                              : _mm512_loadu_ps(src + q * kLanes);
            if (round) v = _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
            const int64_t c = q / kPasses, s = q % kPasses;
            _mm512_storeu_ps(vec + ((s * bl.nc + c) * kNR + j) * kLanes, v);
        }
        for (int64_t t = 0; t < bl.tail; ++t) {
            const float v = window ? reinterpret_cast<const float *>(window)[offsets[bl.np + t]] : src[bl.np + t];
            tail[j * bl.tail + t] = round ? round_to_half(v) : v;
        }
    }
}

// Rows [m0, m0 + rows) of the weights as f32, tile by tile (kMR rows), pass-major:
//   a[((t*kPasses + s)*nc + c)*kMR*16 + r*16 + l] = w[m0 + t*kMR + r, 64c + 16s + l]
// and in F32 mode their leftovers transposed: at[i*row_block + (m - m0)] = row m, element np + i.
__attribute__((noinline)) void pack_rows(const Gemm & g, const Blocking & bl, int64_t m0, int64_t rows, float * a, float * at) {
    const bool f16 = g.kind == Gemm::Kind::F16;
    const int64_t K = g.K, nc = bl.nc;
    // Each row is read front to back (streams well from memory) and scattered into the layout.
    for (int64_t i = 0; i < rows; ++i) {
        const int64_t t = i / kMR, r = i % kMR;
        float * tile = a + t * kPasses * nc * kMR * kLanes + r * kLanes;
        const uint16_t * w = f16 ? g.w + (m0 + i) * K : nullptr;
        const float * x = f16 ? nullptr : a_row(g, m0 + i);
        for (int64_t c = 0; c < nc; ++c) {
            for (int s = 0; s < kPasses; ++s) {
                const int64_t k = c * kStep + s * kLanes;
                const __m512 v = f16 ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(w + k)))
                                     : _mm512_loadu_ps(x + k);
                _mm512_storeu_ps(tile + (s * nc + c) * kMR * kLanes, v);
            }
        }
    }
    if (!f16) {
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t i = 0; i < bl.tail; ++i) at[i * bl.row_block + r] = a_row(g, m0 + r)[bl.np + i];
    }
}

// Where a tile's weight rows come from: packed f32 rows (pack_rows; a_s is the tile's pass s),
// or f16 rows straight from the tensor (row stride K) converted in the loop, for few columns per
// weight load, where packing them would not pay.
struct TileRows {
    const float * a_s = nullptr;
    const uint16_t * w = nullptr;
    int64_t K = 0;
    int s = 0;
};

// Pass s over c in [c0, c1) on a tile of MR weight rows x kNR packed columns: the partial sums
// of accumulator s, 16 lanes per output, in part[(r*kNR + j)*16] (continued from there unless
// c0 == 0).
template <int MR, bool F16>
void tile_pass(const TileRows & rows, const float * vec_s, int64_t c0, int64_t c1, float * part) {
    __m512 acc[MR][kNR];
    for (int r = 0; r < MR; ++r)
        for (int j = 0; j < kNR; ++j) acc[r][j] = c0 > 0 ? _mm512_loadu_ps(part + (r * kNR + j) * kLanes) : _mm512_setzero_ps();
    const uint16_t * wp = F16 ? rows.w + rows.s * kLanes : nullptr;
    for (int64_t c = c0; c < c1; ++c) {
        __m512 a[MR];
        for (int r = 0; r < MR; ++r) {
            if constexpr (F16) {
                a[r] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(wp + r * rows.K + c * kStep)));
            } else {
                a[r] = _mm512_loadu_ps(rows.a_s + (c * kMR + r) * kLanes);
            }
        }
        const float * b = vec_s + c * kNR * kLanes;
        for (int j = 0; j < kNR; ++j) {
            const __m512 bv = _mm512_loadu_ps(b + j * kLanes);
            for (int r = 0; r < MR; ++r) acc[r][j] = _mm512_fmadd_ps(a[r], bv, acc[r][j]);
        }
    }
    for (int r = 0; r < MR; ++r)
        for (int j = 0; j < kNR; ++j) _mm512_storeu_ps(part + (r * kNR + j) * kLanes, acc[r][j]);
}

template <bool F16>
void tile_pass_n(int n, const TileRows & rows, const float * vec_s, int64_t c0, int64_t c1, float * part) {
    switch (n) {
        case 4: tile_pass<4, F16>(rows, vec_s, c0, c1, part); return;
        case 3: tile_pass<3, F16>(rows, vec_s, c0, c1, part); return;
        case 2: tile_pass<2, F16>(rows, vec_s, c0, c1, part); return;
        default: tile_pass<1, F16>(rows, vec_s, c0, c1, part); return;
    }
}

// ggml_vec_dot_f32's leftovers as ggml-cpu's loop runs them, for `lanes` outputs at once (one
// per lane): s += a*b rounded, for the first 16*floor(L/16) elements and then 8 more if at least
// 8 remain; s = fma(a, b, s) for the rest. a_at(i) is the lanes' row elements np + i; b[i] the
// column's.
template <typename RowTail>
__m512 f32_tail(__m512 s, int64_t L, const float * b, RowTail a_at) {
    int64_t rounded = L / 16 * 16;
    if (L - rounded >= 8) rounded += 8;
    int64_t i = 0;
    for (; i < rounded; ++i) s = _mm512_add_ps(s, _mm512_mul_ps(a_at(i), _mm512_set1_ps(b[i])));
    for (; i < L; ++i) s = _mm512_fmadd_ps(a_at(i), _mm512_set1_ps(b[i]), s);
    return s;
}

// f32_tail for 16 rows (lanes) x kNR panel columns at once: kNR independent add chains keep the
// adder busy. at[e*row_stride + lane] is the rows' element np + e; tail[j*L + e] column j's.
void f32_tail_panel(__m512 * s, int64_t L, const float * tail, const float * at, int64_t row_stride) {
    int64_t rounded = L / 16 * 16;
    if (L - rounded >= 8) rounded += 8;
    int64_t e = 0;
    for (; e < rounded; ++e) {
        const __m512 a = _mm512_loadu_ps(at + e * row_stride);
        for (int j = 0; j < kNR; ++j) s[j] = _mm512_add_ps(s[j], _mm512_mul_ps(a, _mm512_set1_ps(tail[j * L + e])));
    }
    for (; e < L; ++e) {
        const __m512 a = _mm512_loadu_ps(at + e * row_stride);
        for (int j = 0; j < kNR; ++j) s[j] = _mm512_fmadd_ps(a, _mm512_set1_ps(tail[j * L + e]), s[j]);
    }
}

// Row m's output for panel column j: ggml's reduction of the four pass partials, then the tail.
float finish(const Gemm & g, const Blocking & bl, const float * parts, int64_t pass_stride, int r, int j,
             int64_t m, const float * tail_j) {
    double sum = 0.0;
    if (bl.nc > 0) {
        const float * p = parts + (r * kNR + j) * kLanes;
        __m512 x0 = _mm512_loadu_ps(p);
        __m512 x1 = _mm512_loadu_ps(p + pass_stride);
        const __m512 x2 = _mm512_loadu_ps(p + 2 * pass_stride);
        const __m512 x3 = _mm512_loadu_ps(p + 3 * pass_stride);
        x0 = _mm512_add_ps(x0, x2);
        x1 = _mm512_add_ps(x1, x3);
        x0 = _mm512_add_ps(x0, x1);
        sum = static_cast<double>(_mm512_reduce_add_ps(x0));
    }
    if (g.kind == Gemm::Kind::F32) {
        // float sums: the reduction was rounded to float before the leftovers.
        const float * row = a_row(g, m) + bl.np;
        const __m512 s = f32_tail(_mm512_set1_ps(static_cast<float>(sum)), bl.tail, tail_j,
                                  [&](int64_t i) { return _mm512_set1_ps(row[i]); });
        return _mm512_cvtss_f32(s);
    }
    const uint16_t * wrow = g.w + m * g.K + bl.np;
    for (int64_t t = 0; t < bl.tail; ++t) sum += static_cast<double>(tail_j[t] * half_to_float(wrow[t]));
    return static_cast<float>(sum);
}

// _mm512_reduce_add_ps of 16 vectors at once, the same additions in the same tree:
//   t3[i] = v[i] + v[i+8] (i < 8); t6[i] = t3[i] + t3[i+4] (i < 4); t8[i] = t6[i] + t6[i+2] (i < 2);
//   result = t8[0] + t8[1].
// Returns lane o = reduction of v[o].
__m512 reduce16(const __m512 * v) {
    __m512 u[8], w[4], z[2];
    for (int p = 0; p < 8; ++p) {  // u[p]: t3 of v[2p] in 128-bit lanes 0-1, of v[2p+1] in 2-3
        const __m512 lo = _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0));
        const __m512 hi = _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2));
        u[p] = _mm512_add_ps(lo, hi);
    }
    for (int q = 0; q < 4; ++q) {  // w[q]: t6 of v[4q + L] in 128-bit lane L
        const __m512 lo = _mm512_shuffle_f32x4(u[2 * q], u[2 * q + 1], _MM_SHUFFLE(2, 0, 2, 0));
        const __m512 hi = _mm512_shuffle_f32x4(u[2 * q], u[2 * q + 1], _MM_SHUFFLE(3, 1, 3, 1));
        w[q] = _mm512_add_ps(lo, hi);
    }
    for (int r = 0; r < 2; ++r) {  // z[r], lane L: t8 of v[8r + L], then t8 of v[8r + 4 + L]
        const __m512 lo = _mm512_shuffle_ps(w[2 * r], w[2 * r + 1], _MM_SHUFFLE(1, 0, 1, 0));
        const __m512 hi = _mm512_shuffle_ps(w[2 * r], w[2 * r + 1], _MM_SHUFFLE(3, 2, 3, 2));
        z[r] = _mm512_add_ps(lo, hi);
    }
    const __m512 lo = _mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 hi = _mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(3, 1, 3, 1));
    const __m512 r = _mm512_add_ps(lo, hi);  // element 4L + i holds v[L + 4i]
    const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(order, r);
}

// ---------------------------------------------------------------- slice kernel
//
// The same sums computed the other way round, for products with many columns (convolutions,
// linear layers, attention; Roles below says which operand is which). ggml's
// lane l of accumulator s only ever sees elements 64c + σ (σ = 16s + l, c = 0, 1, ...): each
// output is 64 independent FMA chains ("slices") of depth K/64, then a fixed tree of additions
// (pairs differing in σ's bit 5 first: a0 + a2, a1 + a3; then bit 4: (a0+a2) + (a1+a3); then
// the lane bits 3, 2, 1, 0 of _mm512_reduce_add_ps). A slice is an ordinary matrix product, so
// it runs as a BLAS-style register tile: 16 outputs per vector (pixels, or a linear layer's
// output features), one broadcast (a weight, or an input row's element) per kNV FMAs, nothing
// reduced across lanes. Slices run in bit-reversed order (t = 0..63, σ =
// reverse(t)), so the tree folds like a binary counter: slice t's tile is added to the partials
// on a small stack once per trailing one bit of t, and slice 63 leaves the finished sums.
namespace slice {

constexpr int kMR = 6;                     // broadcast rows per register tile
constexpr int kNV = 4;                     // vectors per register tile
constexpr int kNR = kNV * kLanes;          // vector columns per tile and per packed panel
constexpr int kTileFloats = kMR * kNR;
constexpr int kDepth = 6;                  // stack entries: log2(64)
constexpr int64_t kGroupBytes = 8 << 20;   // packed panels per group (broadcast rows packed once per group)
constexpr int64_t kWholeBytes = 24 << 20;  // ... or all of a thread's panels at once, if they fit this
constexpr int64_t kMinGroup = 4;           // ... but at least this many panels where there are
constexpr int64_t kBlockTiles = 8;         // broadcast tiles folded against a panel's slice while it is in L1
constexpr int64_t kSubgroup = 4;           // panels folded at once: 4 x 8 stacks (295 KB) stay in L2
constexpr int64_t kChunkBytes = 24 << 10;  // a panel's share of one slice kept in L1
// Chains shorter than this fold kShortQ panels x kShortT tiles at a time, so that their stacks
// (whose traffic then outweighs the FMAs') stay in L1.
constexpr int64_t kShortChains = 32, kShortQ = 1, kShortT = 2;
constexpr int64_t kMinPanels = 2;          // fewer columns: the dot-product kernel
constexpr int64_t kPrefetchChannels = 4;   // pack_pixels: input channels fetched ahead

struct Plan {
    int64_t nc;           // K / 64
    int64_t np, tail;     // 64 nc; K - np (F32 mode only)
    int64_t panels;       // ceil(vector rows / kNR)
    int64_t tiles;        // ceil(broadcast rows / kMR)
    int64_t group;        // panels packed at once
    int64_t chunk;        // c per pass over a slice
};

Plan plan_for(const Gemm & g, int64_t v_count, int64_t b_count) {
    Plan p;
    p.nc = g.K / kStep;
    p.np = p.nc * kStep;
    p.tail = g.K - p.np;
    p.panels = (v_count + kNR - 1) / kNR;
    p.tiles = (b_count + kMR - 1) / kMR;
    p.group = min64(p.panels, max64(kMinGroup, kGroupBytes / (int64_t{4} * kNR * g.K)));
    p.chunk = min64(p.nc, max64(8, kChunkBytes / (int64_t{4} * kNR)));
    return p;
}

int bit_reverse6(int t) {
    int r = 0;
    for (int b = 0; b < 6; ++b) r |= ((t >> b) & 1) << (5 - b);
    return r;
}

// Panel of pixels [n0, n0 + kNR): vp[(σ*nc + c)*kNR + j] = pixel n0 + j's window element
// 64c + σ, rounded to f16 (0 outside the image and past N). 16 pixels at a time: one masked
// load when they are consecutive in one output row at stride 1, else a masked gather.
__attribute__((noinline)) void pack_pixels(const Gemm & g, int64_t nc, int64_t n0, float * vp) {
    const int64_t plane = g.out_w * g.out_h;
    const int kw = g.kernel_w, kh = g.kernel_h;
    const int64_t channels = g.K / (static_cast<int64_t>(kw) * kh);
    const int64_t s1 = static_cast<int64_t>(g.nb1 / sizeof(float)), s2 = static_cast<int64_t>(g.nb2 / sizeof(float));
    const float * x = reinterpret_cast<const float *>(g.x);
    for (int jv = 0; jv < kNV; ++jv) {
        alignas(64) int32_t base[kLanes], y0[kLanes], x0[kLanes];
        __mmask16 valid = 0;
        for (int l = 0; l < kLanes; ++l) {
            const int64_t n = n0 + jv * kLanes + l;
            const int64_t nn = n < g.N ? n : n0;  // any in-range pixel; masked off below
            const int64_t ox = nn % g.out_w, oy = (nn / g.out_w) % g.out_h, b = nn / plane;
            y0[l] = static_cast<int32_t>(oy * g.stride - g.pad);
            x0[l] = static_cast<int32_t>(ox * g.stride - g.pad);
            base[l] = static_cast<int32_t>(b * static_cast<int64_t>(g.nb3 / sizeof(float)) + y0[l] * s1 + x0[l]);
            if (n < g.N) valid = static_cast<__mmask16>(valid | (1u << l));
        }
        // Consecutive: all 16 in one output row of one image, stride 1.
        bool row = valid == 0xffff && g.stride == 1 && y0[0] == y0[kLanes - 1] &&
                   x0[kLanes - 1] - x0[0] == kLanes - 1 && base[kLanes - 1] - base[0] == kLanes - 1;
        const __m512i basev = _mm512_load_si512(base), y0v = _mm512_load_si512(y0), x0v = _mm512_load_si512(x0);
        const __m512i zero = _mm512_setzero_si512(), w_lim = _mm512_set1_epi32(static_cast<int32_t>(g.in_w)),
                      h_lim = _mm512_set1_epi32(static_cast<int32_t>(g.in_h));
        __mmask16 col_ok[16];  // per kx (kernel widths up to 16 here)
        for (int kx = 0; kx < kw; ++kx) {
            const __m512i ix = _mm512_add_epi32(x0v, _mm512_set1_epi32(kx));
            col_ok[kx] = _mm512_mask_cmplt_epi32_mask(_mm512_cmpge_epi32_mask(ix, zero), ix, w_lim) & valid;
        }
        float * dst = vp + jv * kLanes;
        int64_t k = 0;
        for (int64_t ch = 0; ch < channels; ++ch) {
            // Each channel's window rows lie a whole plane apart, too many streams for the
            // hardware prefetcher: fetch kPrefetchChannels ahead (measured: the loads below
            // were most of the packing time on a 256x256 VAE convolution).
            if (row && ch + kPrefetchChannels < channels) {
                const float * ahead = x + base[0] + (ch + kPrefetchChannels) * s2;
                for (int ky = 0; ky < kh; ++ky) {
                    _mm_prefetch(reinterpret_cast<const char *>(ahead + ky * s1), _MM_HINT_T0);
                    _mm_prefetch(reinterpret_cast<const char *>(ahead + ky * s1 + kLanes + kw - 1), _MM_HINT_T0);
                }
            }
            for (int ky = 0; ky < kh; ++ky) {
                const __m512i iy = _mm512_add_epi32(y0v, _mm512_set1_epi32(ky));
                const __mmask16 row_ok = _mm512_mask_cmplt_epi32_mask(_mm512_cmpge_epi32_mask(iy, zero), iy, h_lim);
                const int64_t off = ch * s2 + ky * s1;
                for (int kx = 0; kx < kw; ++kx, ++k) {
                    const __mmask16 m = row_ok & col_ok[kx];
                    __m512 v;
                    if (row) {
                        v = _mm512_maskz_loadu_ps(m, x + base[0] + off + kx);
                    } else {
                        const __m512i idx = _mm512_add_epi32(basev, _mm512_set1_epi32(static_cast<int32_t>(off + kx)));
                        v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, x, 4);
                    }
                    v = _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
                    _mm512_storeu_ps(dst + ((k & (kStep - 1)) * nc + (k >> 6)) * kNR, v);
                }
            }
        }
    }
}

// Rows of one operand of a linear layer or an attention product, as the packers read them:
// f16 rows (weights: row i at f16 + i*K), or f32 rows (row i = (i3*ne2 + i2)*ne1 + i1 at
// f32 + i1*nb1 + i2*nb2 + i3*nb3), rounded to f16 first where ggml does (src1 of an f16 product).
struct RowSet {
    const uint16_t * f16 = nullptr;
    const char * f32 = nullptr;
    size_t nb1 = 0, nb2 = 0, nb3 = 0;
    int64_t ne1 = 1, ne2 = 1;
    int64_t count = 0, K = 0;
    bool round = false;

    // Row i's first element (f16 or f32 as the set holds), or null past the end.
    const void * row(int64_t i) const {
        if (i >= count) return nullptr;
        if (f16) return f16 + i * K;
        const int64_t i1 = i % ne1, i2 = (i / ne1) % ne2, i3 = i / (ne1 * ne2);
        return f32 + i1 * nb1 + i2 * nb2 + i3 * nb3;
    }
    __m512 load16(const void * r, int64_t k) const {
        if (!r) return _mm512_setzero_ps();
        if (f16) return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(static_cast<const uint16_t *>(r) + k)));
        const __m512 v = _mm512_loadu_ps(static_cast<const float *>(r) + k);
        return round ? _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)) : v;
    }
    // Scalar element (leftovers: F32 mode only, never rounded).
    float at(const void * r, int64_t k) const { return r ? static_cast<const float *>(r)[k] : 0.0f; }
};

// Panel of rows [n0, n0 + kNR) as the vector operand: vp[(σ*nc + c)*kNR + j] = row n0 + j's
// element 64c + σ (0 past the end), 16 rows x 16 elements transposed at a time; leftovers (F32
// mode) after: vp[(64nc + i)*kNR + j].
__attribute__((noinline)) void pack_rows_v(const RowSet & rs, int64_t nc, int64_t n0, float * vp) {
    const int64_t np = nc * kStep;
    for (int jv = 0; jv < kNV; ++jv) {
        const void * rows[kLanes];
        for (int l = 0; l < kLanes; ++l) rows[l] = rs.row(n0 + jv * kLanes + l);
        for (int64_t c = 0; c < nc; ++c) {
            for (int s = 0; s < kPasses; ++s) {
                __m512 in[kLanes], out[kLanes];
                for (int l = 0; l < kLanes; ++l) in[l] = rs.load16(rows[l], c * kStep + s * kLanes);
                transpose16(in, out);
                for (int l = 0; l < kLanes; ++l) _mm512_storeu_ps(vp + ((s * kLanes + l) * nc + c) * kNR + jv * kLanes, out[l]);
            }
        }
        // Leftovers (F32 mode: never rounded), 16 x 16 transposed while 16 remain.
        int64_t i = np;
        for (; i + kLanes <= rs.K; i += kLanes) {
            __m512 in[kLanes], out[kLanes];
            for (int l = 0; l < kLanes; ++l) in[l] = rows[l] ? _mm512_loadu_ps(static_cast<const float *>(rows[l]) + i) : _mm512_setzero_ps();
            transpose16(in, out);
            for (int e = 0; e < kLanes; ++e) _mm512_storeu_ps(vp + (i + e) * kNR + jv * kLanes, out[e]);
        }
        for (; i < rs.K; ++i)
            for (int l = 0; l < kLanes; ++l) vp[i * kNR + jv * kLanes + l] = rs.at(rows[l], i);
    }
}

// 8 rows x 16 columns transposed: column c (8 floats) ends up in half c / 4 % 2 of
// out[c / 8 * 4 + c % 4] (column_of() below).
inline __attribute__((always_inline)) void transpose8x16(const __m512 * v, __m512 * out) {
    // Within each 128-bit lane L: u[i] = rows 0-3 of column 4L + i, u[4 + i] rows 4-7.
    __m512 u[8];
    for (int h = 0; h < 2; ++h) {
        const __m512 t0 = _mm512_unpacklo_ps(v[4 * h], v[4 * h + 1]), t1 = _mm512_unpackhi_ps(v[4 * h], v[4 * h + 1]);
        const __m512 t2 = _mm512_unpacklo_ps(v[4 * h + 2], v[4 * h + 3]), t3 = _mm512_unpackhi_ps(v[4 * h + 2], v[4 * h + 3]);
        u[4 * h + 0] = _mm512_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * h + 1] = _mm512_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * h + 2] = _mm512_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * h + 3] = _mm512_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; ++i) {
        // out[i] = [column i, column 4+i], out[4 + i] = [column 8+i, column 12+i].
        const __m512 a = _mm512_shuffle_f32x4(u[i], u[4 + i], _MM_SHUFFLE(1, 0, 1, 0));
        const __m512 b = _mm512_shuffle_f32x4(u[i], u[4 + i], _MM_SHUFFLE(3, 2, 3, 2));
        out[i] = _mm512_shuffle_f32x4(a, a, _MM_SHUFFLE(3, 1, 2, 0));
        out[4 + i] = _mm512_shuffle_f32x4(b, b, _MM_SHUFFLE(3, 1, 2, 0));
    }
}

// Column c of transpose8x16's output: its first `mask` bits' rows stored at dst.
// With `add`: each stored float + add's float at the same index.
inline __attribute__((always_inline)) void store_column(float * dst, const __m512 * out, int c, unsigned mask,
                                                        const float * add = nullptr) {
    __m512 v = out[c / 8 * 4 + c % 4];
    const bool high = c / 4 % 2 != 0;  // elements 8.. land at dst
    const __mmask16 m = static_cast<__mmask16>(high ? mask << 8 : mask);
    if (add) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, high ? add - 8 : add));
    _mm512_mask_storeu_ps(high ? dst - 8 : dst, m, v);
}

// Rows [m0, m0 + kMR) as the broadcast operand: bp[(σ*nc + c)*kMR + r] = row m0 + r's element
// 64c + σ (0 past the end); leftovers (F32 mode) after: bp[(64nc + i)*kMR + r]. 16 σ at a
// time: the rows' 16 values (8 vectors, rows 6-7 zero) are transposed so that each σ's kMR
// floats are one masked store.
__attribute__((noinline)) void pack_rows_b(const RowSet & rs, int64_t nc, int64_t m0, float * bp) {
    static_assert(kMR <= 8, "rows are transposed 8 at a time");
    const int64_t np = nc * kStep;
    const void * rows[8];
    for (int r = 0; r < 8; ++r) rows[r] = r < kMR ? rs.row(m0 + r) : nullptr;
    // Pass-major: a pass's 16 σ rows of bp are written side by side, c ascending (16 pages in
    // use; c-major would store into all 64 at once, past what the TLB holds).
    for (int s = 0; s < kPasses; ++s) {
        for (int64_t c = 0; c < nc; ++c) {
            __m512 v[8], cols[8];
            for (int r = 0; r < 8; ++r) v[r] = rs.load16(rows[r], c * kStep + s * kLanes);
            transpose8x16(v, cols);
            for (int l = 0; l < kLanes; ++l) store_column(bp + ((s * kLanes + l) * nc + c) * kMR, cols, l, (1u << kMR) - 1);
        }
    }
    for (int64_t i = np; i < rs.K; ++i)
        for (int r = 0; r < kMR; ++r) bp[i * kMR + r] = rs.at(rows[r], i);
}

// Leftover elements [i0, i1) on a tile's sums: acc += b*v, the product rounded first or fused.
template <bool Fused>
inline __attribute__((always_inline)) void tail_steps(const float * bt, const float * vt, int64_t i0, int64_t i1,
                                                      __m512 (&acc)[kMR][kNV]) {
    for (int64_t i = i0; i < i1; ++i) {
        __m512 vv[kNV];
#pragma GCC unroll 4
        for (int j = 0; j < kNV; ++j) vv[j] = _mm512_loadu_ps(vt + i * kNR + j * kLanes);
#pragma GCC unroll 8
        for (int r = 0; r < kMR; ++r) {
            const __m512 b = _mm512_set1_ps(bt[i * kMR + r]);
#pragma GCC unroll 4
            for (int j = 0; j < kNV; ++j)
                acc[r][j] = Fused ? _mm512_fmadd_ps(b, vv[j], acc[r][j]) : _mm512_add_ps(acc[r][j], _mm512_mul_ps(b, vv[j]));
        }
    }
}

// F32 mode: ggml_vec_dot_f32's leftovers on a finished tile, in place: sums += a*b rounded for
// the first 16*floor(L/16) elements and then 8 more if at least 8 remain, fused for the rest
// (the same rule as f32_tail). bt: the weight tile's leftovers [i][kMR]; vt: the panel's [i][kNR].
__attribute__((noinline)) void tile_tail(const float * bt, const float * vt, int64_t L, float * sums) {
    __m512 acc[kMR][kNV];
#pragma GCC unroll 8
    for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
        for (int j = 0; j < kNV; ++j) acc[r][j] = _mm512_loadu_ps(sums + r * kNR + j * kLanes);
    int64_t rounded = L / 16 * 16;
    if (L - rounded >= 8) rounded += 8;
    tail_steps<false>(bt, vt, 0, rounded, acc);
    tail_steps<true>(bt, vt, rounded, L, acc);
#pragma GCC unroll 8
    for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
        for (int j = 0; j < kNV; ++j) _mm512_storeu_ps(sums + r * kNR + j * kLanes, acc[r][j]);
}

// dst = below[-(Folds-1)] + (... + (below[0] + acc)), tile by tile (Folds partials above each other).
template <int Folds>
inline __attribute__((always_inline)) void fold_store(__m512 (&acc)[kMR][kNV], const float * below, float * dst) {
#pragma GCC unroll 8
    for (int r = 0; r < kMR; ++r) {
#pragma GCC unroll 4
        for (int j = 0; j < kNV; ++j) {
            const int64_t o = r * kNR + j * kLanes;
            __m512 x = acc[r][j];
#pragma GCC unroll 6
            for (int k = 0; k < Folds; ++k) x = _mm512_add_ps(_mm512_loadu_ps(below - k * kTileFloats + o), x);
            _mm512_storeu_ps(dst + o, x);
        }
    }
}

// One register tile over c-chunk [0, cn) of a slice: acc = (init ? init : 0) + a ⊗ v, FMA by
// FMA in c order. Not the slice's last chunk: acc goes to `part`. Last chunk: acc is folded
// into `stack` (depth = entries before, popcount(t)) once per trailing one bit of t and pushed;
// after slice 63 stack[0] holds the tile's finished sums.
// `ahead`: lines [0, ahead_lines) of what a later call reads, fetched into L1 meanwhile (one per
// step of c; lines past cn are left to the hardware).
template <bool Init>
void tile_slice(const float * a, const float * v, int64_t cn, const float * init, float * part, float * stack, int t,
                bool last, const char * ahead, int64_t ahead_lines) {
    __m512 acc[kMR][kNV];
    for (int r = 0; r < kMR; ++r)
        for (int j = 0; j < kNV; ++j)
            acc[r][j] = Init ? _mm512_loadu_ps(init + r * kNR + j * kLanes) : _mm512_setzero_ps();
    for (int64_t c = 0; c < cn; ++c) {
        if (c < ahead_lines) _mm_prefetch(ahead + c * 64, _MM_HINT_T0);
        __m512 vv[kNV];
        for (int j = 0; j < kNV; ++j) vv[j] = _mm512_loadu_ps(v + c * kNR + j * kLanes);
        for (int r = 0; r < kMR; ++r) {
            const __m512 b = _mm512_set1_ps(a[c * kMR + r]);
            for (int j = 0; j < kNV; ++j) acc[r][j] = _mm512_fmadd_ps(b, vv[j], acc[r][j]);
        }
    }
    // t's trailing one bits say how many partials the sums are added to (nearest first); one
    // unrolled variant per count keeps the accumulators in registers and the loop branch-free.
    if (!last) return fold_store<0>(acc, nullptr, part);
    const int depth = __builtin_popcount(static_cast<unsigned>(t));
    const int folds = __builtin_ctz(~static_cast<unsigned>(t));
    const float * below = stack + (depth - 1) * kTileFloats;
    float * dst = stack + (depth - folds) * kTileFloats;
    switch (folds) {
        case 0: return fold_store<0>(acc, below, dst);
        case 1: return fold_store<1>(acc, below, dst);
        case 2: return fold_store<2>(acc, below, dst);
        case 3: return fold_store<3>(acc, below, dst);
        case 4: return fold_store<4>(acc, below, dst);
        case 5: return fold_store<5>(acc, below, dst);
        default: return fold_store<6>(acc, below, dst);
    }
}

// Which operand plays which part. Convolutions: pixels are the vectors, weight rows the
// broadcasts. Linear layers and attention: weight rows (m) are the vectors when there are
// enough of them, so that a tile's output rows out[n, m..m+64) are whole cache lines; else
// input rows (n) are, as for convolutions.
struct Roles {
    bool conv = false;
    bool v_is_m = false;  // vectors index out's m (its contiguous dimension)
    RowSet v, b;          // row sets (not for a convolution's pixels)
    int64_t v_count = 0, b_count = 0;
};

Roles roles_for(const Gemm & g) {
    Roles r;
    if (g.kernel_w > 0) {
        r.conv = true;
        r.b.f16 = g.w;
        r.b.count = g.M;
        r.b.K = g.K;
        r.v_count = g.N;
        r.b_count = g.M;
        return r;
    }
    RowSet w;  // weight rows, or attention's `a` rows
    if (g.kind == Gemm::Kind::F16) {
        w.f16 = g.w;
    } else {
        w.f32 = reinterpret_cast<const char *>(g.a);
        w.nb1 = static_cast<size_t>(g.a_stride) * sizeof(float);
        w.ne1 = g.M;
    }
    w.count = g.M;
    w.K = g.K;
    RowSet x;  // input rows
    x.f32 = g.x;
    x.nb1 = g.nb1;
    x.nb2 = g.nb2;
    x.nb3 = g.nb3;
    x.ne1 = g.ne1;
    x.ne2 = g.ne2;
    x.count = g.N;
    x.K = g.K;
    x.round = g.kind == Gemm::Kind::F16;
    // Measured: for fewer rows, weights as broadcasts. An image-layout output takes input rows
    // as the vectors (its pixels are then contiguous).
    r.v_is_m = (g.M >= 4 * kNR || g.M % kNR == 0) && g.N >= 4 * kNR && g.out_plane == 0;
    r.v = r.v_is_m ? w : x;
    r.b = r.v_is_m ? x : w;
    r.v_count = r.v.count;
    r.b_count = r.b.count;
    return r;
}

// A finished tile (sums[r*kNR + j]: broadcast row b0 + r, vector column v0 + j) + bias into out:
// [b, m, pixel] for a convolution, [n, m] otherwise.
__attribute__((noinline)) void store_tile(const Gemm & g, const Roles & ro, int64_t b0, int64_t v0, const float * sums) {
    const int rows = static_cast<int>(min64(kMR, ro.b_count - b0));
    const int cols = static_cast<int>(min64(kNR, ro.v_count - v0));
    if (ro.v_is_m) {
        // Row n = b0 + r: out[n, v0 .. v0 + cols), 16 at a time.
        for (int r = 0; r < rows; ++r) {
            float * dst = g.out + (b0 + r) * g.M + v0;
            for (int jv = 0; jv * kLanes < cols; ++jv) {
                const int left = cols - jv * kLanes;
                const __mmask16 mask = left >= kLanes ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
                __m512 v = _mm512_loadu_ps(sums + r * kNR + jv * kLanes);
                if (g.bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, g.bias + v0 + jv * kLanes));
                if (g.residual)
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, g.residual + (dst - g.out) + jv * kLanes));
                _mm512_mask_storeu_ps(dst + jv * kLanes, mask, v);
            }
        }
        return;
    }
    if (g.out_plane == 0) {
        // out[n, b0 .. b0 + rows): the tile transposed 16 columns at a time, a masked store each.
        for (int jv = 0; jv * kLanes < cols; ++jv) {
            __m512 v[8], t[8];
            for (int r = 0; r < 8; ++r) {
                v[r] = r < rows ? _mm512_loadu_ps(sums + r * kNR + jv * kLanes) : _mm512_setzero_ps();
                if (r < rows && g.bias) v[r] = _mm512_add_ps(v[r], _mm512_set1_ps(g.bias[b0 + r]));
            }
            transpose8x16(v, t);
            for (int l = 0; l < kLanes && jv * kLanes + l < cols; ++l) {
                const int64_t o = (v0 + jv * kLanes + l) * g.M + b0;
                store_column(g.out + o, t, l, (1u << rows) - 1, g.residual ? g.residual + o : nullptr);
            }
        }
        return;
    }
    const int64_t plane = g.out_plane;
    for (int r = 0; r < rows; ++r) {
        const int64_t m = b0 + r;
        const __m512 bias = _mm512_set1_ps(g.bias ? g.bias[m] : 0.0f);
        for (int jv = 0; jv * kLanes < cols; ++jv) {
            const int64_t n = v0 + jv * kLanes;
            const int64_t b = n / plane, pix = n % plane;
            const float * src = sums + r * kNR + jv * kLanes;
            if (n + kLanes <= g.N && pix + kLanes <= plane) {
                const int64_t o = (b * g.M + m) * plane + pix;
                __m512 v = _mm512_loadu_ps(src);
                if (g.bias) v = _mm512_add_ps(v, bias);
                if (g.residual) v = _mm512_add_ps(v, _mm512_loadu_ps(g.residual + o));
                _mm512_storeu_ps(g.out + o, v);
            } else {
                for (int l = 0; l < kLanes && n + l < g.N; ++l) {
                    const int64_t nl = n + l, bl = nl / plane;
                    const int64_t o = (bl * g.M + m) * plane + nl % plane;
                    g.out[o] = epilogue(g, src[l], m, o);
                }
            }
        }
    }
}

// Panels packed at once by a thread with `panels` of them: all when they fit kWholeBytes (weights
// then packed once; measured +6-8% on SD1's 32x32 convs), else groups of p.group (more panels
// would be streamed from memory once per weight block: measured slower on the VAE's big maps).
int64_t group_for(const Gemm & g, const Plan & p, int64_t panels) {
    return panels * kNR * g.K * int64_t{4} <= kWholeBytes ? panels : p.group;
}

// The most panels group_for() can give any thread's share: what the scratch must hold.
int64_t max_group(const Gemm & g, const Plan & p) {
    return max64(p.group, min64(p.panels, kWholeBytes / (int64_t{4} * kNR * g.K)));
}

size_t scratch_floats(const Gemm & g) {
    const Roles ro = roles_for(g);
    const Plan p = plan_for(g, ro.v_count, ro.b_count);
    return static_cast<size_t>(max_group(g, p) * kNR * g.K + kBlockTiles * kMR * g.K +
                               kSubgroup * kBlockTiles * (kDepth + 1) * kTileFloats);
}

void gemm(const Gemm & g, int ith, int nth, float * scratch) {
    const Roles ro = roles_for(g);
    const Plan p = plan_for(g, ro.v_count, ro.b_count);
    // Panels shared out when each thread gets a full group's worth, else broadcast tiles (every
    // thread then packs all the panels: cheaper than packing the broadcast rows for few columns).
    int64_t p0 = 0, p1 = p.panels, t0 = 0, t1 = p.tiles;
    if (p.panels >= kMinGroup * nth || p.tiles < 4 * nth) {
        p0 = p.panels * ith / nth;
        p1 = p.panels * (ith + 1) / nth;
    } else {
        t0 = p.tiles * ith / nth;
        t1 = p.tiles * (ith + 1) / nth;
    }
    if (p0 >= p1 || t0 >= t1) return;
    const int64_t K = g.K, nc = p.nc;
    const int64_t group = min64(group_for(g, p, p1 - p0), max_group(g, p));
    float * vp = scratch;                         // group panels, kNR * K each
    float * bp = vp + group * kNR * K;            // kBlockTiles broadcast tiles, kMR * K each
    float * stacks = bp + kBlockTiles * kMR * K;  // per (panel, tile) of a subgroup: kDepth tiles
    float * parts = stacks + kSubgroup * kBlockTiles * kDepth * kTileFloats;  // and a chunk's partials

    for (int64_t pg = p0; pg < p1; pg += group) {
        const int64_t pn = min64(group, p1 - pg);
        for (int64_t q = 0; q < pn; ++q) {
            if (g.kernel_w > 0) pack_pixels(g, nc, (pg + q) * kNR, vp + q * kNR * K);
            else pack_rows_v(ro.v, nc, (pg + q) * kNR, vp + q * kNR * K);
        }
        for (int64_t tb = t0; tb < t1; tb += kBlockTiles) {
            const int64_t tn = min64(kBlockTiles, t1 - tb);
            for (int64_t i = 0; i < tn; ++i) pack_rows_b(ro.b, nc, (tb + i) * kMR, bp + i * kMR * K);
            // Fold sets: qf panels x tf tiles whose stacks (qf*tf*9 KB) are touched once per slice:
            // in L2 when chains are long, in L1 when they are short (then the stacks' traffic is
            // the larger part).
            const bool short_chains = nc < kShortChains;
            const int64_t qf = short_chains ? kShortQ : kSubgroup, tf = short_chains ? kShortT : kBlockTiles;
            for (int64_t sq = 0; sq < pn; sq += qf) {
                const int64_t qn = min64(qf, pn - sq);
                for (int64_t ib = 0; ib < tn; ib += tf) {
                    const int64_t in = min64(tf, tn - ib);
                    if (nc == 0) {  // leftovers only: they start from ggml's zero sums
                        for (int64_t f = 0; f < qn * in; ++f)
                            std::memset(stacks + f * kDepth * kTileFloats, 0, sizeof(float) * kTileFloats);
                    }
                    for (int t = 0; t < (nc > 0 ? kStep : 0); ++t) {
                        const int64_t sg = bit_reverse6(t);
                        for (int64_t c0 = 0; c0 < nc; c0 += p.chunk) {
                            const int64_t cn = min64(p.chunk, nc - c0);
                            const bool last = c0 + cn == nc;
                            for (int64_t q = 0; q < qn; ++q) {
                                const float * v = vp + (sq + q) * kNR * K + (sg * nc + c0) * kNR;
                                // The panel chunk after this one (next panel, next chunk or next
                                // slice), fetched a share per tile while this one is in use.
                                const float * next;
                                if (q + 1 < qn) next = v + kNR * K;
                                else if (c0 + cn < nc) next = vp + sq * kNR * K + (sg * nc + c0 + cn) * kNR;
                                else if (t + 1 < kStep) next = vp + sq * kNR * K + (bit_reverse6(t + 1) * nc) * kNR;
                                else next = v;
                                const int64_t next_cn = q + 1 < qn ? cn : min64(p.chunk, c0 + cn < nc ? nc - c0 - cn : nc);
                                const int64_t lines = next_cn * kNR * 4 / 64, share = (lines + in - 1) / in;
                                for (int64_t i = 0; i < in; ++i) {
                                    const int64_t f = q * in + i;
                                    float * part = parts + f * kTileFloats;
                                    const float * a = bp + (ib + i) * kMR * K + (sg * nc + c0) * kMR;
                                    float * stack = stacks + f * kDepth * kTileFloats;
                                    const int64_t l0 = min64(lines, i * share);
                                    const char * ahead = reinterpret_cast<const char *>(next) + l0 * 64;
                                    const int64_t ahead_lines = min64(lines, l0 + share) - l0;
                                    if (c0 > 0) tile_slice<true>(a, v, cn, part, part, stack, t, last, ahead, ahead_lines);
                                    else tile_slice<false>(a, v, cn, nullptr, part, stack, t, last, ahead, ahead_lines);
                                }
                            }
                        }
                    }
                    for (int64_t q = 0; q < qn; ++q) {
                        for (int64_t i = 0; i < in; ++i) {
                            float * sums = stacks + (q * in + i) * kDepth * kTileFloats;
                            if (p.tail > 0)
                                tile_tail(bp + (ib + i) * kMR * K + p.np * kMR, vp + (sq + q) * kNR * K + p.np * kNR, p.tail, sums);
                            store_tile(g, ro, (tb + ib + i) * kMR, (pg + sq + q) * kNR, sums);
                        }
                    }
                }
            }
        }
    }
}

// Convolutions and linear layers with whole 64-element blocks (F16: no leftovers) and enough
// columns to fill panels; F32 products (attention) with any K.
bool suits(const Gemm & g) {
    if (g.M < 16 || g.N < kMinPanels * kNR) return false;
    if (g.kind == Gemm::Kind::F32) return g.kernel_w == 0;
    if (g.kernel_w > 16 || g.K % kStep != 0 || g.K < 4 * kStep) return false;
    if (g.kernel_w == 0) return true;
    if (g.nb1 % 4 || g.nb2 % 4 || g.nb3 % 4) return false;
    // 32-bit element offsets: the whole input (plus a window's reach) must be addressable.
    const int64_t batches = (g.N + g.out_w * g.out_h - 1) / (g.out_w * g.out_h);
    const int64_t span = (batches * static_cast<int64_t>(g.nb3) + static_cast<int64_t>(g.nb1) * g.kernel_h) / 4 + g.kernel_w;
    return span < (int64_t{1} << 30);
}

}  // namespace slice

}  // namespace

size_t gemm_scratch_floats(const Gemm & g) {
    if (slice::suits(g)) return slice::scratch_floats(g);
    const Blocking bl = blocking_for(g);
    const int64_t panel = kNR * g.K;
    const int64_t parts = kMaxL1Panels * bl.row_block * kNR * kLanes * kPasses;
    // + tmp (K floats) + window offsets (K int32)
    return static_cast<size_t>(bl.group * panel + parts + bl.row_block * (bl.np + bl.tail) + 2 * g.K);
}

void gemm_avx512(const Gemm & g, int ith, int nth, float * scratch) {
    if (slice::suits(g)) {
        slice::gemm(g, ith, nth, scratch);
        return;
    }
    const Blocking bl = blocking_for(g);

    // This thread's rectangle: a share of the panels when there are enough of them, else a
    // share of the rows (every thread then packs all panels).
    int64_t p0 = 0, p1 = bl.panels, m0 = 0, m1 = g.M;
    if (bl.panels >= 4 * nth) {
        p0 = bl.panels * ith / nth;
        p1 = bl.panels * (ith + 1) / nth;
    } else {
        const int64_t tiles = (g.M + kMR - 1) / kMR;
        m0 = min64(g.M, tiles * ith / nth * kMR);
        m1 = min64(g.M, tiles * (ith + 1) / nth * kMR);
    }
    if (p0 >= p1 || m0 >= m1) return;

    const int64_t panel_floats = kNR * g.K;
    float * packed = scratch;
    float * parts = packed + bl.group * panel_floats;
    float * rows_f32 = parts + kMaxL1Panels * bl.row_block * kNR * kLanes * kPasses;
    float * rows_tail = rows_f32 + bl.row_block * bl.np;  // F32 leftovers, transposed
    float * tmp = rows_tail + bl.row_block * bl.tail;
    int32_t * offsets = nullptr;
    if (offsets_fit(g)) {
        offsets = reinterpret_cast<int32_t *>(tmp + g.K);
        window_offsets(g, offsets);
    }

    const bool image_out = g.out_plane > 0;
    const int64_t m_stride = image_out ? g.out_plane : 1;

    for (int64_t pg = p0; pg < p1; pg += bl.group) {
        const int64_t pcount = min64(bl.group, p1 - pg);
        for (int64_t p = 0; p < pcount; ++p) {
            float * vec = packed + p * panel_floats;
            pack_panel(g, bl, (pg + p) * kNR, offsets, tmp, vec, vec + kNR * bl.np);
        }
        for (int64_t mb = m0; mb < m1; mb += bl.row_block) {
            if (stop_requested(g.abort)) return;
            const int64_t rows = min64(bl.row_block, m1 - mb);
            const int64_t tiles = (rows + kMR - 1) / kMR;
            const int64_t pass_stride = tiles * kMR * kNR * kLanes;  // floats between passes
            if (!bl.f16_rows) pack_rows(g, bl, mb, rows, rows_f32, rows_tail);
            for (int64_t pq = 0; pq < pcount; pq += bl.l1_panels) {
                const int64_t qn = min64(bl.l1_panels, pcount - pq);
                // Passes for qn panels, a chunk of c at a time: a panel's chunk stays in L1
                // while the block's weight tiles pass over it (long rows would otherwise stream
                // both operands from L2 for every tile).
                // Partial sums: parts[q*kPasses*pass_stride + s*pass_stride + t*kMR*kNR*16 + (r*kNR + j)*16 + l].
                for (int s = 0; s < kPasses && bl.nc > 0; ++s) {
                    for (int64_t c0 = 0; c0 < bl.nc; c0 += bl.chunk) {
                        const int64_t c1 = min64(bl.nc, c0 + bl.chunk);
                        for (int64_t q = 0; q < qn; ++q) {
                            const float * vec_s = packed + (pq + q) * panel_floats + s * bl.nc * kNR * kLanes;
                            for (int64_t t = 0; t < tiles; ++t) {
                                const int64_t m = mb + t * kMR;
                                const int rn = static_cast<int>(min64(kMR, mb + rows - m));
                                float * part = parts + (q * kPasses + s) * pass_stride + t * kMR * kNR * kLanes;
                                TileRows tr;
                                if (bl.f16_rows) {
                                    tr.w = g.w + m * g.K;
                                    tr.K = g.K;
                                    tr.s = s;
                                    tile_pass_n<true>(rn, tr, vec_s, c0, c1, part);
                                } else {
                                    tr.a_s = rows_f32 + (t * kPasses + s) * bl.nc * kMR * kLanes;
                                    tile_pass_n<false>(rn, tr, vec_s, c0, c1, part);
                                }
                            }
                        }
                    }
                }
            for (int64_t q = 0; q < qn; ++q) {
                const int64_t p = pq + q;
                const float * vec = packed + p * panel_floats;
                const float * tail = vec + kNR * bl.np;
                const float * pparts = parts + q * kPasses * pass_stride;
                const int64_t n0 = (pg + p) * kNR;
                const int jn = static_cast<int>(min64(kNR, g.N - n0));
                int64_t base[kNR];
                for (int j = 0; j < jn; ++j) {
                    const int64_t n = n0 + j;
                    const int64_t plane = g.out_plane;
                    base[j] = image_out ? (n / plane) * g.M * plane + n % plane : n * g.M;
                }
                // Row i of the block has its partials at pparts[s*pass_stride + (i*kNR + j)*16].
                const bool f32 = g.kind == Gemm::Kind::F32;
                int64_t i = 0;
                if ((bl.nc > 0 || f32) && (bl.tail == 0 || f32)) {
                    // 16 rows x kNR columns at a time (padding columns included, not stored).
                    for (; i + kLanes <= rows; i += kLanes) {
                        __m512 sums[kNR];
                        for (int j = 0; j < kNR; ++j) {
                            if (bl.nc == 0) {
                                sums[j] = _mm512_setzero_ps();
                                continue;
                            }
                            __m512 v[kLanes];
                            for (int o = 0; o < kLanes; ++o) {
                                const float * q = pparts + ((i + o) * kNR + j) * kLanes;
                                const __m512 x02 = _mm512_add_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(q + 2 * pass_stride));
                                const __m512 x13 =
                                    _mm512_add_ps(_mm512_loadu_ps(q + pass_stride), _mm512_loadu_ps(q + 3 * pass_stride));
                                v[o] = _mm512_add_ps(x02, x13);
                            }
                            // F16 with no leftovers: (float)(double)sum is sum itself.
                            sums[j] = reduce16(v);
                        }
                        if (f32 && bl.tail > 0) f32_tail_panel(sums, bl.tail, tail, rows_tail + i, bl.row_block);
                        if (g.bias) {
                            const __m512 b = _mm512_loadu_ps(g.bias + mb + i);
                            for (int j = 0; j < kNR; ++j) sums[j] = _mm512_add_ps(sums[j], b);
                        }
                        for (int j = 0; j < jn; ++j) {
                            if (m_stride == 1) {
                                __m512 v = sums[j];
                                if (g.residual) v = _mm512_add_ps(v, _mm512_loadu_ps(g.residual + base[j] + mb + i));
                                _mm512_storeu_ps(g.out + base[j] + mb + i, v);
                            } else {
                                alignas(64) float lanes[kLanes];
                                _mm512_store_ps(lanes, sums[j]);
                                for (int o = 0; o < kLanes; ++o) {
                                    const int64_t idx = base[j] + (mb + i + o) * m_stride;
                                    g.out[idx] = g.residual ? lanes[o] + g.residual[idx] : lanes[o];
                                }
                            }
                        }
                    }
                }
                for (; i < rows; ++i) {
                    for (int j = 0; j < jn; ++j) {
                        float v = finish(g, bl, pparts + (i / kMR) * kMR * kNR * kLanes, pass_stride, static_cast<int>(i % kMR),
                                         j, mb + i, tail + j * bl.tail);
                        const int64_t idx = base[j] + (mb + i) * m_stride;
                        g.out[idx] = epilogue(g, v, mb + i, idx);
                    }
                }
            }
            }
        }
    }
}

}  // namespace sd::cpu

#endif  // SDNODE_HAVE_AVX512_KERNELS
