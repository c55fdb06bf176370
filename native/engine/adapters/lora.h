// LoRA-family adapters: kohya / A1111 (lora_unet_*, lora_te*_*), diffusers and PEFT names
// (lora_A / lora_B, lora.down / lora.up, with or without unet. / text_encoder. prefixes), LyCORIS
// LoCon (convolutions, Tucker mid), LoHa (hada_*), LoKr (lokr_*), full diffs (diff, diff_b), alpha
// and DoRA (dora_scale / lora_magnitude_vector), in any file format the model readers take.
//
//   open_lora(path, model)   the file parsed against a model: every module mapped to the canonical
//                            weight it adapts, its delta's shape checked against that weight
//   LoraState::activate()    a set of (file, weight) made active on a session's runner, merged into
//                            copies of the weights it touches or added at run time
//
// Deltas, per module (torch layout, W [out, in(, kh, kw)]):
//   lora:  dW = up @ down                            up [out, r], down [r, in*kh*kw]
//          Tucker: dW[o,c,k,l] = sum up[o,i] mid[i,j,k,l] down[j,c]
//   loha:  dW = (w1_a @ w1_b) * (w2_a @ w2_b)        element-wise; Tucker t1/t2 as lora's mid
//   lokr:  dW = kron(w1, w2)                         w1 = w1_a @ w1_b when decomposed, w2 likewise
//   diff:  dW = diff (and diff_b for the bias)
//   scale = alpha / rank (lora: a stored `scale` wins; lokr: 1 when not decomposed), times the
//   LoRA's weight. DoRA: W' = m * (W + s dW) / ||W + s dW|| (the norm per output row, or per input
//   column when the magnitude has the input's size), applied as W + weight * (W' - W) (ComfyUI's
//   strength; stable-diffusion.cpp leaves dora_scale unapplied).
//
// The model's own weights are never written: merged weights are copies (the LoRA's memory cost
// is the bytes of the weights it touches), so any change of set gives back exactly the base
// model's numbers, and weights no LoRA touches stay mapped from the file.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "ggml-cpp.h"
#include "io/model-file.h"
#include "model/names.h"
#include "model/options.h"
#include "nn/blocks.h"

namespace sd {

class Model;
class GraphRunner;

// One module of a LoRA file: the stored tensors that adapt one weight, by role ("lora_down",
// "lora_up", "lora_mid", "alpha", "scale", "dora_scale", "hada_w1_a", ..., "lokr_w1", ...,
// "diff").
struct LoraModule {
    std::string key;          // as stored, without the role suffix
    Component component = Component::Unet;
    std::string target;       // canonical tensor name ("...weight" or, for diff_b, "...bias")
    std::vector<int64_t> target_shape;
    std::string kind;         // "lora", "locon", "loha", "lokr", "diff"
    int rank = 0;             // 0 for full diffs
    bool dora = false;
    std::map<std::string, const TensorRecord *> parts;
};

// What a LoRA file holds for one model.
struct LoraFile {
    std::string path;
    ModelFile file;
    std::string naming;             // "kohya", "diffusers", "peft", "ldm", mixed as "kohya+peft"
    std::vector<LoraModule> modules;
    // Stored tensors that adapt nothing in this model, with why (no such layer, an unknown role).
    std::vector<std::pair<std::string, std::string>> ignored;
    std::vector<std::string> kinds;  // distinct module kinds, and "dora" when present
    int rank_min = 0, rank_max = 0;
};

// Parses `path` for `model`: names mapped (model/names.h canonical, diffusers UNet names through
// the model's block layout), each module's delta shape checked against its target. Throws Io,
// ModelFormat (corrupt or truncated; a module whose factors do not fit its target, naming the
// tensor, its shape and the target's), InvalidArgument when no tensor of the file adapts the model.
std::shared_ptr<const LoraFile> open_lora(const std::string & path, const Model & model);

// The same without a model: roles and component prefixes only (targets are the stored keys).
struct LoraReport {
    std::string path, format, naming;
    std::vector<std::string> kinds;
    int rank_min = 0, rank_max = 0;
    size_t tensor_count = 0;
    struct Target {
        std::string key, component, target, kind;
        int rank = 0;
        std::vector<int64_t> shape;  // the target's (with a model), else empty
    };
    std::vector<Target> targets;
    std::vector<std::pair<std::string, std::string>> ignored;
    std::vector<std::pair<std::string, std::string>> metadata;
};
LoraReport inspect_lora(const std::string & path, const Model * model);

enum class LoraApply { Auto, Merge, Runtime };  // kLoraApplyNames (model/options.h) in this order
LoraApply parse_lora_apply(const std::string & name);  // throws InvalidArgument listing the names
const char * lora_apply_name(LoraApply a);
// What `auto` picks for a model: merge into float weights, at run time when any weight a LoRA can
// touch is quantized (stable-diffusion.cpp's rule).
LoraApply resolve_lora_apply(const Model & model, LoraApply requested);

struct LoraRequest {
    std::string path;
    double weight = 1.0;  // as asked (reported back as given); applied as a float
};

// What one run's LoRAs were: the mode used and how long making them active took (0 when the set
// was already active).
struct LoraActivation {
    LoraApply mode = LoraApply::Merge;
    double apply_ms = 0;
    bool reused = false;
    uint64_t bytes = 0;                // merged copies and run-time factors
    std::vector<std::string> warnings; // ignored tensors, per file
};

// A session's LoRAs: the parsed files (cached by path while unchanged on disk) and the active set.
class LoraState {
public:
    LoraState();
    ~LoraState();
    // Makes `requests` (weight 0 entries dropped) the runner's weight adapter, building it unless
    // the same set (files, weights, mode) is already active; none: no adapter. On the session's
    // thread. Throws as open_lora, OutOfMemory, Aborted.
    LoraActivation activate(const Model & model, GraphRunner & runner, const std::vector<LoraRequest> & requests,
                            LoraApply mode, int threads, const std::atomic<bool> * abort);
    uint64_t bytes() const;  // held by the active set

private:
    struct Cached;
    class Applied;
    std::map<std::string, std::shared_ptr<Cached>> files_;
    std::unique_ptr<Applied> active_;
    std::string active_spec_;
};

}  // namespace sd
