// A small, strict JSON reader (RFC 8259) for model headers and config files: safetensors headers,
// config.json, model_index.json, *.safetensors.index.json. Parses into a tiny DOM. Bounded
// nesting depth, no recursion on untrusted sizes, every byte access checked.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace sd {

class JsonValue {
public:
    enum class Kind { Null, Bool, Number, String, Array, Object };

    Kind kind() const { return kind_; }
    bool is_null() const { return kind_ == Kind::Null; }
    bool is_bool() const { return kind_ == Kind::Bool; }
    bool is_number() const { return kind_ == Kind::Number; }
    bool is_string() const { return kind_ == Kind::String; }
    bool is_array() const { return kind_ == Kind::Array; }
    bool is_object() const { return kind_ == Kind::Object; }

    bool as_bool() const { return bool_; }
    double as_double() const { return number_; }
    // Numbers keep their source text so large integers stay exact.
    const std::string & number_text() const { return text_; }
    // True when the number is a plain non-negative integer (no sign, fraction or exponent)
    // that fits uint64; stores it in `out`.
    bool as_uint64(uint64_t & out) const;
    const std::string & as_string() const { return text_; }

    const std::vector<JsonValue> & items() const { return items_; }                           // arrays
    const std::vector<std::pair<std::string, JsonValue>> & members() const { return members_; }  // objects, source order
    const JsonValue * get(const std::string & key) const;  // first member named `key`, or null

    // Compact JSON text of this value (objects keep source order).
    std::string dump() const;

private:
    friend class JsonParser;
    Kind kind_ = Kind::Null;
    bool bool_ = false;
    double number_ = 0;
    std::string text_;  // string value, or number source text
    std::vector<JsonValue> items_;
    std::vector<std::pair<std::string, JsonValue>> members_;
};

// Parses a whole document (surrounding whitespace allowed, nothing else). Throws sd::Error
// (ModelFormat) naming `source` (a file path, or "file: what") and the byte offset of the problem.
JsonValue parse_json(const char * data, size_t size, const std::string & source);
inline JsonValue parse_json(const std::string & text, const std::string & source) {
    return parse_json(text.data(), text.size(), source);
}

// `s` as a JSON string literal, quotes included.
std::string json_quote(const std::string & s);

// Appends code point `cp` (<= 0x10FFFF) as UTF-8; shared by the JSON and JS-string readers.
void append_utf8(std::string & out, uint32_t cp);

// Locale-independent number text ('.' as decimal point whatever the process locale), with
// `digits` significant digits; nan/inf come out as "nan"/"inf"/"-inf".
std::string format_number(double v, int digits);

}  // namespace sd
