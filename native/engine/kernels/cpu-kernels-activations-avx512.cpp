// Activation kernels behind cpu-kernels.h: group norm (+ affine, + SiLU), scaled softmax and
// GEGLU. Built with -mavx512f -mavx512dq -mfma -mf16c -ffp-contract=off; called only after a CPU
// check and a self-check against ggml's ops.
//
// Each replaces a chain of ggml ops that each make a pass over memory (group norm + mul + add +
// silu: six passes; scale + softmax: two, with a scalar max) by one kernel that keeps every float
// operation of the chain: the same sums in the same order (double where ggml sums in double),
// the same exp approximation where ggml-cpu vectorizes (ggml_v_expf, AVX-512 build) and libm's
// expf where it does not (a row's last width % 16 elements).
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels/cpu-kernels-impl.h"

namespace sd::cpu {

namespace {

constexpr int kLanes = 16;


// This thread's share [begin, end) of `count` items.
struct Share {
    int64_t begin, end;
};
Share share(int64_t count, int ith, int nth) { return {count * ith / nth, count * (ith + 1) / nth}; }

// e^x as ggml-cpu's AVX-512 build computes it: x = n ln2 + b with n = x log2(e) rounded to an
// integer (adding and removing 1.5 * 2^23 rounds), ln2 in two parts; e^b by a degree-5
// polynomial in Estrin form; times 2^n. Where |n| > 192 the result saturates: 0 for n <= 0, inf
// above.
__m512 exp_ggml(__m512 x) {
    const __m512 shifter = _mm512_set1_ps(0x1.8p23f);
    const __m512 z = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), shifter);
    const __m512 n = _mm512_sub_ps(z, shifter);
    const __m512 b = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f),
                                      _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), x));
    const __m512 b2 = _mm512_mul_ps(b, b);
    const __m512 c45 = _mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), b, _mm512_set1_ps(0x1.573e2ep-5f));
    const __m512 c23 = _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), b, _mm512_set1_ps(0x1.fffdb6p-2f));
    const __m512 c01 = _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), b, _mm512_set1_ps(1.0f));
    const __m512 poly = _mm512_fmadd_ps(_mm512_fmadd_ps(c45, b2, c23), b2, c01);
    const __m512 result = _mm512_scalef_ps(poly, n);
    const __mmask16 saturated = _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192), _CMP_GT_OQ);
    if (!saturated) return result;
    const __m512 zero = _mm512_setzero_ps();
    const __m512 limit = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(n, zero, _CMP_LE_OQ), _mm512_set1_ps(INFINITY), zero);
    return _mm512_mask_blend_ps(saturated, result, limit);
}

// ggml's SiLU on 16 lanes (ggml_v_silu) and on one element (ggml_silu_f32).
__m512 silu_ggml(__m512 x) {
    const __m512 e = exp_ggml(_mm512_sub_ps(_mm512_setzero_ps(), x));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}
float silu_ggml(float x) { return x / (1.0f + std::exp(-x)); }

// ggml's group-norm sums: per row (`width` floats) a sequential double sum of term(x), then the
// row sums added in row order. Rows of a multiple of 8 floats are summed 16 at a time with one
// row per double lane (8 x 8 blocks transposed, so each lane still adds its row's terms in
// order); others 8 at a time as independent scalar chains.
inline __attribute__((always_inline)) void transpose8(__m256 (&v)[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
        u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
        v[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
    }
}

template <int Groups, typename Term>
inline __attribute__((always_inline)) void sum_rows_lanes(const float * x, int64_t width, Term term, double * out) {
    __m512d s[Groups];
    for (int q = 0; q < Groups; ++q) s[q] = _mm512_setzero_pd();
    for (int64_t i = 0; i < width; i += 8) {
        for (int q = 0; q < Groups; ++q) {
            __m256 v[8];
            for (int k = 0; k < 8; ++k) v[k] = term(_mm256_loadu_ps(x + (q * 8 + k) * width + i));
            transpose8(v);  // v[j] lane k: row q*8 + k, element i + j
            for (int j = 0; j < 8; ++j) s[q] = _mm512_add_pd(s[q], _mm512_cvtps_pd(v[j]));
        }
    }
    for (int q = 0; q < Groups; ++q) _mm512_storeu_pd(out + q * 8, s[q]);
}

template <typename VecTerm, typename Term>
double sum_rows(const float * x, int64_t rows, int64_t width, VecTerm vec_term, Term term) {
    double total = 0.0;
    int64_t r = 0;
    if (width % 8 == 0) {
        double row_sums[16];
        for (; r + 16 <= rows; r += 16) {
            sum_rows_lanes<2>(x + r * width, width, vec_term, row_sums);
            for (double v : row_sums) total += v;
        }
        for (; r + 8 <= rows; r += 8) {
            sum_rows_lanes<1>(x + r * width, width, vec_term, row_sums);
            for (int k = 0; k < 8; ++k) total += row_sums[k];
        }
    }
    for (; r + 8 <= rows; r += 8) {
        double s[8] = {};
        for (int64_t i = 0; i < width; ++i) {
            for (int k = 0; k < 8; ++k) s[k] += term(x[(r + k) * width + i]);
        }
        for (int k = 0; k < 8; ++k) total += s[k];
    }
    for (; r < rows; ++r) {
        double s = 0.0;
        for (int64_t i = 0; i < width; ++i) s += term(x[r * width + i]);
        total += s;
    }
    return total;
}

}  // namespace

void group_norm_avx512(const GroupNorm & g, int ith, int nth) {
    const int64_t plane = g.W * g.H, per_group = g.C / g.groups;
    const int64_t count = per_group * plane;
    // ggml_silu works row by row: 16-lane blocks, then the row's last W % 16 one at a time.
    const int64_t vec_w = g.W / kLanes * kLanes;
    const Share units = share(g.N * g.groups, ith, nth);
    for (int64_t u = units.begin; u < units.end; ++u) {
        const int64_t n = u / g.groups, c0 = u % g.groups * per_group;
        const float * x = g.x + (n * g.C + c0) * plane;
        float * y = g.out + (n * g.C + c0) * plane;
        if (g.add) {
            // x + add[n, c] as the ggml_add before the norm computes it, into the output; the
            // passes below then read it there (the last one overwrites it in place).
            for (int64_t c = 0; c < per_group; ++c) {
                const __m512 a = _mm512_set1_ps(g.add[n * g.C + c0 + c]);
                for (int64_t i = 0; i < plane; i += kLanes) {
                    const __mmask16 m = static_cast<__mmask16>(plane - i >= kLanes ? 0xffff : (1u << (plane - i)) - 1);
                    _mm512_mask_storeu_ps(y + c * plane + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + c * plane + i), a));
                }
            }
            x = y;
        }
        // ggml_group_norm: mean, then the variance of v = x - mean, both summed in double.
        const int64_t rows = per_group * g.H;
        const float mean = static_cast<float>(
            sum_rows(x, rows, g.W, [](__m256 v) { return v; }, [](float v) { return double{v}; }) / static_cast<double>(count));
        const __m256 mean8 = _mm256_set1_ps(mean);
        const float variance = static_cast<float>(sum_rows(
                                                      x, rows, g.W,
                                                      [mean8](__m256 v) {
                                                          const __m256 d = _mm256_sub_ps(v, mean8);
                                                          return _mm256_mul_ps(d, d);
                                                      },
                                                      [mean](float v) {
                                                          const float d = v - mean;
                                                          return static_cast<double>(d * d);
                                                      }) /
                                                  static_cast<double>(count));
        const float scale = 1.0f / std::sqrt(variance + g.eps);
        const __m512 vmean = _mm512_set1_ps(mean), vscale = _mm512_set1_ps(scale);
        for (int64_t c = 0; c < per_group; ++c) {
            const float wc = g.weight[c0 + c], bc = g.bias[c0 + c];
            const __m512 vw = _mm512_set1_ps(wc), vb = _mm512_set1_ps(bc);
            // ((x - mean) * scale) * weight + bias: the norm's, ggml_mul's and ggml_add's roundings.
            const auto affine = [&](__m512 v) {
                return _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(v, vmean), vscale), vw), vb);
            };
            const float * xc = x + c * plane;
            float * yc = y + c * plane;
            if (!g.silu) {
                int64_t i = 0;
                for (; i + kLanes <= plane; i += kLanes) _mm512_storeu_ps(yc + i, affine(_mm512_loadu_ps(xc + i)));
                if (i < plane) {
                    const __mmask16 m = static_cast<__mmask16>((1u << (plane - i)) - 1);
                    _mm512_mask_storeu_ps(yc + i, m, affine(_mm512_maskz_loadu_ps(m, xc + i)));
                }
                continue;
            }
            for (int64_t row = 0; row < g.H; ++row) {
                const float * xr = xc + row * g.W;
                float * yr = yc + row * g.W;
                int64_t i = 0;
                for (; i < vec_w; i += kLanes) _mm512_storeu_ps(yr + i, silu_ggml(affine(_mm512_loadu_ps(xr + i))));
                for (; i < g.W; ++i) yr[i] = silu_ggml(((xr[i] - mean) * scale) * wc + bc);
            }
        }
    }
}

void layer_norm_avx512(const LayerNorm & l, int ith, int nth) {
    const int64_t vec_cols = l.cols / kLanes * kLanes;
    const Share rows = share(l.rows, ith, nth);
    int64_t r = rows.begin;
    double sums[16];
    while (r < rows.end) {
        // ggml_vec_sum_f32: each row's sequential double sum, rounded to float; 16 or 8 rows at
        // once in double lanes where the rows allow, else one.
        int n = 1;
        if (l.cols % 8 == 0 && r + 16 <= rows.end) {
            sum_rows_lanes<2>(l.x + r * l.cols, l.cols, [](__m256 v) { return v; }, sums);
            n = 16;
        } else if (l.cols % 8 == 0 && r + 8 <= rows.end) {
            sum_rows_lanes<1>(l.x + r * l.cols, l.cols, [](__m256 v) { return v; }, sums);
            n = 8;
        } else {
            double s = 0.0;
            for (int64_t i = 0; i < l.cols; ++i) s += double{l.x[r * l.cols + i]};
            sums[0] = s;
        }
        for (int k = 0; k < n; ++k, ++r) {
            const float * x = l.x + r * l.cols;
            float * y = l.out + r * l.cols;
            const float mean = static_cast<float>(sums[k]) / static_cast<float>(l.cols);
            // ggml_vec_cvar_f32: per 16-lane block the lane sum of (x - mean)^2 added in double,
            // the last cols % 16 one by one; divided by cols in double.
            const __m512 vmean = _mm512_set1_ps(mean);
            double s2 = 0.0;
            int64_t i = 0;
            for (; i < vec_cols; i += kLanes) {
                const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + i), vmean);
                s2 += static_cast<double>(_mm512_reduce_add_ps(_mm512_mul_ps(d, d)));
            }
            for (; i < l.cols; ++i) {
                const float d = x[i] - mean;
                s2 += static_cast<double>(d * d);
            }
            const float variance = static_cast<float>(s2 / static_cast<double>(l.cols));
            const float scale = 1.0f / std::sqrt(variance + l.eps);
            // ((x - mean) * scale) * weight (+ bias): the norm's, ggml_mul's and ggml_add's roundings.
            const __m512 vscale = _mm512_set1_ps(scale);
            for (i = 0; i < l.cols; i += kLanes) {
                const __mmask16 m = static_cast<__mmask16>(l.cols - i >= kLanes ? 0xffff : (1u << (l.cols - i)) - 1);
                __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmean), vscale);
                v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, l.weight + i));
                if (l.bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, l.bias + i));
                _mm512_mask_storeu_ps(y + i, m, v);
            }
        }
    }
}

void soft_max_avx512(const SoftMax & s, int ith, int nth) {
    const int64_t vec_cols = s.cols / kLanes * kLanes;
    const __m512 vscale = _mm512_set1_ps(s.scale);
    const Share rows = share(s.rows, ith, nth);
    for (int64_t r = rows.begin; r < rows.end; ++r) {
        const float * x = s.x + r * s.cols;
        float * y = s.out + r * s.cols;
        // x * scale (ggml_scale) and its maximum (exact in any order).
        __m512 vmax = _mm512_set1_ps(-INFINITY);
        int64_t i = 0;
        for (; i < vec_cols; i += kLanes) {
            const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), vscale);
            _mm512_storeu_ps(y + i, v);
            vmax = _mm512_max_ps(vmax, v);
        }
        float max = _mm512_reduce_max_ps(vmax);
        for (; i < s.cols; ++i) {
            y[i] = x[i] * s.scale;
            max = y[i] > max ? y[i] : max;
        }
        // ggml_vec_soft_max_f32: e^(v - max) per 16-lane block, each block's lane sum added in
        // double, the row's last cols % 16 through expf; then all times (float)(1 / sum).
        const __m512 vm = _mm512_set1_ps(max);
        double sum = 0.0;
        for (i = 0; i < vec_cols; i += kLanes) {
            const __m512 e = exp_ggml(_mm512_sub_ps(_mm512_loadu_ps(y + i), vm));
            _mm512_storeu_ps(y + i, e);
            sum += static_cast<double>(_mm512_reduce_add_ps(e));
        }
        for (; i < s.cols; ++i) {
            y[i] = std::exp(y[i] - max);
            sum += static_cast<double>(y[i]);
        }
        const float inv = static_cast<float>(1.0 / sum);
        const __m512 vinv = _mm512_set1_ps(inv);
        for (i = 0; i < vec_cols; i += kLanes) _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(y + i), vinv));
        for (; i < s.cols; ++i) y[i] *= inv;
    }
}

void geglu_avx512(const Geglu & g, int ith, int nth) {
    const __m512 lo = _mm512_set1_ps(-10.0f), hi = _mm512_set1_ps(10.0f);
    const Share rows = share(g.rows, ith, nth);
    for (int64_t r = rows.begin; r < rows.end; ++r) {
        const float * value = g.h + r * 2 * g.inner;
        const float * gate = value + g.inner;
        float * y = g.out + r * g.inner;
        for (int64_t i = 0; i < g.inner; i += kLanes) {
            const __mmask16 m = static_cast<__mmask16>(g.inner - i >= kLanes ? 0xffff : (1u << (g.inner - i)) - 1);
            const __m512 x = _mm512_maskz_loadu_ps(m, gate + i);
            // ggml_vec_gelu_f32 (f16 table): 0 at or below -10, x at or above 10, else the table
            // entry of x rounded to f16.
            const __m512i h = _mm512_cvtepu16_epi32(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            __m512 gelu = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, h, g.gelu_table, 4);
            gelu = _mm512_mask_mov_ps(gelu, _mm512_cmp_ps_mask(x, hi, _CMP_GE_OQ), x);
            gelu = _mm512_mask_mov_ps(gelu, _mm512_cmp_ps_mask(x, lo, _CMP_LE_OQ), _mm512_setzero_ps());
            _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, value + i), gelu));
        }
    }
}

}  // namespace sd::cpu
