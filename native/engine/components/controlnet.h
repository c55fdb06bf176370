// ControlNet (lllyasviel's cldm.ControlNet, as stable-diffusion.cpp's control.hpp computes it):
// a copy of the UNet's encoder that also sees a control image.
//
//   guided = input_hint_block(image)       8 3x3 convs (3->16->16->32 s2->32->96 s2->96->256 s2
//                                           ->model_channels), SiLU between; image in [0, 1],
//                                           at 8x the latent size -> [N, mc, h, w]
//   h      = input_blocks.0(x) + guided    x: the UNet's latent input (c_in x), without the
//                                           inpainting / edit channels
//   outs   = zero_convs.i(input block i's output), i = 0 .., then middle_block_out(middle block)
//
// Each output, times the strength, is added to the UNet's skip connection of the same input
// block and to its middle block's output (components/unet.h, UnetInput::control). The guided
// hint depends only on the image, so it is computed once per size (hint()) and reused by every
// step's forward().
//
// The loaded ControlNet is immutable and shared: by generations, sessions and models whose UNet
// it fits (check_fits()).
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "components/unet.h"
#include "ggml-backend.h"
#include "ggml-cpp.h"
#include "io/model-file.h"
#include "model/names.h"
#include "model/options.h"
#include "model/weights.h"

namespace sd {

struct ControlNetLoadOptions {
    std::optional<ggml_type> weight_type;  // linear weights converted on load; nullopt = keep
    int threads = 1;
    std::string device = "auto";  // as ModelLoadOptions::device
    const std::atomic<bool> * abort = nullptr;
    std::function<void(double)> progress;  // [0, 1], from the loading thread
};

class ControlNet {
public:
    // Opens, checks (every tensor's shape, traced on metadata before a weight is read) and loads
    // a ControlNet file. Throws Io, ModelFormat (a tensor missing or of the wrong shape, named),
    // UnsupportedModel (not a ControlNet), InvalidArgument (device, threads), Aborted, OutOfMemory.
    static std::shared_ptr<const ControlNet> load(const std::string & path, const ControlNetLoadOptions & options);
    ~ControlNet();
    ControlNet(const ControlNet &) = delete;
    ControlNet & operator=(const ControlNet &) = delete;

    const std::string & path() const { return path_; }
    // The encoder's structure as UNet parameters (out_channels unused), detected from the tensors.
    const UnetParams & params() const { return params_; }
    int hint_channels() const { return hint_channels_; }
    // "sd1", "sd2", "sdxl" by context width (what the UNet it fits is), else "unknown".
    const char * family() const;
    // Residuals forward() gives: one per zero convolution, then the middle block's.
    int control_count() const;
    ggml_backend_dev_t device() const { return device_; }
    uint64_t weight_bytes() const { return weights_.bytes(); }
    uint64_t mapped_weight_bytes() const { return weights_.mapped_bytes(); }
    const std::vector<std::string> & unused_tensors() const { return unused_; }
    const std::vector<std::string> & warnings() const { return warnings_; }
    void check_files_unchanged() const;

    // Throws InvalidArgument naming both when this ControlNet's residuals cannot go into `unet`
    // (context width, latent channels, channels per level, blocks, middle block, label embedding).
    // `what` names this ControlNet in the message (e.g. "controlNets[0]").
    void check_fits(const UnetParams & unet, const std::string & what) const;

    // Graphs. hint: ne {W, H, hint_channels, 1}, W and H multiples of 8 -> ne {W/8, H/8, mc, 1}.
    ggml_tensor * build_hint(Graph & g, ggml_tensor * hint) const;
    // x: ne {w, h, in_channels, N}; guided: build_hint's output at w x h (batch 1, broadcast).
    // Returns the control_count() residuals, each times `strength`.
    std::vector<ggml_tensor *> build(Graph & g, const Unet::GraphInputs & in, ggml_tensor * guided, float strength) const;

    // Host side. image01: ne {W, H, hint_channels, 1} in [0, 1].
    HostTensor hint(GraphRunner & runner, const HostTensor & image01) const;
    // in.x, timesteps, context, y as the UNet gets them (control empty); the residuals, each
    // times `strength`, in UnetInput::control order.
    std::vector<HostTensor> forward(GraphRunner & runner, const UnetInput & in, const HostTensor & guided, float strength) const;

private:
    ControlNet() = default;

    std::string path_;
    ModelFile file_;
    CanonicalModel canonical_;
    UnetParams params_;
    int hint_channels_ = 3;
    uint64_t id_ = 0;  // tells graph shape keys of different ControlNets apart
    ggml_backend_ptr load_backend_;
    ggml_backend_dev_t device_ = nullptr;
    ComponentWeights weights_;
    std::unique_ptr<ComponentTensors> tensors_;
    std::vector<std::string> unused_, warnings_;
};

// The reference's --canny preprocessor (preprocess_canny), in place on an 8-bit image of 1, 3 or
// 4 interleaved channels (alpha untouched): gray, 5x5 Gaussian (sigma 1.4), Sobel, non-maximum
// suppression, double threshold with hysteresis; every color channel gets the edge value.
struct CannyParams {
    double high_threshold = kDefaultCannyHighThreshold, low_threshold = kDefaultCannyLowThreshold;
    double weak = kDefaultCannyWeak, strong = kDefaultCannyStrong;
    bool inverse = false;
};
void preprocess_canny(std::vector<uint8_t> & pixels, int width, int height, int channels, const CannyParams & params);

}  // namespace sd
