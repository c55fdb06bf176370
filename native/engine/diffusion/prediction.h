// What a UNet predicts: the noise (eps, SD1.x and most SD2.x/SDXL) or v (SD2.x 768-v models).
#pragma once

namespace sd {

enum class Prediction { Eps, V };

}  // namespace sd
