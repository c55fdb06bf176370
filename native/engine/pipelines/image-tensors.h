// 8-bit images to the VAE's input tensors and the checks every image input gets (the engine's
// side of the boundary; lib/ checks the same first).
#pragma once
#include <cstdint>
#include <string>

#include "runtime/graph-runner.h"
#include "sd.h"

namespace sd {

// Throws InvalidArgument naming `name` for a channel count the option does not take or a buffer
// that does not hold width * height * channels bytes, or a size other than width x height.
void check_image_bytes(const std::string & name, const ImageBytes & image, int width, int height, bool one_channel);

// [1, 3, H, W] in [0, 1] (x / 255; gray fills all three channels).
HostTensor image_bytes_to_unit(const ImageBytes & image);

// [0, 1] -> [-1, 1] (the VAE's input range), in place.
void unit_to_signed(HostTensor & image);

}  // namespace sd
