#include "autotimm/engine.hpp"

namespace autotimm {

ModelInfo model_info_from_sidecar(const Json& sidecar) {
  const Json& m = sidecar["model"];
  ModelInfo info;
  info.task = m["task"].string();
  info.decode = m.has("decode") ? m["decode"].string() : "raw";
  const Json size = Json::parse(m["input_size"].string());
  info.input_h = static_cast<int>(size[0].integer());
  info.input_w = static_cast<int>(size[1].integer());
  const Json mean = Json::parse(m["mean"].string()), std = Json::parse(m["std"].string());
  for (size_t c = 0; c < 3; ++c) {
    info.mean[c] = static_cast<float>(mean[c].number());
    info.std[c] = static_cast<float>(std[c].number());
  }
  const Json names = Json::parse(m["class_names"].string());
  if (names.is_array())
    for (const auto& n : names.array()) info.class_names.push_back(n.string());
  return info;
}

}  // namespace autotimm
