// Host-side resampling of planar tensors (ne {w, h, C, N}), as stable-diffusion.cpp's tensor ops
// compute them: the hires-fix upscalers, mask downsampling to latent size, the inpainting
// model's mask dilation.
//
//   nearest        in = floor(out * in_size / out_size)
//   nearest-exact  in = floor((out + 0.5) * in_size / out_size)          (clamped)
//   filters        center = (out + 0.5) * in_size / out_size - 0.5; taps within the filter's
//                  support (x the downscale factor with antialias), indices clamped to the edge,
//                  weights normalized with antialias and for lanczos; sums in double
//   nearest-max    each output takes the max over the input pixels it covers (downsampling)
#pragma once
#include <cstdint>

#include "runtime/graph-runner.h"

namespace sd {

enum class Interpolation { Nearest, NearestExact, Bilinear, Bicubic, Lanczos };

HostTensor interpolate(const HostTensor & in, int64_t out_w, int64_t out_h, Interpolation mode, bool antialias = false);

// Max over each output pixel's input window [floor(o * in / out), ceil((o + 1) * in / out)); when
// no axis shrinks this is nearest.
HostTensor interpolate_nearest_max(const HostTensor & in, int64_t out_w, int64_t out_h);

// 3x3 max pool, stride 1, padding 1 (out of range taps ignored).
HostTensor max_pool_3x3(const HostTensor & in);

}  // namespace sd
