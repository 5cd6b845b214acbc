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
// Writes a binary PPM (P6, maxval 255).
void write_ppm(const Image& img, const std::string& path);

// The displayed picture of an image stored with EXIF orientation 1-8, as PIL's ImageOps.exif_transpose and the
// Python runtime: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90
// counter-clockwise.  Run it before letterbox_normalize so that boxes are in the displayed frame.
Image apply_exif_orientation(const Image& img, int orientation);

// Where a letterboxed image goes and what fills the rest (a model family's "preprocess" declaration).
struct Preprocess {
  std::string resize = "letterbox";   // letterbox_normalize implements "letterbox" (not "resize_crop")
  bool center = false;                // centred (AutoTimm: PadIfNeeded) instead of top-left
  bool fill_mean = true;              // pad with the mean colour (normalises to 0) ...
  std::array<float, 3> fill_rgb{};    // ... or with this colour (0-255), e.g. AutoTimm's 114
};

// Letterbox into (net_h, net_w): scale = min(net_h / h, net_w / w), new size rounded half-to-even as
// Python's round(), bilinear resize (half-pixel centres, no antialias), placed top-left or centred
// (offset floor((net - new) / 2)), padding = mean colour or pre.fill_rgb; then (x / 255 - mean) / std
// into a CHW float buffer of net_h * net_w * 3 values.
Letterbox letterbox_normalize(const Image& img, int net_h, int net_w, const std::array<float, 3>& mean,
                              const std::array<float, 3>& std, float* chw, const Preprocess& pre = Preprocess());

}  // namespace autotimm
