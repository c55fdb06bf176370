// Prompt emphasis syntax, parsed the way stable-diffusion.cpp parses it (its port of
// AUTOMATIC1111's parse_prompt_attention), so the same prompt gives the same weights:
//
//   (text)       weight × 1.1          ((text)) × 1.21, and so on
//   (text:1.3)   weight × 1.3          a number the way std::stof reads [+-]?[.0-9]+
//   [text]       weight ÷ 1.1
//   BREAK        a segment {"BREAK", -1}: the tokenizer fills the current 75-token chunk
//   \(           a literal "("
//   anything else, including unbalanced brackets: brackets still open at the end apply to the
//   rest of the prompt; a stray ")" or "]" is kept as text.
//
// Deliberate sd.cpp parity, differing from A1111: only "\(" is unescaped. "\)", "\[", "\]" and
// "\\" stay in the text backslash and all, and "(x: 1.2)" (with spaces) is not a weight.
// Weights are float products, and adjacent segments with exactly equal weights are merged
// (so two BREAKs in a row merge into "BREAKBREAK", and a BREAK inside brackets gets a weight
// other than -1: both then read as plain text, as in sd.cpp).
#pragma once
#include <string>
#include <vector>

namespace sd {

struct PromptSegment {
    std::string text;
    float weight = 1.0f;
};

// Never empty: an empty prompt gives one segment {"", 1}.
// Throws sd::Error (InvalidArgument) for a weight that is not a number, e.g. "(cat:.)".
std::vector<PromptSegment> parse_prompt_attention(const std::string & prompt);

// The marker parse_prompt_attention emits for BREAK.
inline bool is_break_segment(const PromptSegment & s) { return s.weight == -1.0f && s.text == "BREAK"; }

}  // namespace sd
