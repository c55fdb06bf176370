// Vector helpers shared by the AVX-512 kernel files (cpu-kernels-avx512.cpp, cpu-kernels-amx.cpp).
// Every function is static (internal linkage in each file that includes it), so the linker never
// trades one file's copy, built for its instruction set, for another's; and no file built for
// baseline x86-64 may include it (cpu-kernels-impl.h is what they share).
#pragma once
#include <immintrin.h>

// out[j] = lane j of every row: out[j][i] = rows[i][j] (16 x 16 floats).
static inline __attribute__((always_inline)) void transpose16(const __m512 * rows, __m512 * out) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; ++i) {  // per 128-bit lane: a0 b0 a1 b1 / a2 b2 a3 b3
        t[2 * i] = _mm512_unpacklo_ps(rows[2 * i], rows[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(rows[2 * i], rows[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {  // u[4i + k], 128-bit lane L: rows 4i..4i+3 of column 4L + k
        u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int k = 0; k < 4; ++k) {
        // a = [col k rows 0-3, col 8+k rows 0-3, col k rows 4-7, col 8+k rows 4-7], b the same for rows 8-15;
        // a2, b2 likewise for columns 4+k and 12+k.
        const __m512 a = _mm512_shuffle_f32x4(u[k], u[4 + k], _MM_SHUFFLE(2, 0, 2, 0));
        const __m512 a2 = _mm512_shuffle_f32x4(u[k], u[4 + k], _MM_SHUFFLE(3, 1, 3, 1));
        const __m512 b = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], _MM_SHUFFLE(2, 0, 2, 0));
        const __m512 b2 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], _MM_SHUFFLE(3, 1, 3, 1));
        out[k] = _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0));
        out[8 + k] = _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1));
        out[4 + k] = _mm512_shuffle_f32x4(a2, b2, _MM_SHUFFLE(2, 0, 2, 0));
        out[12 + k] = _mm512_shuffle_f32x4(a2, b2, _MM_SHUFFLE(3, 1, 3, 1));
    }
}
