// Gaussian noise generators that reproduce, number for number, the three RNGs of
// stable-diffusion.cpp (and through them the seeds of A1111 and ComfyUI):
//
//   cuda         Philox 4x32-10 + Box-Muller, as A1111's "GPU" seed (modules/rng_philox.py).
//                The default. Each randn() call is one Philox "offset": counter = (offset, 0, i, 0),
//                key = the 64-bit seed; the offset goes up by one per call, whatever n is.
//   cpu          torch's CPU generator: mt19937 seeded with the low 32 bits of the seed, and
//                torch's normal sampling (n >= 16: uniform floats, Box-Muller in 16-value blocks,
//                a short tail redone as the last 16; n < 16: double Box-Muller with a cached
//                second value). Reproduces ComfyUI seeds.
//   std_default  libstdc++'s std::default_random_engine (minstd_rand0, seeded with the low 32
//                bits) + std::normal_distribution<float> (Marsaglia polar method), re-implemented
//                here so the numbers do not depend on the platform's standard library.
//                As in stable-diffusion.cpp, every randn() call uses a fresh distribution: the
//                polar method's cached second value is dropped at the end of each call.
//
// How stable-diffusion.cpp uses them for txt2img (which the pipeline must follow to match):
//   - one generator of the chosen kind, seeded with the image's seed (seed + b for batch item b);
//   - the initial noise is one randn(C*H*W) call, in ggml order (W fastest, then H, then C);
//   - the ancestral samplers' noise (euler_a, dpm++2s_a, lcm, ddim_trailing/tcd with eta > 0)
//     comes from the SAME generator object, continuing its stream: one randn(C*H*W) call per
//     noised step. (sd.cpp has a separate "sampler rng" only when --sampler-rng names a kind
//     different from --rng; it is then a second generator of that kind seeded with the same seed.)
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sd {

enum class RngKind { Cuda, Cpu, StdDefault };

const char * rng_kind_name(RngKind kind);              // "cuda", "cpu", "std_default"
RngKind parse_rng_kind(const std::string & name);      // throws InvalidArgument on an unknown name
std::vector<RngKind> all_rng_kinds();

class Rng {
public:
    virtual ~Rng() = default;
    // Fills out[0..n) with standard normal samples, continuing the generator's stream.
    virtual void randn(float * out, size_t n) = 0;
    virtual RngKind kind() const = 0;
};

std::unique_ptr<Rng> make_rng(RngKind kind, uint64_t seed);

}  // namespace sd
