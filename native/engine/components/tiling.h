// Tiled VAE / TAESD runs, as stable-diffusion.cpp's --vae-tiling computes them (its
// sd_tiling_calc_tiles, process_tiles_2d and sd_tensor_merge_2d, commit 97d29908):
//
// Tile size (latent pixels): the requested one, or 32; at least 4 and at most the latent's side.
// Encoding uses twice the decode tile (64 latent pixels = 512 image pixels by default: the
// reference finds image encoding more sensitive to tile borders). Overlap: the requested fraction
// of the tile (default 0.5), clamped to [0, 0.5] by the reference (the API rejects values outside).
//
// Per axis, of length L (latent pixels when decoding, the output latent's when encoding), tile T,
// target overlap f: o = floor(T f), n = (L - o) / (T - o) tiles, one more if the remainder fits
// without the overlap passing T/2; the real overlap factor is (T n - L) / (T (n - 1)), and with
// n <= 2: one tile when L <= T, else two overlapping by (2T - L) / T. Tiles start every
// T - floor(T f_real) pixels; the last one is moved back to end at L, and its first pixels, already
// covered, are skipped.
//
// Blending: the output starts at zero and each tile adds value * s(wx) * s(wy), s the smootherstep
// x^3 (6x^2 - 15x + 10) and w the distance into the overlap, (i - skip) / overlap from a side that
// has a neighbour (the image border does not fade), (size - i) / overlap towards the far side,
// capped at 1 (overlap in output pixels: the latent overlap times 8 when decoding).
#pragma once
#include <functional>

#include "runtime/graph-runner.h"

namespace sd {

// The tiling a caller asks for (0 / negative = the reference's defaults).
struct VaeTiling {
    bool enabled = false;
    int tile_size = 0;     // latent pixels per tile side when decoding; 0 = 32
    float overlap = 0.5f;  // fraction of the tile shared with its neighbour, [0, 0.5]
};

constexpr int kVaeDefaultTileSize = 32;      // stable-diffusion.cpp's default (latent pixels)
constexpr float kVaeDefaultTileOverlap = 0.5f;
constexpr int kVaeMinTileSize = 4;           // the reference's smallest tile
constexpr float kVaeEncodeTileFactor = 2.0f;  // encode tiles are twice the decode tiles

// The tile side used along an axis of `latent_size` latent pixels.
int vae_tile_size(const VaeTiling & tiling, int64_t latent_size, bool encoding);

// Tile count and real overlap factor along one axis (the arithmetic above).
void vae_tile_layout(int length, int tile_size, float overlap, int & tiles, float & real_overlap);

// Runs `run_tile` on every tile of `input` ([N, C, H, W], ne order) and blends the results.
// scale: output pixels per input pixel (8 when decoding) or input pixels per output pixel (8 when
// encoding: `decoding` false). Each tile's output must be the tile's size times (or divided by)
// scale. `aborted` is asked before every tile; true throws Aborted.
HostTensor run_tiled(const HostTensor & input, int scale, bool decoding, int tile_size_x, int tile_size_y, float overlap,
                     const std::function<HostTensor(const HostTensor &)> & run_tile,
                     const std::function<bool()> & aborted);

}  // namespace sd
