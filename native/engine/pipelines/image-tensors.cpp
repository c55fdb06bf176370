#include "pipelines/image-tensors.h"

#include "core/errors.h"

namespace sd {

void check_image_bytes(const std::string & name, const ImageBytes & image, int width, int height, bool one_channel) {
    if (one_channel ? image.channels != 1 : (image.channels != 1 && image.channels != 3 && image.channels != 4)) {
        throw_invalid(name + " must have " + (one_channel ? "1 channel" : "1, 3 or 4 channels") + "; received " +
                      std::to_string(image.channels));
    }
    if (image.width != width || image.height != height) {
        throw_invalid(name + " must be " + std::to_string(width) + "x" + std::to_string(height) + " (the image size); received " +
                      std::to_string(image.width) + "x" + std::to_string(image.height));
    }
    const size_t want = static_cast<size_t>(width) * height * image.channels;
    if (image.pixels.size() != want) {
        throw_invalid(name + " data must hold width * height * channels = " + std::to_string(want) + " bytes; received " +
                      std::to_string(image.pixels.size()));
    }
}

HostTensor image_bytes_to_unit(const ImageBytes & image) {
    const size_t n = static_cast<size_t>(image.width) * image.height;
    HostTensor t;
    t.ne[0] = image.width;
    t.ne[1] = image.height;
    t.ne[2] = 3;
    t.ne[3] = 1;
    t.data.resize(n * 3);
    const int ch = image.channels;
    for (int c = 0; c < 3; ++c) {
        const int src = ch == 1 ? 0 : c;
        for (size_t i = 0; i < n; ++i) t.data[c * n + i] = float(image.pixels[i * ch + src]) / 255.0f;
    }
    return t;
}

void unit_to_signed(HostTensor & image) {
    for (float & v : image.data) v = v * 2.0f - 1.0f;
}

}  // namespace sd
