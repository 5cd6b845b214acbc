// autotimm_postprocess DUMP_DIR [--label-maps DIR]: a task's post-processing on saved network outputs, printed as
// {"images": [...]} with the per-image records of autotimm-infer's results file (detections.json,
// instances.json, segmentations.json), so that the C++ and Python post-processing can be compared on the same
// outputs.
//
// DUMP_DIR holds meta.json and the outputs (autotimm/dump.hpp); meta's "task" (default "detection") selects the
// runner in the table of dump_tasks() (src/dump.cpp).  --label-maps DIR: segmentation writes each image's label map
// there (labels_<i>.u8 or .i32, raw row-major, image pixels) for an exact comparison.
#include <cstdio>
#include <cstring>
#include <iostream>

#include "autotimm/dump.hpp"

using namespace autotimm;

int main(int argc, char** argv) {
  if (argc != 2 && !(argc == 4 && !std::strcmp(argv[2], "--label-maps"))) {
    std::fprintf(stderr, "usage: autotimm_postprocess DUMP_DIR [--label-maps DIR]\n");
    return 2;
  }
  try {
    Dump dump = read_dump(argv[1]);
    if (argc == 4) dump.label_maps_dir = argv[3];
    const auto records = dump_task(dump.info.task)(dump);
    std::cout << "{\"images\": [";
    for (size_t i = 0; i < records.size(); ++i) std::cout << (i ? ", " : "") << records[i];
    std::cout << "]}" << std::endl;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "autotimm_postprocess: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
