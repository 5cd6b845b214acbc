// Semantic segmentation: a class per pixel, in the image's pixels.  As the Python runtime
// (autotimm_deploy/tasks/segmentation.py label_maps + postprocess):
//
// - the network's label map: its `labels` output (B, h, w) int64 (exports with --decode labels: at the head's
//   resolution; labels-full: at the network input's) as is, or from `logits` (B, C, h, w) float32 (--decode raw):
//   each class's logits resized bilinearly to the network input (H, W) (PyTorch's align_corners=False, exactly as
//   the instance masks' paste, autotimm/masks.hpp; not resized when (h, w) == (H, W)), then the argmax over the
//   classes (the first maximum wins, as numpy; a NaN wins as numpy's argmax);
// - into the image's pixels: image pixel (i, j) takes the network-input pixel its centre falls in
//   (image_grid(lb)), then that pixel's cell of the label map: rows = clip(grid_row * h // H, 0, h - 1) (floor
//   division), cols likewise (pixels outside the network input take the nearest edge cell);
// - the record: {"width", "height", "classes": [{"label", "class_name", "fraction"}]}, the classes present by
//   pixel count, largest first (ties: the smaller label first), fraction = count / pixels printed with 6 decimals
//   (Python's round(f, 6)); a label outside the class names is named by its number.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "autotimm/postprocess.hpp"

namespace autotimm {

// The argmax label map (out_h, out_w) of logits (classes, h, w), each class resized to (out_h, out_w) first unless
// (h, w) == (out_h, out_w).
std::vector<int32_t> argmax_labels(const float* logits, int classes, int h, int w, int out_h, int out_w);

// A label map (h, w) of the network (input size (net_h, net_w)) into the image's pixels (lb.height, lb.width).
std::vector<int32_t> labels_to_image(const int32_t* labels, int h, int w, int net_h, int net_w, const Letterbox& lb);

struct ClassArea {
  int label;
  std::string class_name;
  double fraction;
};
// The classes present in a label map, largest area first (ties: the smaller label first).
std::vector<ClassArea> class_areas(const std::vector<int32_t>& labels, const std::vector<std::string>& class_names);

// The per-image record of segmentations.json (Segmentation.to_dict); `image` adds "image": path first and
// `label_map` adds "label_map": file name.
std::string segmentation_json(const std::vector<int32_t>& labels, const Letterbox& lb,
                              const std::vector<std::string>& class_names, const std::string& image = "",
                              const std::string& label_map = "");

// Writes a label map as raw little-endian bytes: uint8 when every label is in 0..255 (extension ".u8"), else int32
// (".i32"), row-major; `stem` gets the extension; returns the file's path.
std::string write_label_map(const std::vector<int32_t>& labels, const std::string& stem);

}  // namespace autotimm
