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

// How an image was placed in the network input: x_net = x_img * scale + (pad_x, pad_y).
struct Letterbox {
  float scale = 1.0f;
  int width = 0;   // original image size
  int height = 0;
  float pad_x = 0.0f;
  float pad_y = 0.0f;
};

// boxes: (num_candidates, 4) xyxy in network pixels; scores: (num_candidates, num_classes).
std::vector<Detection> nms_postprocess(const float* boxes, const float* scores, int num_candidates, int num_classes,
                                       const PostprocessConfig& config);

// Boxes from network pixels to original image pixels (remove the padding, divide by scale, clip to the image).
void to_image_pixels(std::vector<Detection>& dets, const Letterbox& lb);

float box_iou(const float* a, const float* b);

// {"width": W, "height": H, "detections": [{"box": [...], "score": s, "label": l, "class_name": n}, ...]}
// (the per-image record of autotimm-infer's detections.json); `image` adds "image": path first.
std::string detections_json(const std::vector<Detection>& dets, const Letterbox& lb,
                            const std::vector<std::string>& class_names, const std::string& image = "");

}  // namespace autotimm
