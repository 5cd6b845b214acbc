// Image input for the C++ runtime: binary PPM (P6) or raw RGB, letterboxed and normalised.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "autotimm/postprocess.hpp"

namespace autotimm {

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // HxWx3, row-major
};

// Reads a binary PPM (P6, maxval 255). Throws std::runtime_error naming the file and the problem.
Image read_ppm(const std::string& path);
// Raw interleaved RGB bytes of a known size.
Image read_raw_rgb(const std::string& path, int width, int height);

// Letterbox into (net_h, net_w): scale = min(net_h / h, net_w / w), new size rounded half-to-even as
// Python's round(), bilinear resize (half-pixel centres, no antialias), top-left, padding = mean
// colour; then (x / 255 - mean) / std into a CHW float buffer of net_h * net_w * 3 values.
Letterbox letterbox_normalize(const Image& img, int net_h, int net_w, const std::array<float, 3>& mean,
                              const std::array<float, 3>& std, float* chw);

}  // namespace autotimm
