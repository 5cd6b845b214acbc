#include "autotimm/json.hpp"

#include <cctype>
#include <cstdio>
#include <cstdlib>

namespace autotimm {

class JsonParser {
 public:
  explicit JsonParser(const std::string& t) : t_(t) {}

  Json parse_document() {
    Json v = value(0);
    ws();
    if (i_ != t_.size()) fail("trailing characters");
    return v;
  }

 private:
  const std::string& t_;
  size_t i_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw JsonError("JSON: " + what + " at offset " + std::to_string(i_));
  }
  void ws() {
    while (i_ < t_.size() && std::isspace(static_cast<unsigned char>(t_[i_]))) ++i_;
  }
  bool eat(char c) {
    ws();
    if (i_ < t_.size() && t_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) fail(std::string("expected '") + c + "'");
  }
  Json value(int depth) {
    if (depth > 64) fail("nesting too deep");
    ws();
    if (i_ >= t_.size()) fail("unexpected end");
    Json v;
    char c = t_[i_];
    if (c == '{') {
      ++i_;
      v.type_ = Json::Type::Object;
      if (eat('}')) return v;
      do {
        ws();
        std::string k = str();
        expect(':');
        v.object_[k] = value(depth + 1);
      } while (eat(','));
      expect('}');
    } else if (c == '[') {
      ++i_;
      v.type_ = Json::Type::Array;
      if (eat(']')) return v;
      do {
        v.array_.push_back(value(depth + 1));
      } while (eat(','));
      expect(']');
    } else if (c == '"') {
      v.type_ = Json::Type::String;
      v.string_ = str();
    } else if (t_.compare(i_, 4, "true") == 0) {
      i_ += 4;
      v.type_ = Json::Type::Bool;
      v.bool_ = true;
    } else if (t_.compare(i_, 5, "false") == 0) {
      i_ += 5;
      v.type_ = Json::Type::Bool;
    } else if (t_.compare(i_, 4, "null") == 0) {
      i_ += 4;
    } else if (c == '-' || std::isdigit(static_cast<unsigned char>(c)) || c == 'N' || c == 'I') {
      // NaN / Infinity appear in Python's json.dumps output; accept them
      const char* start = t_.c_str() + i_;
      char* end = nullptr;
      v.number_ = std::strtod(start, &end);
      if (end == start) fail("bad number");
      i_ += static_cast<size_t>(end - start);
      v.type_ = Json::Type::Number;
    } else {
      fail(std::string("unexpected character '") + c + "'");
    }
    return v;
  }
  std::string str() {
    if (i_ >= t_.size() || t_[i_] != '"') fail("expected a string");
    ++i_;
    std::string out;
    while (i_ < t_.size() && t_[i_] != '"') {
      char c = t_[i_++];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= t_.size()) fail("bad escape");
      char e = t_[i_++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {
          if (i_ + 4 > t_.size()) fail("bad \\u escape");
          unsigned cp = static_cast<unsigned>(std::stoul(t_.substr(i_, 4), nullptr, 16));
          i_ += 4;
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
          break;
        }
        default: out += e;
      }
    }
    if (i_ >= t_.size()) fail("unterminated string");
    ++i_;
    return out;
  }
};

Json Json::parse(const std::string& text) { return JsonParser(text).parse_document(); }

bool Json::has(const std::string& key) const { return type_ == Type::Object && object_.count(key) > 0; }

const Json& Json::operator[](const std::string& key) const {
  if (type_ != Type::Object) throw JsonError("JSON: not an object (looking up '" + key + "')");
  auto it = object_.find(key);
  if (it == object_.end()) throw JsonError("JSON: missing key '" + key + "'");
  return it->second;
}

const Json& Json::operator[](size_t i) const {
  if (type_ != Type::Array || i >= array_.size()) throw JsonError("JSON: index out of range");
  return array_[i];
}

size_t Json::size() const { return type_ == Type::Array ? array_.size() : type_ == Type::Object ? object_.size() : 0; }

double Json::number() const {
  if (type_ != Type::Number) throw JsonError("JSON: not a number");
  return number_;
}

long long Json::integer() const { return static_cast<long long>(number()); }

bool Json::boolean() const {
  if (type_ != Type::Bool) throw JsonError("JSON: not a boolean");
  return bool_;
}

const std::string& Json::string() const {
  if (type_ != Type::String) throw JsonError("JSON: not a string");
  return string_;
}

const std::vector<Json>& Json::array() const {
  if (type_ != Type::Array) throw JsonError("JSON: not an array");
  return array_;
}

const std::map<std::string, Json>& Json::object() const {
  if (type_ != Type::Object) throw JsonError("JSON: not an object");
  return object_;
}

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
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
  return out + "\"";
}

}  // namespace autotimm
