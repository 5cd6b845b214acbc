// Minimal JSON value, parser and writer (enough for sidecars, dumps and detection output).
#pragma once

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace autotimm {

class JsonError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  Json() = default;
  static Json parse(const std::string& text);  // throws JsonError with the offset of the problem

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_object() const { return type_ == Type::Object; }
  bool is_array() const { return type_ == Type::Array; }
  bool has(const std::string& key) const;
  const Json& operator[](const std::string& key) const;  // throws if missing / not an object
  const Json& operator[](size_t i) const;                // throws if out of range / not an array
  size_t size() const;
  double number() const;
  long long integer() const;
  bool boolean() const;
  const std::string& string() const;
  const std::vector<Json>& array() const;
  const std::map<std::string, Json>& object() const;

 private:
  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;
  std::vector<Json> array_;
  std::map<std::string, Json> object_;
  friend class JsonParser;
};

// Quote and escape a string for JSON output.
std::string json_quote(const std::string& s);

}  // namespace autotimm
