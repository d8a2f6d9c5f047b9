#include "json_value.h"

#include <cmath>
#include <cstdlib>

namespace dd_triton {

namespace {
const Json& null_json() {
  static const Json null;
  return null;
}
[[noreturn]] void type_error(const char* want) { throw std::runtime_error(std::string("JSON value is not ") + want); }
}  // namespace

class JsonParser {
 public:
  explicit JsonParser(const std::string& s) : s_(s) {}

  Json document() {
    Json v = value();
    skip();
    if (i_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  const std::string& s_;
  size_t i_ = 0;

  [[noreturn]] void fail(const char* what) {
    throw std::runtime_error("malformed JSON at byte " + std::to_string(i_) + ": " + what);
  }
  void skip() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  bool eat(char c) {
    skip();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool word(const char* w) {
    size_t n = std::char_traits<char>::length(w);
    if (s_.compare(i_, n, w) != 0) return false;
    i_ += n;
    return true;
  }

  Json value() {
    skip();
    if (i_ >= s_.size()) fail("unexpected end");
    Json v;
    char c = s_[i_];
    if (c == '{') return object();
    if (c == '[') return array();
    if (c == '"') {
      v.kind_ = Json::Kind::String;
      v.string_ = string();
    } else if (word("true")) {
      v.kind_ = Json::Kind::Bool;
      v.bool_ = true;
    } else if (word("false")) {
      v.kind_ = Json::Kind::Bool;
    } else if (word("null")) {
      v.kind_ = Json::Kind::Null;
    } else {
      const char* begin = s_.c_str() + i_;
      char* end = nullptr;
      v.number_ = std::strtod(begin, &end);
      if (end == begin) fail("unexpected character");
      v.kind_ = Json::Kind::Number;
      i_ += static_cast<size_t>(end - begin);
    }
    return v;
  }

  Json object() {
    Json v;
    v.kind_ = Json::Kind::Object;
    ++i_;
    if (eat('}')) return v;
    do {
      skip();
      if (i_ >= s_.size() || s_[i_] != '"') fail("expected a member name");
      std::string key = string();
      if (!eat(':')) fail("expected ':'");
      v.object_[key] = value();
    } while (eat(','));
    if (!eat('}')) fail("expected ',' or '}'");
    return v;
  }

  Json array() {
    Json v;
    v.kind_ = Json::Kind::Array;
    ++i_;
    if (eat(']')) return v;
    do {
      v.array_.push_back(value());
    } while (eat(','));
    if (!eat(']')) fail("expected ',' or ']'");
    return v;
  }

  void utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::string string() {
    ++i_;  // opening quote
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) break;
      char e = s_[i_++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u':
          if (i_ + 4 > s_.size()) fail("short \\u escape");
          utf8(out, static_cast<unsigned>(std::strtoul(s_.substr(i_, 4).c_str(), nullptr, 16)));
          i_ += 4;
          break;
        default: out += e;  // \" \\ \/
      }
    }
    if (i_ >= s_.size()) fail("unterminated string");
    ++i_;
    return out;
  }
};

Json Json::parse(const std::string& text) { return JsonParser(text).document(); }

const Json& Json::operator[](const std::string& key) const {
  if (kind_ != Kind::Object) type_error("an object");
  auto it = object_.find(key);
  return it == object_.end() ? null_json() : it->second;
}

const std::vector<Json>& Json::array() const {
  if (kind_ != Kind::Array) type_error("an array");
  return array_;
}

const std::string& Json::str() const {
  if (kind_ != Kind::String) type_error("a string");
  return string_;
}

int64_t Json::integer() const {
  if (kind_ == Kind::String) return std::stoll(string_);  // Triton's JSON carries int64 fields as strings
  if (kind_ != Kind::Number || std::floor(number_) != number_) type_error("an integer");
  return static_cast<int64_t>(number_);
}

bool Json::boolean() const {
  if (kind_ == Kind::Bool) return bool_;
  if (kind_ == Kind::Number) return number_ != 0.0;
  type_error("a boolean");
}

std::string Json::str_or(const std::string& key, const std::string& fallback) const {
  const Json& v = (*this)[key];
  return v.is_null() ? fallback : v.str();
}

}  // namespace dd_triton
