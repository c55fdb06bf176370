#include "text/prompt.h"

#include <cmath>
#include <locale>
#include <sstream>

#include "core/errors.h"
#include "model/options.h"

namespace sd {
namespace {

constexpr float kRoundMultiplier = 1.1f;
constexpr float kSquareMultiplier = 1 / 1.1f;  // float division, as sd.cpp computes it

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// ECMAScript \w in the C locale: what sd.cpp's \bBREAK\b tests after the K.
bool is_word_char(char c) {
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

// Characters that end a plain-text run: sd.cpp's [^\\()\[\]:B]+ stops at each of them.
bool is_special(char c) {
    return c == '\\' || c == '(' || c == ')' || c == '[' || c == ']' || c == ':' || c == 'B';
}

std::string excerpt(const std::string & prompt) { return prompt.size() > 80 ? prompt.substr(0, 77) + "..." : prompt; }

// One rule for explicit weights and for the products of nested brackets.
void check_weight(double w, const std::string & prompt) {
    if (!(std::fabs(w) <= limits::kPromptWeightMax)) {
        std::ostringstream msg;
        msg << "prompt \"" << excerpt(prompt) << "\": an emphasis weight (explicit, or the product of nested brackets) of "
            << w << " is out of range; expected a magnitude of at most " << limits::kPromptWeightMax
            << " (at most 144 nested parentheses)";
        throw_invalid(msg.str());
    }
}

// `number` matched [+-]?[.0-9]+. Reads it as std::stof does: the longest prefix that is a
// decimal number ("1.2.3" reads 1.2); none at all ("." or "+..") is an error.
float parse_weight(const std::string & number, const std::string & prompt) {
    size_t i = 0;
    if (i < number.size() && (number[i] == '+' || number[i] == '-')) ++i;
    size_t digits = 0;
    while (i < number.size() && is_digit(number[i])) { ++i; ++digits; }
    if (i < number.size() && number[i] == '.') {
        ++i;
        while (i < number.size() && is_digit(number[i])) { ++i; ++digits; }
    }
    double value = 0.0;
    bool ok = digits > 0;
    if (ok) {
        // Classic locale: the decimal point is '.', whatever the process locale says.
        std::istringstream in(number.substr(0, i));
        in.imbue(std::locale::classic());
        in >> value;
        ok = !in.fail();
    }
    if (!ok) {
        throw_invalid("prompt \"" + prompt + "\": emphasis weight \"" + number +
                      "\" is not a number; expected e.g. (word:1.2)");
    }
    check_weight(value, prompt);
    return static_cast<float>(value);
}

}  // namespace

std::vector<PromptSegment> parse_prompt_attention(const std::string & prompt) {
    std::vector<PromptSegment> res;
    std::vector<size_t> round_starts;   // index into res where each open "(" began
    std::vector<size_t> square_starts;  // same for "["

    auto multiply_from = [&](size_t start, float multiplier) {
        for (size_t p = start; p < res.size(); ++p) {
            res[p].weight *= multiplier;
            check_weight(res[p].weight, prompt);
        }
    };
    auto push_text = [&](std::string text) { res.push_back({std::move(text), 1.0f}); };

    const size_t n = prompt.size();
    size_t pos = 0;
    // One token per step, tried in the order of sd.cpp's alternation. Every position matches
    // some alternative, so tokens are contiguous and nothing is skipped.
    while (pos < n) {
        const char c = prompt[pos];
        if (c == '\\') {
            const bool escape = pos + 1 < n && (prompt[pos + 1] == '(' || prompt[pos + 1] == ')' ||
                                                prompt[pos + 1] == '[' || prompt[pos + 1] == ']' ||
                                                prompt[pos + 1] == '\\');
            const std::string token = prompt.substr(pos, escape ? 2 : 1);
            pos += token.size();
            push_text(token == "\\(" ? std::string("(") : token);  // only "\(" loses its backslash
        } else if (c == '(') {
            round_starts.push_back(res.size());
            ++pos;
        } else if (c == '[') {
            square_starts.push_back(res.size());
            ++pos;
        } else if (c == ':') {
            // ":<number>)" closes the innermost "(" with that weight; otherwise ':' is text.
            size_t end = pos + 1;
            if (end < n && (prompt[end] == '+' || prompt[end] == '-')) ++end;
            const size_t body = end;
            while (end < n && (is_digit(prompt[end]) || prompt[end] == '.')) ++end;
            if (end > body && end < n && prompt[end] == ')') {
                const std::string number = prompt.substr(pos + 1, end - pos - 1);
                pos = end + 1;
                // Without an open "(" the whole ":1.3)" is dropped, as in sd.cpp.
                if (!round_starts.empty()) {
                    multiply_from(round_starts.back(), parse_weight(number, prompt));
                    round_starts.pop_back();
                }
            } else {
                push_text(":");
                ++pos;
            }
        } else if (c == ')') {
            if (!round_starts.empty()) {
                multiply_from(round_starts.back(), kRoundMultiplier);
                round_starts.pop_back();
            } else {
                push_text(")");
            }
            ++pos;
        } else if (c == ']') {
            if (!square_starts.empty()) {
                multiply_from(square_starts.back(), kSquareMultiplier);
                square_starts.pop_back();
            } else {
                push_text("]");
            }
            ++pos;
        } else if (c == 'B') {
            // Each 'B' starts a token, so the \b before BREAK always holds; the one after needs
            // a non-word character or the end.
            if (prompt.compare(pos, 5, "BREAK") == 0 && (pos + 5 == n || !is_word_char(prompt[pos + 5]))) {
                res.push_back({"BREAK", -1.0f});
                pos += 5;
            } else {
                push_text("B");
                ++pos;
            }
        } else {
            size_t end = pos;
            while (end < n && !is_special(prompt[end])) ++end;
            push_text(prompt.substr(pos, end - pos));
            pos = end;
        }
    }

    // Brackets never closed apply to everything after them.
    for (size_t start : round_starts) multiply_from(start, kRoundMultiplier);
    for (size_t start : square_starts) multiply_from(start, kSquareMultiplier);

    if (res.empty()) res.push_back({"", 1.0f});

    // Merge neighbours of exactly equal weight.
    std::vector<PromptSegment> merged;
    for (auto & seg : res) {
        if (!merged.empty() && merged.back().weight == seg.weight) {
            merged.back().text += seg.text;
        } else {
            merged.push_back(std::move(seg));
        }
    }
    return merged;
}

}  // namespace sd
