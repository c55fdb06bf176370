#include "core/json.h"

#include <cmath>
#include <cstdio>
#include <locale>
#include <sstream>

#include "core/errors.h"

namespace sd {

namespace {
constexpr int kMaxDepth = 128;  // config files nest a few levels; deeper is hostile input
}

class JsonParser {
public:
    JsonParser(const char * data, size_t size, const std::string & source)
        : p_(data), size_(size), source_(source) {}

    JsonValue parse_document() {
        skip_ws();
        JsonValue v = parse_value(0);
        skip_ws();
        if (pos_ != size_) fail("unexpected " + describe_here() + " after the JSON value");
        return v;
    }

private:
    const char * p_;
    size_t size_;
    size_t pos_ = 0;
    const std::string & source_;

    [[noreturn]] void fail(const std::string & what) const {
        throw_format(source_, "invalid JSON at byte " + std::to_string(pos_) + ": " + what);
    }

    std::string describe_here() const {
        if (pos_ >= size_) return "end of text";
        unsigned char c = (unsigned char)p_[pos_];
        if (c >= 0x20 && c < 0x7f) return std::string("'") + (char)c + "'";
        char buf[16];
        std::snprintf(buf, sizeof buf, "byte 0x%02x", c);
        return buf;
    }

    void skip_ws() {
        while (pos_ < size_ && (p_[pos_] == ' ' || p_[pos_] == '\t' || p_[pos_] == '\n' || p_[pos_] == '\r')) ++pos_;
    }

    bool at(char c) const { return pos_ < size_ && p_[pos_] == c; }

    void expect_word(const char * word) {
        for (const char * w = word; *w; ++w, ++pos_) {
            if (!at(*w)) fail(std::string("expected '") + word + "', found " + describe_here());
        }
    }

    JsonValue parse_value(int depth) {
        if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth) + " levels");
        if (pos_ >= size_) fail("expected a value, found end of text");
        JsonValue v;
        switch (p_[pos_]) {
            case '{': parse_object(v, depth); break;
            case '[': parse_array(v, depth); break;
            case '"': v.kind_ = JsonValue::Kind::String; v.text_ = parse_string(); break;
            case 't': expect_word("true"); v.kind_ = JsonValue::Kind::Bool; v.bool_ = true; break;
            case 'f': expect_word("false"); v.kind_ = JsonValue::Kind::Bool; v.bool_ = false; break;
            case 'n': expect_word("null"); break;
            default:
                if (p_[pos_] == '-' || (p_[pos_] >= '0' && p_[pos_] <= '9')) parse_number(v);
                else fail("expected a value, found " + describe_here());
        }
        return v;
    }

    void parse_object(JsonValue & v, int depth) {
        v.kind_ = JsonValue::Kind::Object;
        ++pos_;  // '{'
        skip_ws();
        if (at('}')) { ++pos_; return; }
        for (;;) {
            skip_ws();
            if (!at('"')) fail("expected a member name in quotes, found " + describe_here());
            std::string key = parse_string();
            skip_ws();
            if (!at(':')) fail("expected ':' after member name, found " + describe_here());
            ++pos_;
            skip_ws();
            v.members_.emplace_back(std::move(key), parse_value(depth + 1));
            skip_ws();
            if (at(',')) { ++pos_; continue; }
            if (at('}')) { ++pos_; return; }
            fail("expected ',' or '}' in object, found " + describe_here());
        }
    }

    void parse_array(JsonValue & v, int depth) {
        v.kind_ = JsonValue::Kind::Array;
        ++pos_;  // '['
        skip_ws();
        if (at(']')) { ++pos_; return; }
        for (;;) {
            skip_ws();
            v.items_.push_back(parse_value(depth + 1));
            skip_ws();
            if (at(',')) { ++pos_; continue; }
            if (at(']')) { ++pos_; return; }
            fail("expected ',' or ']' in array, found " + describe_here());
        }
    }

    void parse_number(JsonValue & v) {
        size_t start = pos_;
        auto digits = [&]() {
            size_t n = 0;
            while (pos_ < size_ && p_[pos_] >= '0' && p_[pos_] <= '9') { ++pos_; ++n; }
            return n;
        };
        if (at('-')) ++pos_;
        if (at('0')) ++pos_;
        else if (digits() == 0) fail("expected digits in number, found " + describe_here());
        if (at('.')) {
            ++pos_;
            if (digits() == 0) fail("expected digits after '.', found " + describe_here());
        }
        if (at('e') || at('E')) {
            ++pos_;
            if (at('+') || at('-')) ++pos_;
            if (digits() == 0) fail("expected exponent digits, found " + describe_here());
        }
        v.kind_ = JsonValue::Kind::Number;
        v.text_.assign(p_ + start, pos_ - start);
        // strtod would follow the process locale (a ',' decimal point under some); JSON never does.
        std::istringstream in(v.text_);
        in.imbue(std::locale::classic());
        in >> v.number_;
        if (in.fail()) v.number_ = v.text_[0] == '-' ? -HUGE_VAL : HUGE_VAL;  // out of double range
    }

    unsigned hex4() {
        if (size_ - pos_ < 4) fail("truncated \\u escape");
        unsigned cp = 0;
        for (int i = 0; i < 4; ++i, ++pos_) {
            char c = p_[pos_];
            cp <<= 4;
            if (c >= '0' && c <= '9') cp |= unsigned(c - '0');
            else if (c >= 'a' && c <= 'f') cp |= unsigned(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') cp |= unsigned(c - 'A' + 10);
            else fail("bad hex digit in \\u escape: " + describe_here());
        }
        return cp;
    }

    std::string parse_string() {
        ++pos_;  // opening quote
        std::string out;
        for (;;) {
            if (pos_ >= size_) fail("unterminated string");
            unsigned char c = (unsigned char)p_[pos_];
            if (c == '"') { ++pos_; return out; }
            if (c < 0x20) fail("control character in string: " + describe_here());
            if (c != '\\') { out += char(c); ++pos_; continue; }
            ++pos_;
            if (pos_ >= size_) fail("unterminated escape");
            char e = p_[pos_++];
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
                    unsigned cp = hex4();
                    if (cp >= 0xD800 && cp < 0xDC00) {  // high surrogate: a low one must follow
                        if (size_ - pos_ < 2 || p_[pos_] != '\\' || p_[pos_ + 1] != 'u') fail("unpaired surrogate in \\u escape");
                        pos_ += 2;
                        unsigned lo = hex4();
                        if (lo < 0xDC00 || lo >= 0xE000) fail("unpaired surrogate in \\u escape");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (cp >= 0xDC00 && cp < 0xE000) {
                        fail("unpaired surrogate in \\u escape");
                    }
                    append_utf8(out, cp);
                    break;
                }
                default: --pos_; fail("unknown escape \\" + describe_here());
            }
        }
    }
};

bool JsonValue::as_uint64(uint64_t & out) const {
    if (kind_ != Kind::Number || text_.empty()) return false;
    uint64_t v = 0;
    for (char c : text_) {
        if (c < '0' || c > '9') return false;
        unsigned d = unsigned(c - '0');
        if (v > (UINT64_MAX - d) / 10) return false;
        v = v * 10 + d;
    }
    out = v;
    return true;
}

const JsonValue * JsonValue::get(const std::string & key) const {
    for (const auto & m : members_) if (m.first == key) return &m.second;
    return nullptr;
}

std::string json_quote(const std::string & s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += char(c);
                }
        }
    }
    return out + "\"";
}

std::string format_number(double v, int digits) {
    if (v != v) return "nan";
    if (v == HUGE_VAL) return "inf";
    if (v == -HUGE_VAL) return "-inf";
    std::ostringstream out;
    out.imbue(std::locale::classic());
    out.precision(digits);
    out << v;
    return out.str();
}

std::string JsonValue::dump() const {
    switch (kind_) {
        case Kind::Null: return "null";
        case Kind::Bool: return bool_ ? "true" : "false";
        case Kind::Number: return text_;
        case Kind::String: return json_quote(text_);
        case Kind::Array: {
            std::string out = "[";
            for (size_t i = 0; i < items_.size(); ++i) out += (i ? "," : "") + items_[i].dump();
            return out + "]";
        }
        case Kind::Object: {
            std::string out = "{";
            for (size_t i = 0; i < members_.size(); ++i)
                out += (i ? "," : "") + json_quote(members_[i].first) + ":" + members_[i].second.dump();
            return out + "}";
        }
    }
    return "null";
}

JsonValue parse_json(const char * data, size_t size, const std::string & source) {
    return JsonParser(data, size, source).parse_document();
}

void append_utf8(std::string & out, uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
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

}  // namespace sd
