// randn({ seed, rng, count }): the noise stream a seed gives, as generate() draws it.
#include "randn.h"

#include "js-error.h"
#include "sd.h"

namespace sdnode {

Napi::Value Randn(const Napi::CallbackInfo & info) {
    Napi::Env env = info.Env();
    return guard(env, [&]() -> Napi::Value {
        if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsString() || !info[2].IsNumber()) {
            throw CapturedError{"InvalidArgument", "randn(seed: number, rng: string, count: number)", ""}.to_js(env);
        }
        const double seed = info[0].As<Napi::Number>().DoubleValue();
        const double count = info[2].As<Napi::Number>().DoubleValue();
        if (!(seed >= 0 && seed <= sd::limits::kSeedMax) || !(count >= 0 && count <= sd::limits::kRandnCountMax)) {
            throw CapturedError{"InvalidArgument", "randn: seed must be a safe non-negative integer and count at most 1e8", ""}.to_js(env);
        }
        auto rng = sd::make_rng(sd::parse_rng_kind(info[1].As<Napi::String>().Utf8Value()), static_cast<uint64_t>(seed));
        Napi::Float32Array out = Napi::Float32Array::New(env, static_cast<size_t>(count));
        rng->randn(out.Data(), out.ElementLength());
        return out;
    });
}

}  // namespace sdnode
