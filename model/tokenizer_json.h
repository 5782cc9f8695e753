// Helpers for reading tokenizer.json with nlohmann::json: typed field getters that return
// INVALID_ARGUMENT naming the field path ("model.merges[3]") instead of throwing. Internal to the
// tokenizer library (model/tokenizer*.cc). Stateless; thread-safe.
#ifndef KVC_MODEL_TOKENIZER_JSON_H_
#define KVC_MODEL_TOKENIZER_JSON_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace kvc::tokenizer_internal {

using Json = nlohmann::json;

// The pinned Abseil has its own absl::string_view (not std::string_view): convert at the
// boundary. Cat() is absl::StrCat accepting std::string_view too.
inline absl::string_view ToAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}
inline std::string_view ToStd(absl::string_view s) { return std::string_view(s.data(), s.size()); }
template <typename T>
decltype(auto) CatArg(const T& v) {
  if constexpr (std::is_same_v<T, std::string_view>) {
    return ToAbsl(v);
  } else {
    return (v);
  }
}
template <typename... Args>
std::string Cat(const Args&... args) {
  return absl::StrCat(CatArg(args)...);
}

inline std::string JoinPath(std::string_view path, std::string_view key) {
  return path.empty() ? std::string(key) : Cat(path, ".", key);
}
inline std::string IndexPath(std::string_view path, size_t index) {
  return Cat(path, "[", index, "]");
}

inline absl::Status FieldError(std::string_view path, std::string_view message) {
  return absl::InvalidArgumentError(Cat(path, ": ", message));
}

inline std::string_view JsonTypeName(const Json& j) { return j.type_name(); }

// Returns the member `key` of object `obj`, or nullptr when absent or null.
inline const Json* FindField(const Json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

inline absl::StatusOr<const Json*> RequireField(const Json& obj, std::string_view key,
                                                std::string_view path) {
  const Json* f = FindField(obj, key);
  if (f == nullptr) return FieldError(JoinPath(path, key), "missing");
  return f;
}

inline absl::StatusOr<bool> GetBool(const Json& obj, std::string_view key, std::string_view path,
                                    bool default_value) {
  const Json* f = FindField(obj, key);
  if (f == nullptr) return default_value;
  if (!f->is_boolean()) {
    return FieldError(JoinPath(path, key), Cat("expected a boolean, got ", f->type_name()));
  }
  return f->get<bool>();
}

inline absl::StatusOr<std::string> GetString(const Json& obj, std::string_view key,
                                             std::string_view path,
                                             std::optional<std::string> default_value) {
  const Json* f = FindField(obj, key);
  if (f == nullptr) {
    if (default_value.has_value()) return *default_value;
    return FieldError(JoinPath(path, key), "missing");
  }
  if (!f->is_string()) {
    return FieldError(JoinPath(path, key), Cat("expected a string, got ", f->type_name()));
  }
  return f->get<std::string>();
}

inline absl::StatusOr<std::optional<std::string>> GetOptionalString(const Json& obj,
                                                                    std::string_view key,
                                                                    std::string_view path) {
  const Json* f = FindField(obj, key);
  if (f == nullptr) return std::optional<std::string>();
  if (!f->is_string()) {
    return FieldError(JoinPath(path, key), Cat("expected a string, got ", f->type_name()));
  }
  return std::optional<std::string>(f->get<std::string>());
}

inline absl::StatusOr<int64_t> GetInt(const Json& obj, std::string_view key, std::string_view path,
                                      std::optional<int64_t> default_value) {
  const Json* f = FindField(obj, key);
  if (f == nullptr) {
    if (default_value.has_value()) return *default_value;
    return FieldError(JoinPath(path, key), "missing");
  }
  if (!f->is_number_integer()) {
    return FieldError(JoinPath(path, key), Cat("expected an integer, got ", f->type_name()));
  }
  return f->get<int64_t>();
}

// A token id: an integer in [0, 2^31).
inline absl::StatusOr<int32_t> ToTokenId(const Json& j, std::string_view path) {
  if (!j.is_number_integer()) {
    return FieldError(path, Cat("expected a token id, got ", j.type_name()));
  }
  const int64_t v = j.get<int64_t>();
  if (v < 0 || v > INT32_MAX) return FieldError(path, Cat("token id ", v, " out of range"));
  return static_cast<int32_t>(v);
}

// A single code point given as a one-character string ("▁").
absl::StatusOr<char32_t> GetChar(const Json& obj, std::string_view key, std::string_view path,
                                 std::optional<char32_t> default_value);

}  // namespace kvc::tokenizer_internal

#endif  // KVC_MODEL_TOKENIZER_JSON_H_
