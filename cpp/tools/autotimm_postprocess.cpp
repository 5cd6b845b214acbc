// autotimm_postprocess DUMP_DIR: NMS + mapping to image pixels on saved engine outputs, printed as JSON.
//
// DUMP_DIR holds meta.json ({"batch", "num_candidates", "num_classes", "score_thresh", "iou_thresh",
// "max_detections", "class_agnostic", optional "argmax" and "pre_nms_top_k" (<= 0: none), "class_names",
// "images": [{"width", "height", "scale", optional "pad_x", "pad_y"}]}) and
// boxes.f32 / scores.f32 (little-endian float32, (batch, N, 4) and (batch, N, C)).  The output is
// {"images": [...]} with the per-image records of autotimm-infer's detections.json, so the C++ and
// Python post-processing can be compared on the same outputs.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "autotimm/json.hpp"
#include "autotimm/postprocess.hpp"

using namespace autotimm;

static std::vector<float> read_f32(const std::string& path, size_t count) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::vector<float> v(count);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(count * sizeof(float)));
  if (in.gcount() != static_cast<std::streamsize>(count * sizeof(float)))
    throw std::runtime_error(path + ": expected " + std::to_string(count) + " float32 values");
  return v;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: autotimm_postprocess DUMP_DIR\n");
    return 2;
  }
  try {
    const std::string dir = argv[1];
    std::ifstream mf(dir + "/meta.json");
    if (!mf) throw std::runtime_error(dir + "/meta.json: cannot open");
    std::stringstream ss;
    ss << mf.rdbuf();
    const Json meta = Json::parse(ss.str());
    const int b = static_cast<int>(meta["batch"].integer());
    const int n = static_cast<int>(meta["num_candidates"].integer());
    const int c = static_cast<int>(meta["num_classes"].integer());
    PostprocessConfig cfg;
    cfg.score_thresh = static_cast<float>(meta["score_thresh"].number());
    cfg.iou_thresh = static_cast<float>(meta["iou_thresh"].number());
    cfg.max_detections = static_cast<int>(meta["max_detections"].integer());
    cfg.class_agnostic = meta["class_agnostic"].boolean();
    if (meta.has("argmax")) cfg.argmax = meta["argmax"].boolean();
    if (meta.has("pre_nms_top_k")) cfg.pre_nms_top_k = static_cast<int>(meta["pre_nms_top_k"].integer());
    std::vector<std::string> names;
    for (const auto& s : meta["class_names"].array()) names.push_back(s.string());
    const auto boxes = read_f32(dir + "/boxes.f32", static_cast<size_t>(b) * n * 4);
    const auto scores = read_f32(dir + "/scores.f32", static_cast<size_t>(b) * n * c);
    std::cout << "{\"images\": [";
    for (int i = 0; i < b; ++i) {
      const Json& im = meta["images"][static_cast<size_t>(i)];
      Letterbox lb;
      lb.width = static_cast<int>(im["width"].integer());
      lb.height = static_cast<int>(im["height"].integer());
      lb.scale = static_cast<float>(im["scale"].number());
      if (im.has("pad_x")) lb.pad_x = static_cast<float>(im["pad_x"].number());
      if (im.has("pad_y")) lb.pad_y = static_cast<float>(im["pad_y"].number());
      auto dets = nms_postprocess(&boxes[static_cast<size_t>(i) * n * 4], &scores[static_cast<size_t>(i) * n * c], n, c, cfg);
      to_image_pixels(dets, lb);
      std::cout << (i ? ", " : "") << detections_json(dets, lb, names);
    }
    std::cout << "]}" << std::endl;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "autotimm_postprocess: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
