// The one place C++ failures become JS errors. Every error carries `code` (the engine's
// ErrorCode name, e.g. "ModelFormat") and, when known, `file`; lib/errors.ts turns them into
// typed classes. Nothing unwinds through N-API: every entry point catches here.
#pragma once
#include <napi.h>

#include <string>

#include "core/errors.h"

namespace sdnode {

struct CapturedError {
    std::string code = "Internal";
    std::string message;
    std::string file;

    static CapturedError from_current_exception();  // call inside a catch block
    Napi::Error to_js(Napi::Env env) const;
};

// Runs `fn` and converts any exception into a thrown JS error (for synchronous methods).
template <typename Fn>
auto guard(Napi::Env env, Fn && fn) -> decltype(fn()) {
    try {
        return fn();
    } catch (const Napi::Error &) {
        throw;
    } catch (...) {
        throw CapturedError::from_current_exception().to_js(env);
    }
}

}  // namespace sdnode
