// Backend discovery: which ggml backends were compiled in (or loaded as modules in a portable
// build), which devices they see, and what the CPU supports.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sd {

struct DeviceInfo {
    std::string name;         // ggml's device name, e.g. "CPU", "CUDA0"
    std::string description;  // human-readable, e.g. the GPU model
    std::string backend;      // registry name, e.g. "CPU", "CUDA", "Vulkan", "Metal"
    std::string type;         // "cpu", "gpu", "igpu" or "accel"
    uint64_t memory_total = 0;
    uint64_t memory_free = 0;
};

struct SystemInfo {
    std::string ggml_version;
    std::string ggml_commit;
    std::vector<std::string> backends;  // registered backend names
    std::vector<DeviceInfo> devices;
    std::vector<std::pair<std::string, std::string>> cpu_features;  // name -> value, as ggml reports
    int default_threads = 1;
    bool dynamic_backends = false;  // true when CPU variants/backends are loaded as modules
};

// Registers every available backend once (idempotent, thread-safe). In a portable build this
// loads the ggml backend modules that sit next to the addon.
void init_backends();

SystemInfo system_info();

// The default compute threads: logical_cpu_count().
int default_thread_count();
// The logical CPUs this process may run on (its affinity mask where the OS has one): the most
// compute threads that help. Past it, threads wait on each other's spinning barriers.
int logical_cpu_count();

}  // namespace sd
