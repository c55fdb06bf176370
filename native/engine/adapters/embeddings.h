// Textual-inversion embeddings: files of learned token vectors, each used in a prompt through its
// trigger word, as stable-diffusion.cpp's --embd-dir (conditioner.hpp, load_embedding).
//
// Formats, read with open_model_file (safetensors, GGUF, PyTorch zip through the restricted
// unpickler), any float type, kept as f32:
//   - A1111 `.pt`: {"string_to_param": {"*": [n, dim]}, ...} -> tensor "string_to_param.*"
//   - safetensors `emb_params` [n, dim]
//   - SDXL pairs `clip_l` [n, 768] + `clip_g` [n, 1280]: each encoder gets its own rows
//   - otherwise a file holding exactly one float tensor, [n, dim] or [dim]
// n is the number of vectors: each occurrence of the trigger becomes n tokens.
//
// Which rows an encoder gets: with `clip_l` / `clip_g`, SDXL's CLIP-L takes clip_l and bigG (also
// the refiner's) clip_g; SD1.x / SD2.x the one whose width is theirs. A single tensor goes to the
// encoder of its width (SDXL: CLIP-L first, as the reference checks it first). On SDXL an
// embedding for one encoder only (an SD1.x one: 768 wide) leaves the other encoder zero rows at
// those tokens. The reference accepts such files too, but then reads the other encoder's rows past
// the end of its buffer; zeros are our choice. Width mismatches are ModelFormat errors naming the
// file, the tensor, its width and the expected one (the reference logs them at debug level and
// puts token 0 in the trigger's place), as are unreadable files (the reference logs an error).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "components/text-encoder.h"
#include "text/tokenizer.h"

namespace sd {

class Model;

// One generation's extra embedding: `trigger` empty = the file name without its extension.
struct EmbeddingRef {
    std::string path;
    std::string trigger;
};

// The file extensions an embeddings folder's files are taken with (lowercase compare).
const std::vector<std::string> & embedding_extensions();

// A tensor of an embedding file: `count` vectors of `width` floats.
struct EmbeddingTensor {
    std::string name;
    int64_t width = 0, count = 0;
    std::vector<float> data;  // count * width
};

struct EmbeddingFile {
    std::string path;
    std::vector<EmbeddingTensor> tensors;  // `clip_l` and/or `clip_g`, or the one embedding tensor
    bool sdxl_pair = false;                // named clip_l / clip_g
};

// Reads and checks an embedding file. Throws Io (cannot open), ModelFormat (corrupt, truncated,
// empty, no embedding tensor, a tensor of no vectors or the wrong rank), UnsupportedModel (a
// non-float type).
EmbeddingFile read_embedding_file(const std::string & path);

// Embedding files read so far, by path, each kept while its size and modification time stay as
// they were (a changed file is read again). One per model, shared by its sessions; thread-safe.
class EmbeddingCache {
public:
    std::shared_ptr<const EmbeddingFile> get(const std::string & path);
    size_t size() const;

private:
    struct Entry {
        uint64_t size = 0;
        int64_t mtime_ns = 0;
        std::shared_ptr<const EmbeddingFile> file;
    };
    mutable std::mutex mutex_;
    std::map<std::string, Entry> entries_;
};

// A trigger word and its file.
struct EmbeddingTrigger {
    std::string trigger;  // lowercased
    std::string path;
};

// The triggers of one generation: every file of `dir` (when not empty) with a supported
// extension, trigger = its stem, then `extra` (which replaces a folder trigger of the same
// word). Where two folder files share a stem the extension first in embedding_extensions() wins.
// Throws Io for a folder that is missing or unreadable, or an `extra` path that is not a file;
// InvalidArgument for an empty path or trigger.
std::vector<EmbeddingTrigger> list_embeddings(const std::string & dir, const std::vector<EmbeddingRef> & extra);

// The custom tokens of one generation (its prompt and negative prompt share them, as in the
// reference): a trigger's file is read (through the model's cache) and checked against the
// model's text encoders when the tokenizer first meets it; its vectors get the next ids past the
// vocabulary, and later occurrences reuse them.
class PromptEmbeddings {
public:
    PromptEmbeddings(const Model & model, std::vector<EmbeddingTrigger> triggers);
    PromptEmbeddings(const PromptEmbeddings &) = delete;
    PromptEmbeddings & operator=(const PromptEmbeddings &) = delete;

    // For ClipTokenizer::tokenize; null when there are no triggers.
    const SpecialWords * special_words() const { return words_.words.empty() ? nullptr : &words_; }
    // The custom rows of the model's text encoder `index` (0: text_encoder(), 1: text_encoder_2()),
    // null while no trigger was met.
    const CustomTokens * custom(size_t index) const;
    // The triggers met so far, in order.
    const std::vector<std::string> & used() const { return used_; }

private:
    std::vector<int32_t> resolve(size_t trigger);

    const Model & model_;
    std::vector<EmbeddingTrigger> triggers_;
    SpecialWords words_;
    std::vector<CustomTokens> rows_;             // per text encoder
    std::map<size_t, std::vector<int32_t>> ids_;  // trigger -> its ids
    std::vector<std::string> used_;
};

}  // namespace sd
