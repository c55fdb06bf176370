// Minimal assertion helpers for the engine's C++ tests (run by ctest; node:test covers the API).
#pragma once
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace sdtest {
inline int & failures() { static int n = 0; return n; }
inline int & checks() { static int n = 0; return n; }
// Where stable-diffusion.cpp's reference outputs are (the folder holding sd15-random/, ...), or
// "" when the reference checks are off: they run only under SDNODE_REFERENCE=1 (or with
// SDNODE_REFERENCE_DIR naming the folder), from ../shared/reference beside the project root
// (ctest runs in the project root), so a clone with nothing beside it passes.
inline std::string reference_root() {
    if (const char * dir = std::getenv("SDNODE_REFERENCE_DIR")) return dir;
    const char * on = std::getenv("SDNODE_REFERENCE");
    return on && std::string(on) == "1" ? "../shared/reference" : "";
}
inline int finish(const char * name) {
    std::printf("%s: %d checks, %d failed\n", name, checks(), failures());
    return failures() == 0 ? 0 : 1;
}
}  // namespace sdtest

#define CHECK(cond)                                                                         \
    do {                                                                                    \
        ++sdtest::checks();                                                                 \
        if (!(cond)) {                                                                      \
            ++sdtest::failures();                                                           \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
        }                                                                                   \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                               \
    do {                                                                                    \
        ++sdtest::checks();                                                                 \
        double _a = (a), _b = (b);                                                          \
        if (!(std::fabs(_a - _b) <= (tol))) {                                               \
            ++sdtest::failures();                                                           \
            std::fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s=%.9g %s=%.9g tol=%g\n",       \
                         __FILE__, __LINE__, #a, _a, #b, _b, (double)(tol));                \
        }                                                                                   \
    } while (0)

// Expects `expr` to throw sd::Error with the given code.
#define CHECK_THROWS_CODE(expr, errcode)                                                    \
    do {                                                                                    \
        ++sdtest::checks();                                                                 \
        bool _thrown = false;                                                               \
        try { expr; } catch (const sd::Error & _e) {                                        \
            _thrown = true;                                                                 \
            if (_e.code() != (errcode)) {                                                   \
                ++sdtest::failures();                                                       \
                std::fprintf(stderr, "%s:%d: %s threw %s: %s\n", __FILE__, __LINE__, #expr, \
                             sd::error_code_name(_e.code()), _e.what());                    \
            }                                                                               \
        } catch (const std::exception & _e) {                                               \
            _thrown = true; ++sdtest::failures();                                           \
            std::fprintf(stderr, "%s:%d: %s threw a non-sd exception: %s\n", __FILE__,     \
                         __LINE__, #expr, _e.what());                                       \
        }                                                                                   \
        if (!_thrown) {                                                                     \
            ++sdtest::failures();                                                           \
            std::fprintf(stderr, "%s:%d: %s did not throw\n", __FILE__, __LINE__, #expr);   \
        }                                                                                   \
    } while (0)
