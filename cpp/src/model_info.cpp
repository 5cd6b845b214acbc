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
  if (m.has("family")) apply_family(Json::parse(m["family"].string()), info);
  return info;
}

void apply_family(const Json& family, ModelInfo& info) {
  info.family = family["name"].string();
  if (family.has("postprocess")) {
    const Json& p = family["postprocess"];
    info.postprocess.argmax = p["candidates"].string() == "argmax";
    info.postprocess.pre_nms_top_k = p["pre_nms_top_k"].is_null() ? 0 : static_cast<int>(p["pre_nms_top_k"].integer());
    info.postprocess.score_thresh = static_cast<float>(p["score_thresh"].number());
    info.postprocess.iou_thresh = static_cast<float>(p["iou_thresh"].number());
    info.postprocess.max_detections = static_cast<int>(p["max_detections"].integer());
  }
  if (family.has("preprocess")) {
    const Json& p = family["preprocess"];
    info.preprocess.resize = p["resize"].string();
    info.preprocess.center = p["align"].string() == "center";
    info.preprocess.fill_mean = p["fill"].is_null();
    if (!info.preprocess.fill_mean)
      for (size_t c = 0; c < 3; ++c) info.preprocess.fill_rgb[c] = static_cast<float>(p["fill"][c].number());
    if (p.has("crop_fraction")) info.preprocess.crop_fraction = static_cast<float>(p["crop_fraction"].number());
  }
  if (family.has("masks") && !family["masks"].is_null()) {
    const Json& m = family["masks"];
    info.has_masks = true;
    info.masks.feature_stride = static_cast<int>(m["feature_stride"].integer());
    info.masks.roi_size = static_cast<int>(m["roi_size"].integer());
    info.masks.mask_size = static_cast<int>(m["mask_size"].integer());
    info.masks.sampling_ratio = static_cast<int>(m["sampling_ratio"].integer());
    info.masks.aligned = m["aligned"].boolean();
    info.masks.threshold = static_cast<float>(m["threshold"].number());
  }
}

}  // namespace autotimm
