#include "json.h"

#include <cstdlib>
#include <cstring>

namespace sd {

namespace {

class Parser {
public:
    Parser(const char * data, size_t size, int max_depth) : p_(data), begin_(data), end_(data + size), max_depth_(max_depth) {}

    JsonValue document() {
        JsonValue v = value(0);
        skip_ws();
        if (p_ != end_) fail("unexpected data after the JSON value");
        return v;
    }

private:
    [[noreturn]] void fail(const std::string & what) const { throw JsonError(what, static_cast<size_t>(p_ - begin_)); }

    void skip_ws() {
        while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
    }

    bool consume(const char * word) {
        size_t n = std::strlen(word);
        if (static_cast<size_t>(end_ - p_) >= n && std::memcmp(p_, word, n) == 0) {
            p_ += n;
            return true;
        }
        return false;
    }

    JsonValue value(int depth) {
        if (depth > max_depth_) fail("JSON nested too deeply");
        skip_ws();
        if (p_ >= end_) fail("unexpected end of JSON");
        JsonValue v;
        switch (*p_) {
            case '{': object(v, depth); break;
            case '[': array(v, depth); break;
            case '"': v.type = JsonValue::Type::String; v.text = string(); break;
            case 't': if (!consume("true")) fail("invalid literal"); v.type = JsonValue::Type::Bool; v.boolean = true; break;
            case 'f': if (!consume("false")) fail("invalid literal"); v.type = JsonValue::Type::Bool; break;
            case 'n': if (!consume("null")) fail("invalid literal"); break;
            default: number(v); break;
        }
        return v;
    }

    void object(JsonValue & v, int depth) {
        v.type = JsonValue::Type::Object;
        ++p_;
        skip_ws();
        if (p_ < end_ && *p_ == '}') { ++p_; return; }
        for (;;) {
            skip_ws();
            if (p_ >= end_ || *p_ != '"') fail("expected a string key");
            std::string key = string();
            skip_ws();
            if (p_ >= end_ || *p_ != ':') fail("expected ':'");
            ++p_;
            v.members.emplace_back(std::move(key), value(depth + 1));
            skip_ws();
            if (p_ >= end_) fail("unexpected end of JSON in an object");
            if (*p_ == ',') { ++p_; continue; }
            if (*p_ == '}') { ++p_; return; }
            fail("expected ',' or '}'");
        }
    }

    void array(JsonValue & v, int depth) {
        v.type = JsonValue::Type::Array;
        ++p_;
        skip_ws();
        if (p_ < end_ && *p_ == ']') { ++p_; return; }
        for (;;) {
            v.items.push_back(value(depth + 1));
            skip_ws();
            if (p_ >= end_) fail("unexpected end of JSON in an array");
            if (*p_ == ',') { ++p_; continue; }
            if (*p_ == ']') { ++p_; return; }
            fail("expected ',' or ']'");
        }
    }

    static void append_utf8(std::string & out, uint32_t cp) {
        if (cp < 0x80) out += static_cast<char>(cp);
        else if (cp < 0x800) { out += static_cast<char>(0xC0 | (cp >> 6)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
        else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        }
    }

    uint32_t hex4() {
        if (end_ - p_ < 4) fail("truncated \\u escape");
        uint32_t v = 0;
        for (int i = 0; i < 4; ++i, ++p_) {
            char c = *p_;
            v <<= 4;
            if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
            else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
            else fail("invalid \\u escape");
        }
        return v;
    }

    std::string string() {
        ++p_;  // opening quote
        std::string out;
        for (;;) {
            if (p_ >= end_) fail("unterminated string");
            char c = *p_++;
            if (c == '"') return out;
            if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
            if (c != '\\') { out += c; continue; }
            if (p_ >= end_) fail("unterminated escape");
            char e = *p_++;
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    uint32_t cp = hex4();
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        if (end_ - p_ >= 6 && p_[0] == '\\' && p_[1] == 'u') {
                            p_ += 2;
                            uint32_t lo = hex4();
                            if (lo < 0xDC00 || lo > 0xDFFF) fail("invalid surrogate pair");
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        } else {
                            fail("unpaired surrogate");
                        }
                    }
                    append_utf8(out, cp);
                    break;
                }
                default: fail("invalid escape");
            }
        }
    }

    void number(JsonValue & v) {
        const char * start = p_;
        if (p_ < end_ && *p_ == '-') ++p_;
        auto digits = [&] {
            const char * d = p_;
            while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
            return p_ > d;
        };
        if (!digits()) fail("invalid value");
        if (p_ < end_ && *p_ == '.') { ++p_; if (!digits()) fail("invalid number"); }
        if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
            ++p_;
            if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
            if (!digits()) fail("invalid number");
        }
        v.type = JsonValue::Type::Number;
        v.text.assign(start, p_);
        v.number = std::strtod(v.text.c_str(), nullptr);
    }

    const char * p_;
    const char * begin_;
    const char * end_;
    int max_depth_;
};

void dump_string(std::string & out, const std::string & s) {
    out += '"';
    for (char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (static_cast<unsigned char>(c) < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += c;
                }
        }
    }
    out += '"';
}

void dump_value(std::string & out, const JsonValue & v) {
    switch (v.type) {
        case JsonValue::Type::Null: out += "null"; break;
        case JsonValue::Type::Bool: out += v.boolean ? "true" : "false"; break;
        case JsonValue::Type::Number: out += v.text; break;
        case JsonValue::Type::String: dump_string(out, v.text); break;
        case JsonValue::Type::Array:
            out += '[';
            for (size_t i = 0; i < v.items.size(); ++i) { if (i) out += ','; dump_value(out, v.items[i]); }
            out += ']';
            break;
        case JsonValue::Type::Object:
            out += '{';
            for (size_t i = 0; i < v.members.size(); ++i) {
                if (i) out += ',';
                dump_string(out, v.members[i].first);
                out += ':';
                dump_value(out, v.members[i].second);
            }
            out += '}';
            break;
    }
}

}  // namespace

const JsonValue * JsonValue::get(const std::string & key) const {
    if (type != Type::Object) return nullptr;
    for (const auto & m : members) if (m.first == key) return &m.second;
    return nullptr;
}

bool JsonValue::as_uint64(uint64_t & out) const {
    if (type != Type::Number || text.empty() || text.size() > 19) return false;
    uint64_t v = 0;
    for (char c : text) {
        if (c < '0' || c > '9') return false;
        v = v * 10 + static_cast<uint64_t>(c - '0');
    }
    out = v;
    return true;
}

std::string JsonValue::dump() const {
    std::string out;
    dump_value(out, *this);
    return out;
}

JsonValue parse_json(const char * data, size_t size, int max_depth) { return Parser(data, size, max_depth).document(); }

}  // namespace sd
