// A small, strict JSON reader for model headers and config files (safetensors headers,
// *.safetensors.index.json, diffusers config.json / model_index.json). Bounded nesting, checked
// escapes, numbers kept as text and as double. Throws JsonError with the byte offset.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace sd {

struct JsonError : std::runtime_error {
    JsonError(const std::string & what, size_t offset)
        : std::runtime_error(what + " at byte " + std::to_string(offset)), offset(offset) {}
    size_t offset;
};

struct JsonValue {
    enum class Type { Null, Bool, Number, String, Array, Object } type = Type::Null;
    bool boolean = false;
    double number = 0;
    std::string text;  // string value, or the number as written
    std::vector<JsonValue> items;
    std::vector<std::pair<std::string, JsonValue>> members;  // object members in file order

    bool is_object() const { return type == Type::Object; }
    bool is_array() const { return type == Type::Array; }
    bool is_string() const { return type == Type::String; }
    bool is_number() const { return type == Type::Number; }
    const JsonValue * get(const std::string & key) const;  // nullptr when absent or not an object
    // The number as a non-negative integer, if it is one exactly (no fraction, no exponent).
    bool as_uint64(uint64_t & out) const;
    // Compact JSON text of this value.
    std::string dump() const;
};

JsonValue parse_json(const char * data, size_t size, int max_depth = 64);
inline JsonValue parse_json(const std::string & s) { return parse_json(s.data(), s.size()); }

}  // namespace sd
