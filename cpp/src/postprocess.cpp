#include "autotimm/postprocess.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "autotimm/json.hpp"

namespace autotimm {

float box_iou(const float* a, const float* b) {
  // as torchvision's CPU nms kernel: areas without +1, intersection clamped at 0, float arithmetic
  const float area_a = (a[2] - a[0]) * (a[3] - a[1]);
  const float area_b = (b[2] - b[0]) * (b[3] - b[1]);
  const float w = std::max(0.0f, std::min(a[2], b[2]) - std::max(a[0], b[0]));
  const float h = std::max(0.0f, std::min(a[3], b[3]) - std::max(a[1], b[1]));
  const float inter = w * h;
  return inter / (area_a + area_b - inter);
}

std::vector<Detection> nms_postprocess(const float* boxes, const float* scores, int num_candidates, int num_classes,
                                       const PostprocessConfig& cfg) {
  // 1. (candidate, class) pairs above the threshold, in flat index order: every class (per_class), or each
  //    candidate's first best class (argmax, as torch.max)
  std::vector<long> keep;
  if (cfg.argmax || cfg.class_agnostic) {
    for (long c = 0; c < num_candidates; ++c) {
      const float* row = scores + c * num_classes;
      const long best = static_cast<long>(std::max_element(row, row + num_classes) - row);
      if (row[best] > cfg.score_thresh) keep.push_back(c * num_classes + best);
    }
  } else {
    const long total = static_cast<long>(num_candidates) * num_classes;
    for (long f = 0; f < total; ++f)
      if (scores[f] > cfg.score_thresh) keep.push_back(f);
  }
  // 2. the pre_nms_top_k best (score descending, ties by flat index)
  auto by_score = [&](long a, long b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); };
  if (cfg.pre_nms_top_k > 0 && static_cast<long>(keep.size()) > cfg.pre_nms_top_k) {
    std::partial_sort(keep.begin(), keep.begin() + cfg.pre_nms_top_k, keep.end(), by_score);
    keep.resize(cfg.pre_nms_top_k);
  }
  const size_t n = keep.size();
  std::vector<float> cand(n * 4);
  std::vector<float> cand_scores(n);
  std::vector<int> labels(n);
  float max_coord = -INFINITY;
  for (size_t k = 0; k < n; ++k) {
    const long c = keep[k] / num_classes;
    for (int d = 0; d < 4; ++d) {
      cand[k * 4 + d] = boxes[c * 4 + d];
      max_coord = std::max(max_coord, cand[k * 4 + d]);
    }
    cand_scores[k] = scores[keep[k]];
    labels[k] = static_cast<int>(keep[k] % num_classes);
  }
  // 3. class-aware NMS with torchvision's coordinate trick: boxes of class l shifted by l * (max + 1)
  std::vector<float> shifted(cand);
  if (!cfg.class_agnostic && n > 0) {
    for (size_t k = 0; k < n; ++k) {
      const float off = static_cast<float>(labels[k]) * (max_coord + 1.0f);
      for (int d = 0; d < 4; ++d) shifted[k * 4 + d] = cand[k * 4 + d] + off;
    }
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return cand_scores[a] > cand_scores[b]; });
  std::vector<char> suppressed(n, 0);
  std::vector<Detection> out;
  for (size_t oi = 0; oi < n; ++oi) {
    const size_t i = order[oi];
    if (suppressed[i]) continue;
    out.push_back({cand[i * 4], cand[i * 4 + 1], cand[i * 4 + 2], cand[i * 4 + 3], cand_scores[i], labels[i]});
    if (static_cast<int>(out.size()) == cfg.max_detections) break;
    for (size_t oj = oi + 1; oj < n; ++oj) {
      const size_t j = order[oj];
      if (!suppressed[j] && box_iou(&shifted[i * 4], &shifted[j * 4]) > cfg.iou_thresh) suppressed[j] = 1;
    }
  }
  return out;
}

void to_image_pixels(std::vector<Detection>& dets, const Letterbox& lb) {
  const float w = static_cast<float>(lb.width), h = static_cast<float>(lb.height);
  for (auto& d : dets) {
    d.x1 = std::clamp((d.x1 - lb.pad_x) / lb.scale, 0.0f, w);
    d.y1 = std::clamp((d.y1 - lb.pad_y) / lb.scale, 0.0f, h);
    d.x2 = std::clamp((d.x2 - lb.pad_x) / lb.scale, 0.0f, w);
    d.y2 = std::clamp((d.y2 - lb.pad_y) / lb.scale, 0.0f, h);
  }
}

std::string detections_json(const std::vector<Detection>& dets, const Letterbox& lb,
                            const std::vector<std::string>& class_names, const std::string& image) {
  std::string s = "{";
  if (!image.empty()) s += "\"image\": " + json_quote(image) + ", ";
  s += "\"width\": " + std::to_string(lb.width) + ", \"height\": " + std::to_string(lb.height) + ", \"detections\": [";
  char buf[256];
  for (size_t k = 0; k < dets.size(); ++k) {
    const auto& d = dets[k];
    const std::string name = d.label >= 0 && d.label < static_cast<int>(class_names.size())
                                 ? class_names[d.label] : "class_" + std::to_string(d.label);
    std::snprintf(buf, sizeof buf, "%s{\"box\": [%.3f, %.3f, %.3f, %.3f], \"score\": %.6f, \"label\": %d, \"class_name\": ",
                  k ? ", " : "", d.x1, d.y1, d.x2, d.y2, d.score, d.label);
    s += buf + json_quote(name) + "}";
  }
  return s + "]}";
}

}  // namespace autotimm
