#include "diffusion/rng.h"

#include <array>
#include <cmath>
#include <limits>

#include "core/enum-names.h"
#include "core/errors.h"

namespace sd {

namespace {
constexpr EnumName<RngKind> kRngNames[] = {{RngKind::Cuda, "cuda"}, {RngKind::Cpu, "cpu"}, {RngKind::StdDefault, "std_default"}};
}  // namespace

const char * rng_kind_name(RngKind kind) { return enum_name(kRngNames, kind); }

RngKind parse_rng_kind(const std::string & name) { return parse_enum(kRngNames, name, "rng"); }

namespace {

// ------------------------------------------------------------------ cuda: Philox 4x32-10

class PhiloxRng final : public Rng {
public:
    explicit PhiloxRng(uint64_t seed) : key_lo_(uint32_t(seed)), key_hi_(uint32_t(seed >> 32)) {}

    RngKind kind() const override { return RngKind::Cuda; }

    void randn(float * out, size_t n) override {
        // The element index is the counter's third word: 32 bits, as in the reference.
        if (n > std::numeric_limits<uint32_t>::max()) {
            throw_invalid("cuda rng: cannot draw " + std::to_string(n) + " values in one call (at most 2^32-1)");
        }
        for (size_t i = 0; i < n; ++i) {
            std::array<uint32_t, 4> c = {offset_, 0u, uint32_t(i), 0u};
            philox10(c);
            out[i] = box_muller(c[0], c[1]);
        }
        ++offset_;  // one offset per call, not per value
    }

private:
    static constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
    static constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;

    void philox10(std::array<uint32_t, 4> & c) const {
        uint32_t k0 = key_lo_, k1 = key_hi_;
        for (int round = 0; round < 10; ++round) {
            if (round > 0) {  // the key is bumped between rounds, not before the first
                k0 += kWeyl0;
                k1 += kWeyl1;
            }
            const uint64_t p0 = uint64_t(c[0]) * kMul0;
            const uint64_t p1 = uint64_t(c[2]) * kMul1;
            c = {uint32_t(p1 >> 32) ^ c[1] ^ k0, uint32_t(p1), uint32_t(p0 >> 32) ^ c[3] ^ k1, uint32_t(p0)};
        }
    }

    // Single-output Box-Muller, the uniforms centred in their 2^-32 bins (never 0). The uniforms
    // are float; log, sqrt and sin run in double with the radius rounded to float in between —
    // the precision stable-diffusion.cpp's code ends up with (C's double log/sqrt/sin on float
    // arguments), which makes the noise bit-identical to its.
    static float box_muller(uint32_t a, uint32_t b) {
        const float inv32 = 2.3283064e-10f;              // 2^-32
        const float inv32_2pi = 2.3283064e-10f * 6.2831855f;
        const float u = float(a) * inv32 + inv32 / 2;
        const float v = float(b) * inv32_2pi + inv32_2pi / 2;
        const float s = static_cast<float>(std::sqrt(-2.0f * std::log(static_cast<double>(u))));
        return static_cast<float>(s * std::sin(static_cast<double>(v)));
    }

    uint32_t key_lo_, key_hi_;
    uint32_t offset_ = 0;
};

// ------------------------------------------------------------------ cpu: torch mt19937

class TorchCpuRng final : public Rng {
public:
    explicit TorchCpuRng(uint64_t seed) {
        state_[0] = uint32_t(seed);  // torch keeps only the low 32 bits for mt19937
        for (int j = 1; j < kN; ++j) {
            state_[j] = 1812433253u * (state_[j - 1] ^ (state_[j - 1] >> 30)) + uint32_t(j);
        }
        next_ = kN;  // twist before the first draw
    }

    RngKind kind() const override { return RngKind::Cpu; }

    void randn(float * out, size_t n) override {
        if (n >= 16) {
            for (size_t i = 0; i < n; ++i) out[i] = uniform_float(next_u32());
            for (size_t i = 0; i + 16 <= n; i += 16) box_muller_16(out + i);
            if (n % 16 != 0) {
                // torch redoes the last 16 values from fresh uniforms (overlapping the last block)
                float * tail = out + n - 16;
                for (int i = 0; i < 16; ++i) tail[i] = uniform_float(next_u32());
                box_muller_16(tail);
            }
        } else {
            for (size_t i = 0; i < n; ++i) out[i] = float(normal_double());
        }
    }

private:
    static constexpr int kN = 624, kM = 397;

    uint32_t next_u32() {
        if (next_ >= kN) twist();
        uint32_t y = state_[next_++];
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c5680u;
        y ^= (y << 15) & 0xefc60000u;
        y ^= y >> 18;
        return y;
    }

    void twist() {
        for (int k = 0; k < kN; ++k) {
            const uint32_t y = (state_[k] & 0x80000000u) | (state_[(k + 1) % kN] & 0x7fffffffu);
            state_[k] = state_[(k + kM) % kN] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
        }
        next_ = 0;
    }

    // torch's uniform_real for float: the low 24 bits of one 32-bit draw.
    static float uniform_float(uint32_t v) { return float(v & 0xFFFFFFu) * (1.0f / 16777216.0f); }

    // torch's normal_fill_16: pairs (j, j+8), in float, theta computed through double pi.
    static void box_muller_16(float * d) {
        for (int j = 0; j < 8; ++j) {
            const float u1 = 1.0f - d[j];  // (0, 1] for the log
            const float u2 = d[j + 8];
            const float r = std::sqrt(-2.0f * std::log(u1));
            const float theta = float(2.0f * 3.14159265358979323846 * u2);
            d[j] = r * std::cos(theta);
            d[j + 8] = r * std::sin(theta);
        }
    }

    // torch's scalar normal path (n < 16): double Box-Muller from two 53-bit uniforms; the
    // second value is kept for the next draw, across calls.
    double normal_double() {
        if (has_cached_) {
            has_cached_ = false;
            return cached_;
        }
        const double u1 = uniform_double();
        const double u2 = uniform_double();
        const double r = std::sqrt(-2.0 * std::log1p(-u2));
        const double theta = 2.0 * 3.14159265358979323846 * u1;
        cached_ = r * std::sin(theta);
        has_cached_ = true;
        return r * std::cos(theta);
    }

    double uniform_double() {
        const uint64_t hi = next_u32();
        const uint64_t lo = next_u32();
        const uint64_t v = (hi << 32) | lo;
        return double(v & ((uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
    }

    std::array<uint32_t, kN> state_{};
    int next_ = kN;
    bool has_cached_ = false;
    double cached_ = 0.0;
};

// ------------------------------------------------------------------ std_default: libstdc++

class StdDefaultRng final : public Rng {
public:
    explicit StdDefaultRng(uint64_t seed) {
        // linear_congruential_engine::seed(unsigned(seed)): x = s mod m, and 0 becomes 1
        const uint32_t s = uint32_t(seed);
        state_ = s % kModulus;
        if (state_ == 0) state_ = 1;
    }

    RngKind kind() const override { return RngKind::StdDefault; }

    void randn(float * out, size_t n) override {
        // A fresh normal_distribution per call: the cached value never crosses calls.
        bool have_saved = false;
        float saved = 0.0f;
        for (size_t i = 0; i < n; ++i) {
            if (have_saved) {
                out[i] = saved;
                have_saved = false;
                continue;
            }
            float x, y, r2;
            do {
                x = float(2.0f * canonical() - 1.0);
                y = float(2.0f * canonical() - 1.0);
                r2 = x * x + y * y;
            } while (r2 > 1.0f || r2 == 0.0f);
            const float mult = std::sqrt(-2.0f * std::log(r2) / r2);
            saved = x * mult;
            have_saved = true;
            out[i] = y * mult;
        }
    }

private:
    static constexpr uint32_t kModulus = 2147483647u;  // 2^31 - 1

    uint32_t next() {
        state_ = uint32_t(uint64_t(state_) * 16807u % kModulus);
        return state_;
    }

    // generate_canonical<float, 24> over minstd_rand0: one draw (its range has 30 full bits),
    // divided by the range rounded to float (2^31); a result of 1 is pulled just below 1.
    float canonical() {
        const float sum = float(next() - 1u);
        const float range = float(2147483646.0L);
        float r = sum / range;
        if (r >= 1.0f) r = std::nextafter(1.0f, 0.0f);
        return r;
    }

    uint32_t state_;
};

}  // namespace

std::unique_ptr<Rng> make_rng(RngKind kind, uint64_t seed) {
    switch (kind) {
        case RngKind::Cuda: return std::make_unique<PhiloxRng>(seed);
        case RngKind::Cpu: return std::make_unique<TorchCpuRng>(seed);
        case RngKind::StdDefault: return std::make_unique<StdDefaultRng>(seed);
    }
    throw Error(ErrorCode::Internal, "make_rng: unknown RngKind " + std::to_string(int(kind)));
}

}  // namespace sd

namespace sd {
std::vector<RngKind> all_rng_kinds() { return enum_values(kRngNames); }
}  // namespace sd
