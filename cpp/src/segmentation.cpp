// Semantic segmentation: label maps from labels or logits, into the image's pixels, and the per-class areas (see
// autotimm/segmentation.hpp); and the task's post-processing of a dump.
#include "autotimm/segmentation.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <stdexcept>

#include "autotimm/dump.hpp"
#include "autotimm/json.hpp"
#include "autotimm/masks.hpp"

namespace autotimm {

std::vector<int32_t> argmax_labels(const float* logits, int classes, int h, int w, int out_h, int out_w) {
  const bool resize = h != out_h || w != out_w;
  const BilinearAxis ay(h, resize ? out_h : h), ax(w, resize ? out_w : w);
  const size_t plane = static_cast<size_t>(h) * w;
  std::vector<int32_t> out(static_cast<size_t>(out_h) * out_w);
  for (int y = 0; y < out_h; ++y) {
    for (int x = 0; x < out_w; ++x) {
      int32_t best = 0;
      float best_v = 0.0f;
      for (int c = 0; c < classes; ++c) {
        const float* src = logits + c * plane;
        const float v = resize ? bilinear_at(src, w, ay, ax, y, x) : src[static_cast<size_t>(y) * w + x];
        if (c == 0 || v > best_v || (std::isnan(v) && !std::isnan(best_v))) {  // numpy: the first max, NaN wins
          best = c;
          best_v = v;
        }
      }
      out[static_cast<size_t>(y) * out_w + x] = best;
    }
  }
  return out;
}

namespace {
long floor_div(long a, long b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }
}  // namespace

std::vector<int32_t> labels_to_image(const int32_t* labels, int h, int w, int net_h, int net_w, const Letterbox& lb) {
  std::vector<long> rows, cols;
  image_grid(lb, rows, cols);
  for (auto& r : rows) r = std::clamp(floor_div(r * h, net_h), 0L, static_cast<long>(h - 1));
  for (auto& c : cols) c = std::clamp(floor_div(c * w, net_w), 0L, static_cast<long>(w - 1));
  std::vector<int32_t> out(static_cast<size_t>(lb.height) * lb.width);
  for (int i = 0; i < lb.height; ++i) {
    const int32_t* src = labels + static_cast<size_t>(rows[i]) * w;
    int32_t* dst = &out[static_cast<size_t>(i) * lb.width];
    for (int j = 0; j < lb.width; ++j) dst[j] = src[cols[j]];
  }
  return out;
}

std::vector<ClassArea> class_areas(const std::vector<int32_t>& labels, const std::vector<std::string>& class_names) {
  std::vector<long> counts(class_names.size(), 0);
  for (int32_t v : labels) {
    if (v < 0) throw std::runtime_error("negative label " + std::to_string(v) + " in a label map");
    if (static_cast<size_t>(v) >= counts.size()) counts.resize(static_cast<size_t>(v) + 1, 0);
    ++counts[static_cast<size_t>(v)];
  }
  std::vector<int> order(counts.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return counts[a] > counts[b]; });
  const double total = static_cast<double>(std::max<size_t>(1, labels.size()));
  std::vector<ClassArea> out;
  for (int c : order) {
    if (!counts[c]) continue;
    const std::string name = c < static_cast<int>(class_names.size()) ? class_names[c] : std::to_string(c);
    out.push_back({c, name, static_cast<double>(counts[c]) / total});
  }
  return out;
}

std::string segmentation_json(const std::vector<int32_t>& labels, const Letterbox& lb,
                              const std::vector<std::string>& class_names, const std::string& image,
                              const std::string& label_map) {
  std::string s = "{";
  if (!image.empty()) s += "\"image\": " + json_quote(image) + ", ";
  s += "\"width\": " + std::to_string(lb.width) + ", \"height\": " + std::to_string(lb.height) + ", \"classes\": [";
  const auto areas = class_areas(labels, class_names);
  char buf[64];
  for (size_t k = 0; k < areas.size(); ++k) {
    std::snprintf(buf, sizeof buf, "%.6f", areas[k].fraction);  // correctly rounded: Python's round(f, 6)
    s += (k ? ", " : "") + std::string("{\"label\": ") + std::to_string(areas[k].label) +
         ", \"class_name\": " + json_quote(areas[k].class_name) + ", \"fraction\": " + buf + "}";
  }
  s += "]";
  if (!label_map.empty()) s += ", \"label_map\": " + json_quote(label_map);
  return s + "}";
}

std::string write_label_map(const std::vector<int32_t>& labels, const std::string& stem) {
  const bool u8 = std::all_of(labels.begin(), labels.end(), [](int32_t v) { return v >= 0 && v <= 255; });
  const std::string path = stem + (u8 ? ".u8" : ".i32");
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error(path + ": cannot write");
  if (u8) {
    const std::vector<uint8_t> bytes(labels.begin(), labels.end());
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  } else {
    out.write(reinterpret_cast<const char*>(labels.data()), static_cast<std::streamsize>(labels.size() * 4));
  }
  if (!out) throw std::runtime_error(path + ": write failed");
  return path;
}

// The dump of a segmentor: meta "net_size" [H, W] and either "labels_shape" [B, h, w] with labels.i64 (--decode
// labels / labels-full) or "logits_shape" [B, C, h, w] with logits.f32 (--decode raw).  With a label-maps folder,
// each image's label map is written there as labels_<i>.u8 / .i32 and named in its record ("label_map").
std::vector<std::string> segmentation_from_dump(const Dump& d) {
  if (d.net_h <= 0 || d.net_w <= 0) throw std::runtime_error(d.dir + "/meta.json: a segmentation dump needs net_size");
  const bool has_labels = d.meta.has("labels_shape");
  if (!has_labels && !d.meta.has("logits_shape"))
    throw std::runtime_error(d.dir + "/meta.json: a segmentation dump needs labels_shape (labels.i64) or logits_shape "
                             "(logits.f32)");
  const Json& shape = d.meta[has_labels ? "labels_shape" : "logits_shape"];
  const int b = static_cast<int>(shape[0].integer()), c = has_labels ? 1 : static_cast<int>(shape[1].integer());
  const int h = static_cast<int>(shape[has_labels ? 1 : 2].integer());
  const int w = static_cast<int>(shape[has_labels ? 2 : 3].integer());
  if (b != d.batch)
    throw std::runtime_error(d.dir + "/meta.json: outputs of " + std::to_string(b) + " images for a batch of " +
                             std::to_string(d.batch));
  const size_t per_image = static_cast<size_t>(c) * h * w;
  std::vector<int64_t> labels;
  std::vector<float> logits;
  if (has_labels) labels = d.i64("labels.i64", per_image * b);
  else logits = d.f32("logits.f32", per_image * b);
  std::vector<std::string> out;
  for (int i = 0; i < b; ++i) {
    std::vector<int32_t> net;  // the network's label map and its size
    int lh = h, lw = w;
    if (has_labels) {
      const auto first = labels.begin() + static_cast<long>(per_image * i);
      net.assign(first, first + static_cast<long>(per_image));
    } else {
      net = argmax_labels(logits.data() + per_image * i, c, h, w, d.net_h, d.net_w);
      lh = d.net_h;
      lw = d.net_w;
    }
    const auto image = labels_to_image(net.data(), lh, lw, d.net_h, d.net_w, d.letterboxes[i]);
    std::string file;
    if (!d.label_maps_dir.empty()) {
      const std::string path = write_label_map(image, d.label_maps_dir + "/labels_" + std::to_string(i));
      file = path.substr(path.find_last_of('/') + 1);
    }
    out.push_back(segmentation_json(image, d.letterboxes[i], d.info.class_names, "", file));
  }
  return out;
}

}  // namespace autotimm
