// What a UNet predicts: the noise (eps, SD1.x and most SD2.x/SDXL), v (SD2.x 768-v, v-pred SDXL
// fine-tunes) or v on an EDM noise schedule (CosXL: stable-diffusion.cpp's edm_v).
#pragma once
#include <string>
#include <vector>

namespace sd {

enum class Prediction { Eps, V, EdmV };

// The names the API uses ("eps", "v", "edm_v"): the `prediction` load option and model info.
const char * prediction_name(Prediction p);
Prediction parse_prediction(const std::string & name);  // throws InvalidArgument on an unknown name
std::vector<std::string> prediction_names();

}  // namespace sd
