// Small helpers to read JS arguments and build JS values, with the one error shape.
#pragma once
#include <napi.h>

#include <optional>
#include <string>
#include <vector>

#include "js-error.h"

namespace sdnode {

template <typename T>
Napi::Array to_js_array(Napi::Env env, const std::vector<T> & v) {
    Napi::Array a = Napi::Array::New(env, v.size());
    for (size_t i = 0; i < v.size(); ++i) a.Set(static_cast<uint32_t>(i), Napi::Value::From(env, v[i]));
    return a;
}

[[noreturn]] inline void throw_invalid_js(Napi::Env env, const std::string & message) {
    throw CapturedError{"InvalidArgument", message, ""}.to_js(env);
}

inline Napi::Object options_arg(const Napi::CallbackInfo & info, size_t i) {
    if (info.Length() <= i || !info[i].IsObject()) throw_invalid_js(info.Env(), "options must be an object");
    return info[i].As<Napi::Object>();
}

// An optional field: unset when undefined; a TypeError-like InvalidArgument when of another type.
inline std::optional<std::string> optional_string(Napi::Object o, const char * key) {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined()) return std::nullopt;
    if (!v.IsString()) throw_invalid_js(o.Env(), std::string(key) + " must be a string");
    return v.As<Napi::String>().Utf8Value();
}

inline std::optional<double> optional_number(Napi::Object o, const char * key) {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined()) return std::nullopt;
    if (!v.IsNumber()) throw_invalid_js(o.Env(), std::string(key) + " must be a number");
    return v.As<Napi::Number>().DoubleValue();
}

// An integer field; the range is the engine's to check, but it must fit an int first.
inline std::optional<int> optional_int(Napi::Object o, const char * key) {
    const std::optional<double> d = optional_number(o, key);
    if (!d) return std::nullopt;
    if (*d != static_cast<double>(static_cast<int64_t>(*d)) || *d < -2147483648.0 || *d > 2147483647.0) {
        throw_invalid_js(o.Env(), std::string(key) + " must be an integer; received " + std::to_string(*d));
    }
    return static_cast<int>(*d);
}

}  // namespace sdnode
