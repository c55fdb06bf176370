#include "pipelines/resample.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/errors.h"

namespace sd {

namespace {

struct Tap {
    int64_t index;
    double weight;
};

double linear_weight(double x) {
    x = std::abs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

// Keys' cubic with a = -0.75 (PyTorch's bicubic).
double cubic_weight(double x) {
    constexpr double a = -0.75;
    x = std::abs(x);
    if (x <= 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    return 0.0;
}

double sinc(double x) {
    if (std::abs(x) < 1e-12) return 1.0;
    const double px = M_PI * x;
    return std::sin(px) / px;
}

double lanczos3_weight(double x) {
    x = std::abs(x);
    return x < 3.0 ? sinc(x) * sinc(x / 3.0) : 0.0;
}

// Per output index along one axis: the input taps and their weights.
std::vector<std::vector<Tap>> filter_taps(int64_t in_size, int64_t out_size, Interpolation mode, bool antialias) {
    const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
    const double stretch = antialias ? std::max(1.0, scale) : 1.0;
    const double radius = mode == Interpolation::Bilinear ? 1.0 : mode == Interpolation::Bicubic ? 2.0 : 3.0;
    const double support = radius * stretch;
    std::vector<std::vector<Tap>> taps(static_cast<size_t>(out_size));
    for (int64_t o = 0; o < out_size; ++o) {
        const double center = (static_cast<double>(o) + 0.5) * scale - 0.5;
        const int64_t first = static_cast<int64_t>(std::ceil(center - support));
        const int64_t last = static_cast<int64_t>(std::floor(center + support));
        double sum = 0.0;
        std::vector<Tap> & t = taps[static_cast<size_t>(o)];
        for (int64_t i = first; i <= last; ++i) {
            const double d = (center - static_cast<double>(i)) / stretch;
            const double w = mode == Interpolation::Bilinear ? linear_weight(d)
                             : mode == Interpolation::Bicubic ? cubic_weight(d)
                                                              : lanczos3_weight(d);
            if (w == 0.0) continue;
            t.push_back({std::clamp<int64_t>(i, 0, in_size - 1), w});
            sum += w;
        }
        if ((antialias || mode == Interpolation::Lanczos) && std::abs(sum) > 1e-12) {
            for (Tap & x : t) x.weight /= sum;
        }
        if (t.empty()) t.push_back({std::clamp<int64_t>(static_cast<int64_t>(std::floor(center + 0.5)), 0, in_size - 1), 1.0});
    }
    return taps;
}

int64_t nearest_index(int64_t o, int64_t in_size, int64_t out_size, bool exact) {
    if (!exact) return o * in_size / out_size;
    const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
    const double center = (static_cast<double>(o) + 0.5) * scale - 0.5;
    return std::clamp<int64_t>(static_cast<int64_t>(std::floor(center + 0.5)), 0, in_size - 1);
}

HostTensor shaped_like(const HostTensor & in, int64_t w, int64_t h) {
    if (w < 1 || h < 1 || in.ne[0] < 1 || in.ne[1] < 1) throw Error(ErrorCode::Internal, "resampling to or from an empty size");
    HostTensor out;
    out.ne[0] = w;
    out.ne[1] = h;
    out.ne[2] = in.ne[2];
    out.ne[3] = in.ne[3];
    out.data.resize(static_cast<size_t>(out.numel()));
    return out;
}

}  // namespace

HostTensor interpolate(const HostTensor & in, int64_t out_w, int64_t out_h, Interpolation mode, bool antialias) {
    HostTensor out = shaped_like(in, out_w, out_h);
    const int64_t in_w = in.ne[0], in_h = in.ne[1], planes = in.ne[2] * in.ne[3];
    if (mode == Interpolation::Nearest || mode == Interpolation::NearestExact) {
        const bool exact = mode == Interpolation::NearestExact;
        for (int64_t p = 0; p < planes; ++p) {
            for (int64_t y = 0; y < out_h; ++y) {
                const int64_t iy = nearest_index(y, in_h, out_h, exact);
                for (int64_t x = 0; x < out_w; ++x) {
                    out.data[(p * out_h + y) * out_w + x] = in.data[(p * in_h + iy) * in_w + nearest_index(x, in_w, out_w, exact)];
                }
            }
        }
        return out;
    }
    const auto xt = filter_taps(in_w, out_w, mode, antialias);
    const auto yt = filter_taps(in_h, out_h, mode, antialias);
    for (int64_t p = 0; p < planes; ++p) {
        const float * src = in.data.data() + p * in_w * in_h;
        for (int64_t y = 0; y < out_h; ++y) {
            for (int64_t x = 0; x < out_w; ++x) {
                double v = 0.0;
                for (const Tap & ty : yt[static_cast<size_t>(y)]) {
                    const float * row = src + ty.index * in_w;
                    for (const Tap & tx : xt[static_cast<size_t>(x)]) v += static_cast<double>(row[tx.index]) * tx.weight * ty.weight;
                }
                out.data[(p * out_h + y) * out_w + x] = static_cast<float>(v);
            }
        }
    }
    return out;
}

HostTensor interpolate_nearest_max(const HostTensor & in, int64_t out_w, int64_t out_h) {
    if (out_w >= in.ne[0] && out_h >= in.ne[1]) return interpolate(in, out_w, out_h, Interpolation::Nearest);
    HostTensor out = shaped_like(in, out_w, out_h);
    const int64_t in_w = in.ne[0], in_h = in.ne[1], planes = in.ne[2] * in.ne[3];
    auto window = [](int64_t o, int64_t in_size, int64_t out_size) {
        return std::pair<int64_t, int64_t>{o * in_size / out_size, std::min(in_size, ((o + 1) * in_size + out_size - 1) / out_size)};
    };
    for (int64_t p = 0; p < planes; ++p) {
        for (int64_t y = 0; y < out_h; ++y) {
            const auto [y0, y1] = window(y, in_h, out_h);
            for (int64_t x = 0; x < out_w; ++x) {
                const auto [x0, x1] = window(x, in_w, out_w);
                float m = std::numeric_limits<float>::lowest();
                for (int64_t iy = y0; iy < y1; ++iy) {
                    for (int64_t ix = x0; ix < x1; ++ix) m = std::max(m, in.data[(p * in_h + iy) * in_w + ix]);
                }
                out.data[(p * out_h + y) * out_w + x] = m;
            }
        }
    }
    return out;
}

HostTensor max_pool_3x3(const HostTensor & in) {
    HostTensor out = shaped_like(in, in.ne[0], in.ne[1]);
    const int64_t w = in.ne[0], h = in.ne[1], planes = in.ne[2] * in.ne[3];
    for (int64_t p = 0; p < planes; ++p) {
        for (int64_t y = 0; y < h; ++y) {
            for (int64_t x = 0; x < w; ++x) {
                float m = std::numeric_limits<float>::lowest();
                for (int64_t dy = -1; dy <= 1; ++dy) {
                    for (int64_t dx = -1; dx <= 1; ++dx) {
                        const int64_t yy = y + dy, xx = x + dx;
                        if (yy >= 0 && yy < h && xx >= 0 && xx < w) m = std::max(m, in.data[(p * h + yy) * w + xx]);
                    }
                }
                out.data[(p * h + y) * w + x] = m;
            }
        }
    }
    return out;
}

}  // namespace sd
