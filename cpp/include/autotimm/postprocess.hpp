// Post-processing of fused-decode FCOS outputs: NMS and mapping to image pixels.
//
// Same rule as the Python runtime (autotimm_deploy.models.decode.batched_nms_postprocess, which
// uses torchvision): per image, (candidate, class) pairs with score > score_thresh, the
// pre_nms_top_k best, class-aware greedy NMS (IoU > iou_thresh suppresses; classes separated by
// torchvision's coordinate offset), sorted by score, at most max_detections; then boxes divided by
// the letterbox scale and clipped to the original image.
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
  int pre_nms_top_k = 1000;
  bool class_agnostic = false;
};

// How an image was placed in the network input (top-left aligned): x_net = x_img * scale.
struct Letterbox {
  float scale = 1.0f;
  int width = 0;   // original image size
  int height = 0;
};

// boxes: (num_candidates, 4) xyxy in network pixels; scores: (num_candidates, num_classes).
std::vector<Detection> nms_postprocess(const float* boxes, const float* scores, int num_candidates, int num_classes,
                                       const PostprocessConfig& config);

// Boxes from network pixels to original image pixels (divide by scale, clip to the image).
void to_image_pixels(std::vector<Detection>& dets, const Letterbox& lb);

float box_iou(const float* a, const float* b);

// {"width": W, "height": H, "detections": [{"box": [...], "score": s, "label": l, "class_name": n}, ...]}
// (the per-image record of autotimm-infer's detections.json); `image` adds "image": path first.
std::string detections_json(const std::vector<Detection>& dets, const Letterbox& lb,
                            const std::vector<std::string>& class_names, const std::string& image = "");

}  // namespace autotimm
