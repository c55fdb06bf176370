// Small helpers to build JS values from engine structs.
#pragma once
#include <napi.h>

#include <string>
#include <vector>

namespace sdnode {

template <typename T>
Napi::Array to_js_array(Napi::Env env, const std::vector<T> & v) {
    Napi::Array a = Napi::Array::New(env, v.size());
    for (size_t i = 0; i < v.size(); ++i) a.Set(static_cast<uint32_t>(i), Napi::Value::From(env, v[i]));
    return a;
}

}  // namespace sdnode
