#include "autotimm/postprocess.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "autotimm/dump.hpp"
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
  const float px = static_cast<float>(lb.pad_x), py = static_cast<float>(lb.pad_y);
  const float sx = static_cast<float>(lb.scale), sy = static_cast<float>(lb.sy());
  for (auto& d : dets) {
    d.x1 = std::clamp((d.x1 - px) / sx, 0.0f, w);
    d.y1 = std::clamp((d.y1 - py) / sy, 0.0f, h);
    d.x2 = std::clamp((d.x2 - px) / sx, 0.0f, w);
    d.y2 = std::clamp((d.y2 - py) / sy, 0.0f, h);
    // corners ordered, as the Python runtime: unconstrained distances (AutoTimm's YOLOX) can turn a box inside out
    if (d.x2 < d.x1) std::swap(d.x1, d.x2);
    if (d.y2 < d.y1) std::swap(d.y1, d.y2);
  }
}

void image_grid(const Letterbox& lb, std::vector<long>& rows, std::vector<long>& cols) {
  rows.resize(static_cast<size_t>(lb.height));
  cols.resize(static_cast<size_t>(lb.width));
  const double sy = lb.sy();
  for (int i = 0; i < lb.height; ++i) rows[i] = static_cast<long>(std::floor((i + 0.5) * sy + lb.pad_y));
  for (int j = 0; j < lb.width; ++j) cols[j] = static_cast<long>(std::floor((j + 0.5) * lb.scale + lb.pad_x));
}

std::string class_name(const std::vector<std::string>& class_names, int label) {
  return label >= 0 && label < static_cast<int>(class_names.size()) ? class_names[label]
                                                                     : "class_" + std::to_string(label);
}

std::string detections_json(const std::vector<Detection>& dets, const Letterbox& lb,
                            const std::vector<std::string>& class_names, const std::string& image,
                            const std::vector<std::string>* extras) {
  std::string s = "{";
  if (!image.empty()) s += "\"image\": " + json_quote(image) + ", ";
  s += "\"width\": " + std::to_string(lb.width) + ", \"height\": " + std::to_string(lb.height) + ", \"detections\": [";
  char buf[256];
  for (size_t k = 0; k < dets.size(); ++k) {
    const auto& d = dets[k];
    std::snprintf(buf, sizeof buf, "%s{\"box\": [%.3f, %.3f, %.3f, %.3f], \"score\": %.6f, \"label\": %d, \"class_name\": ",
                  k ? ", " : "", d.x1, d.y1, d.x2, d.y2, d.score, d.label);
    s += buf + json_quote(class_name(class_names, d.label));
    if (extras && k < extras->size() && !(*extras)[k].empty()) s += ", " + (*extras)[k];
    s += "}";
  }
  return s + "]}";
}

// The dump of a detector (fused decode): meta "num_candidates", "num_classes"; boxes.f32 (batch, N, 4) xyxy in
// network pixels and scores.f32 (batch, N, C).
std::vector<std::string> detections_from_dump(const Dump& d) {
  const int n = d.integer("num_candidates"), c = d.integer("num_classes");
  const auto boxes = d.f32("boxes.f32", static_cast<size_t>(d.batch) * n * 4);
  const auto scores = d.f32("scores.f32", static_cast<size_t>(d.batch) * n * c);
  std::vector<std::string> out;
  for (int i = 0; i < d.batch; ++i) {
    auto dets = nms_postprocess(&boxes[static_cast<size_t>(i) * n * 4], &scores[static_cast<size_t>(i) * n * c], n, c,
                                d.info.postprocess);
    to_image_pixels(dets, d.letterboxes[i]);
    out.push_back(detections_json(dets, d.letterboxes[i], d.info.class_names));
  }
  return out;
}

}  // namespace autotimm
