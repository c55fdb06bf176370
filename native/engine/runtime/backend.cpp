#include "runtime/backend.h"

#include <algorithm>
#include <mutex>
#include <thread>

#if defined(__linux__)
#  include <sched.h>
#endif

#include "ggml-backend.h"
#include "ggml.h"
#include "core/log.h"

#if defined(SDNODE_BACKEND_DL)
#  if defined(_WIN32)
#    include <windows.h>
#  else
#    include <dlfcn.h>
#  endif
#endif


namespace sd {

namespace {

#if defined(SDNODE_BACKEND_DL)
// The folder this code was loaded from: the backend modules are shipped beside it.
std::string own_directory() {
#  if defined(_WIN32)
    HMODULE module = nullptr;
    GetModuleHandleExA(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
                       reinterpret_cast<LPCSTR>(&own_directory), &module);
    char path[MAX_PATH] = {0};
    GetModuleFileNameA(module, path, MAX_PATH);
    std::string p(path);
    auto slash = p.find_last_of("\\/");
#  else
    Dl_info info{};
    if (!dladdr(reinterpret_cast<void *>(&own_directory), &info) || !info.dli_fname) return ".";
    std::string p(info.dli_fname);
    auto slash = p.find_last_of('/');
#  endif
    return slash == std::string::npos ? std::string(".") : p.substr(0, slash);
}
#endif

std::once_flag g_backends_once;

// ggml's own messages (backend loading, allocation) go through our log hook, at our levels.
void forward_ggml_log(ggml_log_level level, const char * text, void *) {
    if (!text) return;
    std::string msg(text);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == '\r')) msg.pop_back();
    if (msg.empty()) return;
    LogLevel ours = LogLevel::Debug;
    if (level == GGML_LOG_LEVEL_ERROR) ours = LogLevel::Error;
    else if (level == GGML_LOG_LEVEL_WARN) ours = LogLevel::Warn;
    else if (level == GGML_LOG_LEVEL_INFO) ours = LogLevel::Info;
    log(ours, "ggml: " + msg);
}

}  // namespace

void init_backends() {
    std::call_once(g_backends_once, [] {
        ggml_log_set(forward_ggml_log, nullptr);
#if defined(SDNODE_BACKEND_DL)
        ggml_backend_load_all_from_path(own_directory().c_str());
#endif
    });
}

int logical_cpu_count() {
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(n);
}

int default_thread_count() { return logical_cpu_count(); }

SystemInfo system_info() {
    init_backends();
    SystemInfo info;
    info.ggml_version = ggml_version();
    info.ggml_commit = ggml_commit();
#if defined(SDNODE_BACKEND_DL)
    info.dynamic_backends = true;
#endif
    info.default_threads = default_thread_count();
    for (size_t i = 0; i < ggml_backend_reg_count(); ++i) {
        ggml_backend_reg_t reg = ggml_backend_reg_get(i);
        info.backends.emplace_back(ggml_backend_reg_name(reg));
        // Every backend may publish a feature list; the CPU's is its instruction sets.
        auto get_features = reinterpret_cast<ggml_backend_get_features_t>(
            ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features"));
        if (get_features && std::string(ggml_backend_reg_name(reg)) == "CPU") {
            for (ggml_backend_feature * f = get_features(reg); f && f->name; ++f) {
                info.cpu_features.emplace_back(f->name, f->value ? f->value : "");
            }
        }
    }
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        DeviceInfo d;
        d.name = ggml_backend_dev_name(dev);
        d.description = ggml_backend_dev_description(dev);
        d.backend = ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev));
        switch (ggml_backend_dev_type(dev)) {
            case GGML_BACKEND_DEVICE_TYPE_CPU: d.type = "cpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_GPU: d.type = "gpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_IGPU: d.type = "igpu"; break;
            default: d.type = "accel"; break;
        }
        size_t free_mem = 0, total_mem = 0;
        ggml_backend_dev_memory(dev, &free_mem, &total_mem);
        d.memory_free = free_mem;
        d.memory_total = total_mem;
        info.devices.push_back(std::move(d));
    }
    return info;
}

}  // namespace sd
