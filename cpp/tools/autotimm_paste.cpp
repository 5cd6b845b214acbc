// autotimm_paste PROBS.f32 BOXES.f32 N M HEIGHT WIDTH THRESHOLD OUT.u8: instance masks pasted into their boxes, as
// the Python runtime's autotimm_deploy.models.masks.paste_masks: PROBS (N, M, M) float32 probabilities, BOXES (N, 4)
// float32 xyxy in pixels of the (HEIGHT, WIDTH) frame; OUT gets (N, HEIGHT, WIDTH) bytes, 1 inside the instance.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "autotimm/masks.hpp"

using namespace autotimm;

static std::vector<float> read_f32(const std::string& path, size_t count) {
  std::ifstream in(path, std::ios::binary);
  std::vector<float> v(count);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(count * sizeof(float)));
  if (!in || in.gcount() != static_cast<std::streamsize>(count * sizeof(float)))
    throw std::runtime_error(path + ": expected " + std::to_string(count) + " float32 values");
  return v;
}

int main(int argc, char** argv) {
  if (argc != 9) {
    std::fprintf(stderr, "usage: autotimm_paste PROBS.f32 BOXES.f32 N M HEIGHT WIDTH THRESHOLD OUT.u8\n");
    return 2;
  }
  try {
    const int n = std::stoi(argv[3]), m = std::stoi(argv[4]), h = std::stoi(argv[5]), w = std::stoi(argv[6]);
    const float threshold = static_cast<float>(std::stod(argv[7]));
    const auto probs = read_f32(argv[1], static_cast<size_t>(n) * m * m);
    const auto boxes = read_f32(argv[2], static_cast<size_t>(n) * 4);
    const auto masks = paste_masks(probs.data(), n, m, m, boxes.data(), h, w, threshold);
    std::ofstream out(argv[8], std::ios::binary);
    out.write(reinterpret_cast<const char*>(masks.data()), static_cast<std::streamsize>(masks.size()));
    if (!out) throw std::runtime_error(std::string(argv[8]) + ": write failed");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "autotimm_paste: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
