// Instance segmentation: masks pasted, mapped to the image and RLE-encoded (see autotimm/masks.hpp), and the task's
// post-processing of a dump (detections as the detection task, then each one's mask).
#include "autotimm/masks.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "autotimm/dump.hpp"

namespace autotimm {

BilinearAxis::BilinearAxis(int n, int m) : i0(m), i1(m), w0(m), w1(m) {
  if (m == n) {  // copied: weights 1 and 0
    for (int d = 0; d < m; ++d) {
      i0[d] = i1[d] = d;
      w0[d] = 1.0f;
      w1[d] = 0.0f;
    }
    return;
  }
  const double scale = static_cast<double>(static_cast<float>(n) / static_cast<float>(m));
  for (int d = 0; d < m; ++d) {
    const float s = std::max(static_cast<float>((d + 0.5) * scale - 0.5), 0.0f);
    i0[d] = std::min(static_cast<int>(std::floor(s)), n - 1);
    i1[d] = std::min(i0[d] + 1, n - 1);
    w1[d] = std::clamp(s - static_cast<float>(i0[d]), 0.0f, 1.0f);
    w0[d] = 1.0f - w1[d];
  }
}

float bilinear_at(const float* src, int in_w, const BilinearAxis& ay, const BilinearAxis& ax, int y, int x) {
  const float* top = src + static_cast<size_t>(ay.i0[y]) * in_w;
  const float* bottom = src + static_cast<size_t>(ay.i1[y]) * in_w;
  const double h0 = ay.w0[y], h1 = ay.w1[y], w0 = ax.w0[x], w1 = ax.w1[x];
  const int c0 = ax.i0[x], c1 = ax.i1[x];
  // as numpy: x00 * (h0 * w0) + x01 * (h0 * w1) + (x10 * (h1 * w0) + x11 * (h1 * w1)) in float64, one rounding
  const double a = static_cast<double>(top[c0]) * (h0 * w0), b = static_cast<double>(top[c1]) * (h0 * w1);
  const double c = static_cast<double>(bottom[c0]) * (h1 * w0), d = static_cast<double>(bottom[c1]) * (h1 * w1);
  return static_cast<float>((a + b) + (c + d));
}

std::vector<float> resize_bilinear(const float* src, int in_h, int in_w, int out_h, int out_w) {
  const BilinearAxis ay(in_h, out_h), ax(in_w, out_w);
  std::vector<float> out(static_cast<size_t>(out_h) * out_w);
  for (int y = 0; y < out_h; ++y)
    for (int x = 0; x < out_w; ++x) out[static_cast<size_t>(y) * out_w + x] = bilinear_at(src, in_w, ay, ax, y, x);
  return out;
}

PasteRegion paste_region(const float* box, int height, int width) {
  // as Python: int(min(max(floor(x1), 0), W - 1)), int(min(max(ceil(x2), x1 + 1), W)) on float32 coordinates
  const auto clamp_int = [](double v, double lo, double hi) { return static_cast<int>(std::min(std::max(v, lo), hi)); };
  PasteRegion r{};
  r.x1 = clamp_int(std::floor(box[0]), 0.0, width - 1);
  r.y1 = clamp_int(std::floor(box[1]), 0.0, height - 1);
  r.x2 = clamp_int(std::ceil(box[2]), r.x1 + 1, width);
  r.y2 = clamp_int(std::ceil(box[3]), r.y1 + 1, height);
  return r;
}

std::vector<uint8_t> paste_mask(const float* probs, int mh, int mw, const float* box, int height, int width,
                                float threshold) {
  std::vector<uint8_t> out(static_cast<size_t>(height) * width, 0);
  const PasteRegion r = paste_region(box, height, width);
  const BilinearAxis ay(mh, r.y2 - r.y1), ax(mw, r.x2 - r.x1);
  for (int y = 0; y < r.y2 - r.y1; ++y) {
    uint8_t* row = &out[static_cast<size_t>(r.y1 + y) * width + r.x1];
    for (int x = 0; x < r.x2 - r.x1; ++x) row[x] = bilinear_at(probs, mw, ay, ax, y, x) > threshold;
  }
  return out;
}

std::vector<uint8_t> paste_masks(const float* probs, int n, int mh, int mw, const float* boxes, int height, int width,
                                 float threshold) {
  const size_t frame = static_cast<size_t>(height) * width;
  std::vector<uint8_t> out(frame * static_cast<size_t>(n));
  for (int k = 0; k < n; ++k) {
    const auto m =
        paste_mask(probs + static_cast<size_t>(k) * mh * mw, mh, mw, boxes + 4 * k, height, width, threshold);
    std::copy(m.begin(), m.end(), out.begin() + static_cast<long>(frame * k));
  }
  return out;
}

std::vector<uint8_t> mask_to_image(const uint8_t* net_mask, int net_h, int net_w, const Letterbox& lb) {
  std::vector<long> rows, cols;
  image_grid(lb, rows, cols);
  std::vector<uint8_t> out(static_cast<size_t>(lb.height) * lb.width, 0);
  for (int i = 0; i < lb.height; ++i) {
    if (rows[i] < 0 || rows[i] >= net_h) continue;
    const uint8_t* src = net_mask + static_cast<size_t>(rows[i]) * net_w;
    uint8_t* dst = &out[static_cast<size_t>(i) * lb.width];
    for (int j = 0; j < lb.width; ++j) dst[j] = cols[j] >= 0 && cols[j] < net_w ? src[cols[j]] : 0;
  }
  return out;
}

std::string rle_counts(const uint8_t* mask, int height, int width) {
  // pycocotools rleEncode: runs over the column-major pixels, alternating 0s and 1s, the first a run of 0s
  std::vector<long> cnts;
  uint8_t p = 0;
  long c = 0;
  for (int x = 0; x < width; ++x)
    for (int y = 0; y < height; ++y) {
      const uint8_t v = mask[static_cast<size_t>(y) * width + x] ? 1 : 0;
      if (v != p) {
        cnts.push_back(c);
        c = 0;
        p = v;
      }
      ++c;
    }
  cnts.push_back(c);
  // rleToString: each count (minus the one two before, from the fourth on) in 5-bit groups, 0x20 = more, + 48
  std::string s;
  for (size_t i = 0; i < cnts.size(); ++i) {
    long x = cnts[i];
    if (i > 2) x -= cnts[i - 2];
    bool more = true;
    while (more) {
      char ch = static_cast<char>(x & 0x1f);
      x >>= 5;  // arithmetic shift, as the C code on its platforms
      more = (ch & 0x10) ? x != -1 : x != 0;
      if (more) ch |= 0x20;
      s += static_cast<char>(ch + 48);
    }
  }
  return s;
}

std::string rle_json(const uint8_t* mask, int height, int width) {
  return "{\"size\": [" + std::to_string(height) + ", " + std::to_string(width) + "], \"counts\": " +
         json_quote(rle_counts(mask, height, width)) + "}";
}

std::string instances_json(std::vector<Detection> dets, const float* probs, int mh, int mw, int net_h, int net_w,
                           float threshold, const Letterbox& lb, const std::vector<std::string>& class_names,
                           const std::string& image) {
  std::vector<std::string> extras;
  for (size_t k = 0; k < dets.size(); ++k) {
    const float box[4] = {dets[k].x1, dets[k].y1, dets[k].x2, dets[k].y2};  // network pixels: pasted there
    const auto net = paste_mask(probs + k * static_cast<size_t>(mh) * mw, mh, mw, box, net_h, net_w, threshold);
    const auto m = mask_to_image(net.data(), net_h, net_w, lb);
    const long area = std::count(m.begin(), m.end(), 1);
    extras.push_back("\"mask\": " + rle_json(m.data(), lb.height, lb.width) + ", \"area\": " + std::to_string(area));
  }
  to_image_pixels(dets, lb);
  return detections_json(dets, lb, class_names, image, &extras);
}

// The dump of an instance segmentor: boxes.f32 / scores.f32 as a detector's (fused decode), and masks.f32: the mask
// network's probabilities (num_masks, M, M) for the final detections of every image in order, as the Python runtime
// fed them (the C++ detections are the Python runtime's, in the same order: the detection comparison).
std::vector<std::string> instances_from_dump(const Dump& d) {
  if (d.net_h <= 0 || d.net_w <= 0) throw std::runtime_error(d.dir + "/meta.json: an instance dump needs net_size");
  const int n = d.integer("num_candidates"), c = d.integer("num_classes");
  const int m = d.info.masks.mask_size;
  const auto boxes = d.f32("boxes.f32", static_cast<size_t>(d.batch) * n * 4);
  const auto scores = d.f32("scores.f32", static_cast<size_t>(d.batch) * n * c);
  std::vector<std::vector<Detection>> dets;
  size_t total = 0;
  for (int i = 0; i < d.batch; ++i) {
    dets.push_back(nms_postprocess(&boxes[static_cast<size_t>(i) * n * 4], &scores[static_cast<size_t>(i) * n * c], n,
                                   c, d.info.postprocess));
    total += dets.back().size();
  }
  const size_t dumped = static_cast<size_t>(d.integer("num_masks"));
  if (dumped != total)
    throw std::runtime_error(d.dir + ": masks.f32 holds " + std::to_string(dumped) + " masks for " +
                             std::to_string(total) + " detections");
  const auto probs = d.f32("masks.f32", total * m * m);
  std::vector<std::string> out;
  size_t start = 0;
  for (int i = 0; i < d.batch; ++i) {
    out.push_back(instances_json(dets[i], probs.data() + start * m * m, m, m, d.net_h, d.net_w,
                                 d.info.masks.threshold, d.letterboxes[i], d.info.class_names));
    start += dets[i].size();
  }
  return out;
}

}  // namespace autotimm
