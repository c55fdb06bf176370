#include "text/tokenizer.h"

#include "core/json.h"

#include <algorithm>

#include "core/errors.h"

namespace sd {
namespace {

constexpr int kMergeCount = kClipVocabSize - 256 - 256 - 2;  // 48894: the rest of the vocabulary
constexpr size_t kMaxCachedWords = 100000;                 // bounds the cache of a long-lived tokenizer
const char * const kEndOfWord = "</w>";
const char * const kStartOfText = "<|startoftext|>";
const char * const kEndOfText = "<|endoftext|>";


// The C locale's isspace, which is what sd.cpp's \s and [:space:] mean.
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Whitespace runs to one space, ends trimmed, ASCII lowercased.
std::string normalize(const std::string & text) {
    std::string out;
    out.reserve(text.size());
    bool pending_space = false;
    for (char c : text) {
        if (is_space(c)) {
            pending_space = !out.empty();
            continue;
        }
        if (pending_space) out += ' ';
        pending_space = false;
        out += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    }
    return out;
}

// sd.cpp's word pattern on normalized text:
//   's|'t|'re|'ve|'m|'ll|'d|[[:alpha:]]+|[[:digit:]]|[^[:space:][:alpha:][:digit:]]+
// tried in that order at each position; spaces match nothing and are skipped.
std::vector<std::string> split_words(const std::string & text) {
    static const char * const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    std::vector<std::string> words;
    const size_t n = text.size();
    size_t pos = 0;
    while (pos < n) {
        const char c = text[pos];
        if (is_space(c)) {
            ++pos;
            continue;
        }
        size_t end = pos;
        if (c == '\'') {
            for (const char * k : contractions) {
                const size_t len = std::char_traits<char>::length(k);
                if (text.compare(pos, len, k) == 0) {
                    end = pos + len;
                    break;
                }
            }
        }
        if (end == pos) {
            if (is_alpha(c)) {
                while (end < n && is_alpha(text[end])) ++end;
            } else if (is_digit(c)) {
                end = pos + 1;
            } else {
                while (end < n && !is_space(text[end]) && !is_alpha(text[end]) && !is_digit(text[end])) ++end;
            }
        }
        words.push_back(text.substr(pos, end - pos));
        pos = end;
    }
    return words;
}

}  // namespace

ClipTokenizer::ClipTokenizer(std::string_view merges_text, int32_t pad_token) : pad_token_(pad_token) {
    if (pad_token < 0 || pad_token >= kClipVocabSize) {
        throw_invalid("CLIP tokenizer: pad token " + std::to_string(pad_token) + " is outside the vocabulary [0, " +
                      std::to_string(kClipVocabSize) + ")");
    }

    // GPT-2/CLIP byte stand-ins: printable Latin-1 bytes stand for themselves, the others
    // (controls, space, 0x7F-0xA0, 0xAD) for U+0100 onwards, in byte order.
    std::vector<int> byte_order;
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    for (int b = 0; b < 256; ++b) {
        if (printable(b)) {
            byte_order.push_back(b);
            append_utf8(byte_char_[b], static_cast<uint32_t>(b));
        }
    }
    int shifted = 0;
    for (int b = 0; b < 256; ++b) {
        if (!printable(b)) {
            byte_order.push_back(b);
            append_utf8(byte_char_[b], static_cast<uint32_t>(256 + shifted++));
        }
    }

    // Merges: one "left right" per line, after an optional "#version" line.
    std::vector<std::string> merges;
    merges.reserve(kMergeCount);
    size_t line_start = 0;
    size_t line_number = 0;
    while (line_start < merges_text.size() && static_cast<int>(merges.size()) < kMergeCount) {
        size_t line_end = merges_text.find('\n', line_start);
        if (line_end == std::string::npos) line_end = merges_text.size();
        std::string line(merges_text.substr(line_start, line_end - line_start));
        line_start = line_end + 1;
        ++line_number;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line_number == 1 && line.find("#version") != std::string::npos) continue;
        const size_t space = line.find(' ');
        if (space == 0 || space == std::string::npos || space + 1 == line.size() ||
            line.find(' ', space + 1) != std::string::npos) {
            throw_invalid("CLIP merges, line " + std::to_string(line_number) + ": \"" + line +
                          "\" is not a merge; expected two symbols separated by one space, e.g. \"th e</w>\"");
        }
        merges.push_back(std::move(line));
    }
    if (static_cast<int>(merges.size()) < kMergeCount) {
        throw_invalid("CLIP merges: found " + std::to_string(merges.size()) + " merges, expected at least " +
                      std::to_string(kMergeCount) + " (the text of OpenAI's bpe_simple_vocab_16e6.txt)");
    }

    // Vocabulary: 256 byte symbols, the same with "</w>", one entry per merge, then the specials.
    vocab_.reserve(kClipVocabSize);
    for (int b : byte_order) vocab_.push_back(byte_char_[b]);
    for (int b : byte_order) vocab_.push_back(byte_char_[b] + kEndOfWord);
    for (int rank = 0; rank < kMergeCount; ++rank) {
        std::string merged = merges[rank];
        merged.erase(merged.find(' '), 1);
        vocab_.push_back(std::move(merged));
        merge_rank_[merges[rank]] = rank;
    }
    vocab_.push_back(kStartOfText);
    vocab_.push_back(kEndOfText);
    ids_.reserve(vocab_.size());
    for (size_t id = 0; id < vocab_.size(); ++id) ids_[vocab_[id]] = static_cast<int32_t>(id);  // a repeat keeps the last id, as CLIP's dict does
}

const std::string & ClipTokenizer::token_text(int32_t id) const {
    if (id < 0 || id >= static_cast<int32_t>(vocab_.size())) {
        throw_invalid("CLIP tokenizer: token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                      std::to_string(vocab_.size()) + ")");
    }
    return vocab_[id];
}

int32_t ClipTokenizer::token_id(const std::string & piece) const {
    auto it = ids_.find(piece);
    return it == ids_.end() ? -1 : it->second;
}

// Classic BPE: start from one symbol per byte (the last one marked "</w>"), then repeatedly
// merge every occurrence, left to right, of the adjacent pair with the lowest rank.
std::vector<int32_t> ClipTokenizer::bpe(const std::string & word) const {
    if (word.empty()) return {};
    std::vector<std::string> symbols;
    symbols.reserve(word.size());
    for (unsigned char b : word) symbols.push_back(byte_char_[b]);
    symbols.back() += kEndOfWord;

    while (symbols.size() > 1) {
        int best_rank = -1;
        size_t best = 0;
        for (size_t i = 0; i + 1 < symbols.size(); ++i) {
            auto it = merge_rank_.find(symbols[i] + ' ' + symbols[i + 1]);
            if (it != merge_rank_.end() && (best_rank < 0 || it->second < best_rank)) {
                best_rank = it->second;
                best = i;
            }
        }
        if (best_rank < 0) break;
        const std::string left = symbols[best];
        const std::string right = symbols[best + 1];
        std::vector<std::string> merged;
        merged.reserve(symbols.size());
        for (size_t i = 0; i < symbols.size();) {
            if (i + 1 < symbols.size() && symbols[i] == left && symbols[i + 1] == right) {
                merged.push_back(left + right);
                i += 2;
            } else {
                merged.push_back(std::move(symbols[i]));
                i += 1;
            }
        }
        symbols = std::move(merged);
    }

    std::vector<int32_t> ids;
    ids.reserve(symbols.size());
    for (const auto & s : symbols) {
        const int32_t id = token_id(s);
        ids.push_back(id >= 0 ? id : kClipEosToken);  // cannot happen with CLIP's merges; sd.cpp's UNK is EOS
    }
    return ids;
}

std::vector<int32_t> ClipTokenizer::word_ids(const std::string & word) const {
    {
        std::lock_guard<std::mutex> lock(cache_mutex_);
        auto it = cache_.find(word);
        if (it != cache_.end()) return it->second;
    }
    std::vector<int32_t> ids = bpe(word);
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kMaxCachedWords) cache_.clear();
    cache_.emplace(word, ids);
    return ids;
}

std::vector<int32_t> ClipTokenizer::encode(const std::string & text, const SpecialWords * specials) const {
    const std::string normalized = normalize(text);
    std::vector<int32_t> ids;
    auto encode_plain = [&](size_t from, size_t to) {
        if (to <= from) return;
        for (const auto & word : split_words(normalized.substr(from, to - from))) {
            const auto word_tokens = word_ids(word);
            ids.insert(ids.end(), word_tokens.begin(), word_tokens.end());
        }
    };
    // Special tokens written in the prompt are cut out first: the two CLIP specials keep their
    // ids, special words get theirs from `resolve`. next[i]: where word i occurs next, at or
    // after the scan position (npos: nowhere), found again only once the scan has passed it.
    const size_t n_words = specials ? specials->words.size() : 0;
    std::vector<const std::string *> words = {nullptr, nullptr};
    const std::string sot = kStartOfText, eot = kEndOfText;
    words[0] = &sot;
    words[1] = &eot;
    for (size_t i = 0; i < n_words; ++i) words.push_back(&specials->words[i]);
    std::vector<size_t> next(words.size(), 0);
    std::vector<bool> stale(words.size(), true);
    size_t pos = 0;
    while (pos < normalized.size()) {
        size_t best = std::string::npos, best_at = std::string::npos;
        for (size_t i = 0; i < words.size(); ++i) {
            if (words[i]->empty()) continue;
            if (stale[i] || (next[i] != std::string::npos && next[i] < pos)) {
                next[i] = normalized.find(*words[i], pos);
                stale[i] = false;
            }
            const size_t at = next[i];
            if (at == std::string::npos) continue;
            if (at < best_at || (at == best_at && words[i]->size() > words[best]->size())) {
                best_at = at;
                best = i;
            }
        }
        if (best == std::string::npos) {
            encode_plain(pos, normalized.size());
            break;
        }
        encode_plain(pos, best_at);
        if (best == 0) {
            ids.push_back(kClipBosToken);
        } else if (best == 1) {
            ids.push_back(kClipEosToken);
        } else {
            const std::vector<int32_t> custom = specials->resolve(best - 2);
            ids.insert(ids.end(), custom.begin(), custom.end());
        }
        pos = best_at + words[best]->size();
    }
    return ids;
}

std::vector<std::string> ClipTokenizer::pieces(const std::string & text) const {
    std::vector<std::string> out;
    for (int32_t id : encode(text)) out.push_back(vocab_[id]);
    return out;
}

WeightedTokens ClipTokenizer::tokenize(const std::string & prompt, const SpecialWords * specials) const {
    return tokenize(parse_prompt_attention(prompt), specials);
}

WeightedTokens ClipTokenizer::tokenize(const std::vector<PromptSegment> & segments, const SpecialWords * specials) const {
    // The prompt's tokens, without BOS/EOS.
    std::vector<int32_t> body;
    std::vector<float> body_weights;
    for (const auto & seg : segments) {
        if (is_break_segment(seg)) {
            // Fill the current chunk with EOS (always 49407, whatever the pad token) so the
            // next text starts a new one. Nothing to fill at a chunk boundary.
            const size_t fill = (kClipChunkTokens - body.size() % kClipChunkTokens) % kClipChunkTokens;
            body.insert(body.end(), fill, kClipEosToken);
            body_weights.insert(body_weights.end(), fill, 1.0f);
            continue;
        }
        const auto ids = encode(seg.text, specials);
        body.insert(body.end(), ids.begin(), ids.end());
        body_weights.insert(body_weights.end(), ids.size(), seg.weight);
    }

    // Chunks of 75: BOS, tokens, EOS, padding to 77. An empty prompt still gives one chunk.
    const size_t chunks = std::max<size_t>(1, (body.size() + kClipChunkTokens - 1) / kClipChunkTokens);
    WeightedTokens out;
    out.tokens.reserve(chunks * kClipChunkLength);
    out.weights.reserve(chunks * kClipChunkLength);
    for (size_t c = 0; c < chunks; ++c) {
        const size_t begin = c * kClipChunkTokens;
        const size_t end = std::min(body.size(), begin + kClipChunkTokens);
        out.tokens.push_back(kClipBosToken);
        out.weights.push_back(1.0f);
        out.tokens.insert(out.tokens.end(), body.begin() + begin, body.begin() + end);
        out.weights.insert(out.weights.end(), body_weights.begin() + begin, body_weights.begin() + end);
        out.tokens.push_back(kClipEosToken);
        out.weights.push_back(1.0f);
        const size_t pad = (c + 1) * kClipChunkLength - out.tokens.size();
        out.tokens.insert(out.tokens.end(), pad, pad_token_);
        out.weights.insert(out.weights.end(), pad, 1.0f);
    }
    return out;
}

// ------------------------------------------------------------------ built-in vocabulary

// scripts/clip-vocab.mjs writes these at configure time (CMakeLists.txt).
extern const char kClipMergesText[];
extern const size_t kClipMergesSize;

std::string_view clip_merges() { return std::string_view(kClipMergesText, kClipMergesSize); }

const ClipTokenizer & clip_tokenizer(int32_t pad_token) {
    // Built once per pad token and shared by every model: the vocabulary is the same.
    static const ClipTokenizer eos_padded(clip_merges(), kClipEosToken);
    static const ClipTokenizer zero_padded(clip_merges(), 0);
    if (pad_token == kClipEosToken) return eos_padded;
    if (pad_token == 0) return zero_padded;
    throw_invalid("CLIP tokenizer: pad token " + std::to_string(pad_token) + " is not one SD uses (49407 or 0)");
}

}  // namespace sd
