#include "components/tiling.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/errors.h"

namespace sd {

int vae_tile_size(const VaeTiling & tiling, int64_t latent_size, bool encoding) {
    int size = tiling.tile_size >= kVaeMinTileSize ? tiling.tile_size : kVaeDefaultTileSize;
    if (encoding) size = static_cast<int>(static_cast<float>(size) * kVaeEncodeTileFactor);
    return std::max(static_cast<int>(std::min<int64_t>(size, latent_size)), kVaeMinTileSize);
}

void vae_tile_layout(int length, int tile_size, float overlap, int & tiles, float & real_overlap) {
    const int overlap_px = static_cast<int>(static_cast<float>(tile_size) * overlap);
    const int stride = tile_size - overlap_px;
    tiles = (length - overlap_px) / stride;
    const int overshoot = ((tiles + 1) * stride + overlap_px) % length;
    // One more tile when they do not fit exactly and it fits without overlapping by more than half.
    if (overshoot != stride && overshoot <= tiles * (tile_size / 2 - overlap_px)) ++tiles;
    real_overlap = static_cast<float>(tile_size * tiles - length) / static_cast<float>(tile_size * (tiles - 1));
    if (tiles <= 2) {
        if (length <= tile_size) {
            tiles = 1;
            real_overlap = 0;
        } else {
            tiles = 2;
            real_overlap = static_cast<float>(2 * tile_size - length) / static_cast<float>(tile_size);
        }
    }
}

namespace {

float smootherstep(float x) { return x * x * x * (x * (6.0f * x - 15.0f) + 10.0f); }

// The w x h window of `in` at (x, y), every plane.
HostTensor crop(const HostTensor & in, int64_t x, int64_t y, int64_t w, int64_t h) {
    HostTensor out;
    out.ne[0] = w;
    out.ne[1] = h;
    out.ne[2] = in.ne[2];
    out.ne[3] = in.ne[3];
    out.data.resize(static_cast<size_t>(out.numel()));
    const int64_t planes = in.ne[2] * in.ne[3];
    for (int64_t p = 0; p < planes; ++p) {
        for (int64_t iy = 0; iy < h; ++iy) {
            const float * src = in.data.data() + (p * in.ne[1] + y + iy) * in.ne[0] + x;
            std::copy(src, src + w, out.data.data() + (p * h + iy) * w);
        }
    }
    return out;
}

// Adds `tile` into `out` at (x, y) with the reference's smootherstep weights; the first
// skip_x / skip_y columns / rows of the tile are already covered and left out.
void blend(const HostTensor & tile, HostTensor & out, int64_t x, int64_t y, int overlap_x, int overlap_y, int skip_x,
           int skip_y) {
    const int64_t w = tile.ne[0], h = tile.ne[1], W = out.ne[0], H = out.ne[1];
    const int64_t planes = tile.ne[2] * tile.ne[3];
    const bool fades = overlap_x > 0 || overlap_y > 0;
    const bool left = overlap_x > 0 && x > 0, right = overlap_x > 0 && x < W - w;
    const bool top = overlap_y > 0 && y > 0, bottom = overlap_y > 0 && y < H - h;
    for (int64_t iy = skip_y; iy < h; ++iy) {
        const float fy0 = top ? static_cast<float>(iy - skip_y) / static_cast<float>(overlap_y) : 1.0f;
        const float fy1 = bottom ? static_cast<float>(h - iy) / static_cast<float>(overlap_y) : 1.0f;
        const float wy = smootherstep(std::min(std::min(fy0, fy1), 1.0f));
        for (int64_t ix = skip_x; ix < w; ++ix) {
            const float fx0 = left ? static_cast<float>(ix - skip_x) / static_cast<float>(overlap_x) : 1.0f;
            const float fx1 = right ? static_cast<float>(w - ix) / static_cast<float>(overlap_x) : 1.0f;
            const float wx = smootherstep(std::min(std::min(fx0, fx1), 1.0f));
            for (int64_t p = 0; p < planes; ++p) {
                const float v = tile.data[static_cast<size_t>((p * h + iy) * w + ix)];
                float & dst = out.data[static_cast<size_t>((p * H + y + iy) * W + x + ix)];
                dst = fades ? dst + v * wy * wx : v;
            }
        }
    }
}

}  // namespace

HostTensor run_tiled(const HostTensor & input, int scale, bool decoding, int tile_size_x, int tile_size_y, float overlap,
                     const std::function<HostTensor(const HostTensor &)> & run_tile,
                     const std::function<bool()> & aborted) {
    // Tiles are laid out on the smaller grid (the latent): the input when decoding, else the output.
    const int small_w = static_cast<int>(decoding ? input.ne[0] : input.ne[0] / scale);
    const int small_h = static_cast<int>(decoding ? input.ne[1] : input.ne[1] / scale);
    if (small_w < 1 || small_h < 1 || tile_size_x < 1 || tile_size_y < 1 ||
        (!decoding && (input.ne[0] % scale != 0 || input.ne[1] % scale != 0))) {
        throw_invalid("cannot tile " + std::to_string(input.ne[0]) + "x" + std::to_string(input.ne[1]) + " in " +
                      std::to_string(tile_size_x) + "x" + std::to_string(tile_size_y) + " tiles");
    }
    int tiles_x, tiles_y;
    float real_x, real_y;
    vae_tile_layout(small_w, tile_size_x, overlap, tiles_x, real_x);
    vae_tile_layout(small_h, tile_size_y, overlap, tiles_y, real_y);
    const int overlap_x = static_cast<int>(static_cast<float>(tile_size_x) * real_x);
    const int overlap_y = static_cast<int>(static_cast<float>(tile_size_y) * real_y);
    const int stride_x = tile_size_x - overlap_x, stride_y = tile_size_y - overlap_y;
    const int tile_w = std::min(tile_size_x, small_w), tile_h = std::min(tile_size_y, small_h);
    const int in_scale = decoding ? 1 : scale, out_scale = decoding ? scale : 1;

    HostTensor out;
    bool last_y = false;
    for (int y = 0; y < small_h && !last_y; y += stride_y) {
        int skip_y = 0;
        if (y + tile_h >= small_h) {
            skip_y = (y - (small_h - tile_h)) * out_scale;
            y = small_h - tile_h;
            last_y = true;
        }
        bool last_x = false;
        for (int x = 0; x < small_w && !last_x; x += stride_x) {
            int skip_x = 0;
            if (x + tile_w >= small_w) {
                skip_x = (x - (small_w - tile_w)) * out_scale;
                x = small_w - tile_w;
                last_x = true;
            }
            if (aborted && aborted()) throw Error(ErrorCode::Aborted, "generation was aborted");
            const HostTensor in_tile = crop(input, int64_t(x) * in_scale, int64_t(y) * in_scale, int64_t(tile_w) * in_scale,
                                            int64_t(tile_h) * in_scale);
            const HostTensor out_tile = run_tile(in_tile);
            if (out_tile.ne[0] != int64_t(tile_w) * out_scale || out_tile.ne[1] != int64_t(tile_h) * out_scale ||
                out_tile.ne[3] != input.ne[3]) {
                throw Error(ErrorCode::Internal, "a tile's output has the wrong size");
            }
            if (out.data.empty()) {
                out.ne[0] = int64_t(small_w) * out_scale;
                out.ne[1] = int64_t(small_h) * out_scale;
                out.ne[2] = out_tile.ne[2];
                out.ne[3] = out_tile.ne[3];
                out.data.assign(static_cast<size_t>(out.numel()), 0.0f);
            }
            blend(out_tile, out, int64_t(x) * out_scale, int64_t(y) * out_scale, overlap_x * out_scale,
                  overlap_y * out_scale, skip_x, skip_y);
        }
    }
    return out;
}

}  // namespace sd
