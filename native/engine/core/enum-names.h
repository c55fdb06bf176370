// One table per enum maps values to the names the API uses ("euler_a", "karras", "cuda", ...);
// these helpers look names up both ways and word the error for an unknown name.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "core/errors.h"

namespace sd {

template <typename E>
struct EnumName {
    E value;
    const char * name;
};

template <typename E, size_t N>
const char * enum_name(const EnumName<E> (&table)[N], E value) {
    for (const auto & e : table)
        if (e.value == value) return e.name;
    return "?";
}

// `what` names the option in the error, e.g. "sampler".
template <typename E, size_t N>
E parse_enum(const EnumName<E> (&table)[N], const std::string & name, const char * what) {
    for (const auto & e : table)
        if (name == e.name) return e.value;
    std::string known;
    for (const auto & e : table) known += std::string(known.empty() ? "" : ", ") + e.name;
    throw_invalid(std::string(what) + " \"" + name + "\" is not known: expected one of " + known);
}

template <typename E, size_t N>
std::vector<E> enum_values(const EnumName<E> (&table)[N]) {
    std::vector<E> v;
    for (const auto & e : table) v.push_back(e.value);
    return v;
}

}  // namespace sd
