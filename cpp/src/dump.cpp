// Dumps of network outputs (autotimm/dump.hpp) and the table of the tasks' runners.
#include "autotimm/dump.hpp"

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace autotimm {

const std::vector<TaskEntry>& dump_tasks() {
  static const std::vector<TaskEntry> tasks = {
      {"detection", detections_from_dump},
      {"instance_segmentation", instances_from_dump},
      {"segmentation", segmentation_from_dump},
  };
  return tasks;
}

TaskRunner dump_task(const std::string& task) {
  std::string known;
  for (const auto& t : dump_tasks()) {
    if (task == t.task) return t.run;
    known += (known.empty() ? "" : ", ") + std::string(t.task);
  }
  throw std::runtime_error("no C++ post-processing for task '" + task + "' (known: " + known + ")");
}

namespace {
template <typename T>
std::vector<T> read_raw(const std::string& path, size_t count, const char* kind) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::vector<T> v(count);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(count * sizeof(T)));
  if (in.gcount() != static_cast<std::streamsize>(count * sizeof(T)) || in.peek() != std::char_traits<char>::eof())
    throw std::runtime_error(path + ": expected exactly " + std::to_string(count) + " " + kind + " values");
  return v;
}
}  // namespace

std::vector<float> Dump::f32(const std::string& file, size_t count) const {
  return read_raw<float>(dir + "/" + file, count, "float32");
}

std::vector<int64_t> Dump::i64(const std::string& file, size_t count) const {
  return read_raw<int64_t>(dir + "/" + file, count, "int64");
}

Dump read_dump(const std::string& dir) {
  Dump d;
  d.dir = dir;
  std::ifstream mf(dir + "/meta.json");
  if (!mf) throw std::runtime_error(dir + "/meta.json: cannot open");
  std::stringstream ss;
  ss << mf.rdbuf();
  d.meta = Json::parse(ss.str());
  const Json& m = d.meta;
  d.info.task = m.has("task") ? m["task"].string() : "detection";  // dumps from before tasks: detection
  d.batch = d.integer("batch");
  if (m.has("class_names"))
    for (const auto& s : m["class_names"].array()) d.info.class_names.push_back(s.string());
  if (m.has("net_size")) {
    d.net_h = static_cast<int>(m["net_size"][0].integer());
    d.net_w = static_cast<int>(m["net_size"][1].integer());
    d.info.input_h = d.net_h;
    d.info.input_w = d.net_w;
  }
  if (m.has("family") && !m["family"].is_null()) apply_family(m["family"], d.info);
  PostprocessConfig& cfg = d.info.postprocess;
  const auto opt = [&](const char* key) { return m.has(key) && !m[key].is_null(); };
  if (opt("score_thresh")) cfg.score_thresh = static_cast<float>(m["score_thresh"].number());
  if (opt("iou_thresh")) cfg.iou_thresh = static_cast<float>(m["iou_thresh"].number());
  if (opt("max_detections")) cfg.max_detections = d.integer("max_detections");
  if (opt("class_agnostic")) cfg.class_agnostic = m["class_agnostic"].boolean();
  if (opt("argmax")) cfg.argmax = m["argmax"].boolean();
  if (opt("pre_nms_top_k")) cfg.pre_nms_top_k = d.integer("pre_nms_top_k");
  if (opt("mask_threshold")) d.info.masks.threshold = static_cast<float>(m["mask_threshold"].number());
  if (opt("mask_size")) d.info.masks.mask_size = d.integer("mask_size");
  const Json& images = m["images"];
  if (static_cast<int>(images.size()) != d.batch)
    throw std::runtime_error(dir + "/meta.json: " + std::to_string(images.size()) + " images for a batch of " +
                             std::to_string(d.batch));
  for (const auto& im : images.array()) {
    Letterbox lb;
    lb.width = static_cast<int>(im["width"].integer());
    lb.height = static_cast<int>(im["height"].integer());
    lb.scale = im["scale"].number();
    if (im.has("pad_x")) lb.pad_x = im["pad_x"].number();
    if (im.has("pad_y")) lb.pad_y = im["pad_y"].number();
    if (im.has("scale_y") && !im["scale_y"].is_null()) lb.scale_y = im["scale_y"].number();
    d.letterboxes.push_back(lb);
  }
  return d;
}

}  // namespace autotimm
