// autotimm_detect ENGINE IMAGE.ppm [--score-thr T] [--iou-thr T] [--max-det N] [--exif-orientation N]
// Runs a fused-decode detector engine (autotimm-export --decode boxes) on a PPM image and prints
// {"images": [...]} in the format of autotimm-infer's detections.json.  Preprocessing and the
// post-processing rule and thresholds come from the model family recorded in the engine's sidecar.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <string>

#include "autotimm/engine.hpp"
#include "autotimm/image.hpp"
#include "autotimm/postprocess.hpp"

using namespace autotimm;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: autotimm_detect ENGINE IMAGE.ppm [--score-thr T] [--iou-thr T] [--max-det N] "
                         "[--exif-orientation N]\n");
    return 2;
  }
  try {
    Engine engine(argv[1]);
    const ModelInfo& m = engine.model();
    if (m.task != "detection" || m.decode != "boxes")
      throw std::runtime_error("this example runs detectors exported with --decode boxes (fused decode)");
    PostprocessConfig cfg = m.postprocess;  // the model family's rule and the model's own thresholds
    int orientation = 1;                    // EXIF orientation of the decoded picture: boxes in the displayed frame
    for (int i = 3; i + 1 < argc; i += 2) {
      if (!std::strcmp(argv[i], "--score-thr")) cfg.score_thresh = std::stof(argv[i + 1]);
      else if (!std::strcmp(argv[i], "--iou-thr")) cfg.iou_thresh = std::stof(argv[i + 1]);
      else if (!std::strcmp(argv[i], "--max-det")) cfg.max_detections = std::stoi(argv[i + 1]);
      else if (!std::strcmp(argv[i], "--exif-orientation")) orientation = std::stoi(argv[i + 1]);
      else throw std::runtime_error(std::string("unknown option ") + argv[i]);
    }
    const Image img = apply_exif_orientation(read_ppm(argv[2]), orientation);
    std::vector<float> chw(static_cast<size_t>(3) * m.input_h * m.input_w);
    const Letterbox lb = letterbox_normalize(img, m.input_h, m.input_w, m.mean, m.std, chw.data(), m.preprocess);
    std::vector<std::vector<long>> shapes;
    const auto outs = engine.infer(chw, 1, m.input_h, m.input_w, &shapes);
    std::map<std::string, size_t> idx;
    for (size_t k = 0; k < engine.output_names().size(); ++k) idx[engine.output_names()[k]] = k;
    const auto& sshape = shapes.at(idx.at("scores"));
    const int n = static_cast<int>(sshape[1]), c = static_cast<int>(sshape[2]);
    auto dets = nms_postprocess(outs[idx.at("boxes")].data(), outs[idx.at("scores")].data(), n, c, cfg);
    to_image_pixels(dets, lb);
    std::cout << "{\"images\": [" << detections_json(dets, lb, m.class_names, argv[2]) << "]}" << std::endl;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "autotimm_detect: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
