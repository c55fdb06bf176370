// Prints the compute-buffer bytes an untiled VAE / TAESD decode and encode needs per image size,
// as ggml's allocator measures them on the real graphs (what automatic tiling compares with
// vaeMemoryBudget; docs/performance.md quotes these). Not a test:
//   build-tests/vae_memory MODEL [TAESD] [sides...]     (default sides: 256 512 768 1024 1536 2048)
#include <cstdio>
#include <cstdlib>
#include <future>
#include <string>
#include <vector>

#include "sd.h"

int main(int argc, char ** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL [TAESD] [sides...]\n", argv[0]);
        return 2;
    }
    sd::ModelLoadOptions options;
    int arg = 2;
    if (argc > 2 && std::atoi(argv[2]) == 0) options.taesd_path = argv[arg++];
    std::vector<int> sides;
    for (; arg < argc; ++arg) sides.push_back(std::atoi(argv[arg]));
    if (sides.empty()) sides = {256, 512, 768, 1024, 1536, 2048};
    try {
        auto model = sd::Model::load(argv[1], options);
        sd::Session session(model);
        std::promise<void> done;
        session.submit([&] {
            try {
                sd::GraphRunner & runner = session.runner();
                const double mib = 1024.0 * 1024.0;
                std::printf("| image | VAE decode | VAE encode |%s\n", model->taesd() ? " TAESD decode | TAESD encode |" : "");
                std::printf("| --- | --- | --- |%s\n", model->taesd() ? " --- | --- |" : "");
                for (int side : sides) {
                    const int64_t l = side / 8;
                    std::printf("| %dx%d | %.0f MiB | %.0f MiB |", side, side,
                                sd::decode_compute_bytes(*model, runner, sd::Decoder::Vae, l, l) / mib,
                                sd::encode_compute_bytes(*model, runner, sd::Decoder::Vae, side, side) / mib);
                    if (model->taesd()) {
                        std::printf(" %.0f MiB | %.0f MiB |", sd::decode_compute_bytes(*model, runner, sd::Decoder::Taesd, l, l) / mib,
                                    sd::encode_compute_bytes(*model, runner, sd::Decoder::Taesd, side, side) / mib);
                    }
                    std::printf("\n");
                }
                done.set_value();
            } catch (...) {
                done.set_exception(std::current_exception());
            }
        });
        done.get_future().get();
    } catch (const std::exception & e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
    return 0;
}
