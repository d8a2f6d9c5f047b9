// A small JSON reader for the two documents the backend reads: Triton's model configuration (as
// TRITONSERVER_MessageSerializeToJson gives it) and dlrm_deploy_io.json (written by
// `dlrm-deploy triton-repo`). Objects, arrays, strings (escapes incl. \uXXXX as UTF-8), numbers,
// true/false/null; a malformed document throws std::runtime_error naming the byte offset.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace dd_triton {

class Json {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  static Json parse(const std::string& text);

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::Null; }
  // Member `key` of an object (a null value when absent); throws when this is not an object.
  const Json& operator[](const std::string& key) const;
  bool has(const std::string& key) const { return kind_ == Kind::Object && object_.count(key) > 0; }
  const std::vector<Json>& array() const;
  const std::string& str() const;
  int64_t integer() const;
  bool boolean() const;
  // str() of a string member, `fallback` where it is absent or null.
  std::string str_or(const std::string& key, const std::string& fallback) const;

 private:
  Kind kind_ = Kind::Null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;
  std::vector<Json> array_;
  std::map<std::string, Json> object_;
  friend class JsonParser;
};

}  // namespace dd_triton
