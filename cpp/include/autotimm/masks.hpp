// Instance masks: each final detection's mask probabilities pasted into its box, binarised, mapped to the image's
// pixels and encoded as COCO RLE.  Exactly the Python runtime's (autotimm_deploy/models/masks.py paste_masks and
// autotimm_deploy/tasks/instance.py postprocess).
//
// Paste (AutoTimm's InstanceSegmentor.predict): the box's pixel extent is floor(x1), floor(y1) clamped to
// [0, W - 1] / [0, H - 1] and ceil(x2), ceil(y2) clamped to [x1 + 1, W] / [y1 + 1, H] (at least one pixel); the
// M x M probabilities are resized to it with PyTorch's bilinear align_corners=False (no antialias): along an axis of
// n samples to m, output d reads s = max(float32((d + 0.5) * float32(n / m) - 0.5), 0), i0 = min(floor(s), n - 1),
// i1 = min(i0 + 1, n - 1), w1 = clip(s - i0, 0, 1), w0 = 1 - w1 (float32; m == n: the identity weights); the value
// (x00 h0 w0 + x01 h0 w1) + (x10 h1 w0 + x11 h1 w1) is summed in float64 and rounded once to float32; a pixel
// belongs to the instance where that is > float32(threshold).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "autotimm/postprocess.hpp"

namespace autotimm {

// A family's instance-mask declaration (Python MaskSpec): what the mask network computes and the threshold.
struct MaskSpec {
  int feature_stride = 8;  // mask_features stride relative to the network input
  int roi_size = 14;       // RoIAlign output size
  int mask_size = 28;      // M: the mask network's (N, M, M) probabilities
  int sampling_ratio = 0;  // 0: adaptive (torchvision's -1)
  bool aligned = true;     // half-pixel box coordinates in RoIAlign
  float threshold = 0.5f;  // a pixel belongs to the instance where the probability is > threshold
};

// One axis of PyTorch's bilinear resize (align_corners=False) from n to m samples: source indices and weights.
struct BilinearAxis {
  std::vector<int> i0, i1;
  std::vector<float> w0, w1;
  BilinearAxis(int n, int m);
};

// The bilinear value at output (y, x) of a row-major (in_h, in_w) float32 source (the rule above).  Out of line:
// compiled once, without fused multiply-adds (CMakeLists.txt).
float bilinear_at(const float* src, int in_w, const BilinearAxis& ay, const BilinearAxis& ax, int y, int x);

// F.interpolate(x[None, None], (out_h, out_w), mode="bilinear", align_corners=False)[0, 0] of a 2-D float32 array.
std::vector<float> resize_bilinear(const float* src, int in_h, int in_w, int out_h, int out_w);

// The pixel extent (x1, y1, x2, y2), end exclusive, a box's mask is pasted into.
struct PasteRegion {
  int x1, y1, x2, y2;
};
PasteRegion paste_region(const float* box, int height, int width);

// One mask: probs (mh, mw) pasted into box (xyxy, network pixels) of a (height, width) frame: 0/1 bytes, row-major.
std::vector<uint8_t> paste_mask(const float* probs, int mh, int mw, const float* box, int height, int width,
                                float threshold);
// n masks (n, mh, mw) and boxes (n, 4): (n, height, width) 0/1 bytes (Python's paste_masks).
std::vector<uint8_t> paste_masks(const float* probs, int n, int mh, int mw, const float* boxes, int height, int width,
                                 float threshold);

// A mask in the network input's frame (net_h, net_w) into the image's pixels: each image pixel takes the network
// pixel its centre falls in (image_grid); outside the network input: 0.  (lb.height, lb.width) bytes.
std::vector<uint8_t> mask_to_image(const uint8_t* net_mask, int net_h, int net_w, const Letterbox& lb);

// pycocotools' compressed RLE "counts" string of a row-major (height, width) 0/1 mask (runs taken column-major,
// starting with zeros; LEB128-like 6 bits per character, deltas from the run two before), as
// autotimm_deploy.tasks.instance.rle / pycocotools.mask.encode.
std::string rle_counts(const uint8_t* mask, int height, int width);
// {"size": [h, w], "counts": "..."}
std::string rle_json(const uint8_t* mask, int height, int width);

// Instance segmentation of one image: the final detections (network pixels, in order) with their mask probabilities
// (n, mh, mw): each mask pasted in the network frame (net_h, net_w), mapped to the image, then the boxes mapped;
// returns the per-image record of detections.json with "mask" (RLE) and "area" per detection (Instances.to_dict).
std::string instances_json(std::vector<Detection> dets, const float* probs, int mh, int mw, int net_h, int net_w,
                           float threshold, const Letterbox& lb, const std::vector<std::string>& class_names,
                           const std::string& image = "");

}  // namespace autotimm
