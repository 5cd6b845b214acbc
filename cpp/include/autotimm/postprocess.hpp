// Post-processing of fused-decode detector outputs: NMS and mapping to image pixels.
//
// Same rule as the Python runtime (autotimm_deploy.models.decode.batched_nms_postprocess, which
// uses torchvision): per image, the candidates of the model family's rule (per_class: every
// (candidate, class) pair with score > score_thresh; argmax: each candidate's first best class if
// its score > score_thresh), the pre_nms_top_k best (<= 0: all), class-aware greedy NMS (IoU >
// iou_thresh suppresses; classes separated by torchvision's coordinate offset), sorted by score, at
// most max_detections; then the letterbox offset removed, boxes divided by its scale and clipped to
// the original image.  The defaults of a model come from its family (ModelInfo::postprocess).
#pragma once

#include <string>
#include <vector>

namespace autotimm {

struct Detection {
  float x1, y1, x2, y2;
  float score;
  int label;
};

struct PostprocessConfig {
  float score_thresh = 0.05f;
  float iou_thresh = 0.6f;
  int max_detections = 100;
  int pre_nms_top_k = 1000;  // <= 0: no limit
  bool class_agnostic = false;
  bool argmax = false;  // one class per candidate (the family's "argmax" rule); class_agnostic implies it
};

// How an image was placed in the network input: x_net = x_img * scale + pad_x, y_net = y_img * sy() + pad_y.
// scale_y differs from scale only for a stretch (the aspect ratio not kept); 0 means "the same as scale" (the
// Python Letterbox's None).  Doubles, as the Python runtime's: image_grid must floor the same values.
struct Letterbox {
  double scale = 1.0;
  int width = 0;   // original image size
  int height = 0;
  double pad_x = 0.0;
  double pad_y = 0.0;
  double scale_y = 0.0;
  double sy() const { return scale_y > 0.0 ? scale_y : scale; }
};

// For every pixel of the original image, the network-input pixel its centre falls in (as the Python
// Letterbox.image_grid): rows[i] = floor((i + 0.5) * sy + pad_y) (height values), cols[j] = floor((j + 0.5) * scale
// + pad_x) (width values), in float64; may lie outside the network input (callers clip or test).
void image_grid(const Letterbox& lb, std::vector<long>& rows, std::vector<long>& cols);

// boxes: (num_candidates, 4) xyxy in network pixels; scores: (num_candidates, num_classes).
std::vector<Detection> nms_postprocess(const float* boxes, const float* scores, int num_candidates, int num_classes,
                                       const PostprocessConfig& config);

// Boxes from network pixels to original image pixels (remove the padding, divide by scale (x) and sy() (y), in
// float32 as the Python runtime, clip to the image, order the corners: x1 <= x2, y1 <= y2).
void to_image_pixels(std::vector<Detection>& dets, const Letterbox& lb);

float box_iou(const float* a, const float* b);

// {"width": W, "height": H, "detections": [{"box": [...], "score": s, "label": l, "class_name": n}, ...]}
// (the per-image record of autotimm-infer's detections.json); `image` adds "image": path first; `extras`
// (one per detection, e.g. "\"mask\": {...}, \"area\": 12") is appended inside each detection's object.
std::string detections_json(const std::vector<Detection>& dets, const Letterbox& lb,
                            const std::vector<std::string>& class_names, const std::string& image = "",
                            const std::vector<std::string>* extras = nullptr);
// The class name of a label: class_names[label], or "class_<label>" outside the list.
std::string class_name(const std::vector<std::string>& class_names, int label);

}  // namespace autotimm
