// Saved network outputs of one batch (a "dump" directory) and each task's post-processing of them: what
// autotimm_postprocess runs so that the C++ and Python runtimes can be compared on the same outputs.
//
// meta.json: {"task" (default "detection"), "batch", "class_names", "images": [{"width", "height", "scale",
// optional "pad_x", "pad_y", "scale_y" (null or absent: scale)}], optional "net_size": [H, W] (the network input;
// needed by the segmentation tasks), optional "family" (the family declaration, as the ONNX metadata's: its rule,
// thresholds and masks), then optional overrides: "score_thresh", "iou_thresh", "max_detections", "class_agnostic",
// "argmax", "pre_nms_top_k" (<= 0: none), "mask_threshold", "mask_size"; and what each task reads (its runner's
// comment)}.  Arrays are raw little-endian files: NAME.f32 (float32) and NAME.i64 (int64), C order.
//
// Adding a task: its source file in src/ defines a TaskRunner, and one line in dump_tasks() (src/dump.cpp) names it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "autotimm/engine.hpp"
#include "autotimm/json.hpp"
#include "autotimm/postprocess.hpp"

namespace autotimm {

struct Dump {
  std::string dir;
  Json meta;
  ModelInfo info;  // task, class names, the family's rule and thresholds (meta's overrides applied), masks
  int batch = 0;
  int net_h = 0, net_w = 0;  // meta "net_size" (0 when absent)
  std::vector<Letterbox> letterboxes;
  std::string label_maps_dir;  // segmentation: write each image's label map there ("" none)

  int integer(const std::string& key) const { return static_cast<int>(meta[key].integer()); }
  std::vector<float> f32(const std::string& file, size_t count) const;     // exactly count values
  std::vector<int64_t> i64(const std::string& file, size_t count) const;
};

// Reads DIR/meta.json (throws std::runtime_error / JsonError naming what is wrong).
Dump read_dump(const std::string& dir);

// One task's post-processing of a dump: the per-image records of autotimm-infer's results file.
using TaskRunner = std::vector<std::string> (*)(const Dump&);
struct TaskEntry {
  const char* task;  // the Python task's name (autotimm_deploy.tasks)
  TaskRunner run;
};
const std::vector<TaskEntry>& dump_tasks();
// The runner of a task; throws std::runtime_error listing the known tasks.
TaskRunner dump_task(const std::string& task);

// The runners (each in its task's source file).
std::vector<std::string> detections_from_dump(const Dump& d);    // postprocess.cpp
std::vector<std::string> instances_from_dump(const Dump& d);     // masks.cpp
std::vector<std::string> segmentation_from_dump(const Dump& d);  // segmentation.cpp

}  // namespace autotimm
