#include "js-error.h"

#include <new>

namespace sdnode {

CapturedError CapturedError::from_current_exception() {
    CapturedError out;
    try {
        throw;
    } catch (const sd::Error & e) {
        out.code = sd::error_code_name(e.code());
        out.message = e.what();
        out.file = e.file();
    } catch (const std::bad_alloc &) {
        out.code = "OutOfMemory";
        out.message = "out of memory";
    } catch (const std::exception & e) {
        out.code = "Internal";
        out.message = std::string("internal error: ") + e.what();
    } catch (...) {
        out.code = "Internal";
        out.message = "internal error: unknown exception";
    }
    return out;
}

Napi::Error CapturedError::to_js(Napi::Env env) const {
    Napi::Error err = Napi::Error::New(env, message);
    err.Set("code", Napi::String::New(env, code));
    if (!file.empty()) err.Set("file", Napi::String::New(env, file));
    return err;
}

}  // namespace sdnode
