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

// How an image becomes the network input (a model family's "preprocess" declaration).
struct Preprocess {
  std::string resize = "letterbox";   // "letterbox" or "stretch" (letterbox_normalize; not "resize_crop")
  bool center = false;                // letterbox: centred (AutoTimm: PadIfNeeded) instead of top-left
  bool fill_mean = true;              // pad with the mean colour (normalises to 0) ...
  std::array<float, 3> fill_rgb{};    // ... or with this colour (0-255), e.g. AutoTimm's 114
  float crop_fraction = 1.0f;         // resize_crop only
};

// Resize into (net_h, net_w) as pre.resize says, then (x / 255 - mean) / std into a CHW float buffer of
// net_h * net_w * 3 values; returns where the image went (as the Python runtime's letterbox_images):
// - "letterbox": scale = min(net_h / h, net_w / w), new size rounded half-to-even as Python's round() (at least
//   1 px), placed top-left or centred (offset floor((net - new) / 2)), padding = mean colour or pre.fill_rgb;
// - "stretch" (AutoTimm's segmentation eval A.Resize): both sides to the network size, aspect not kept:
//   scale = net_w / w, scale_y = net_h / h, no padding.
// The resize is bilinear with half-pixel centres and no antialias (PIL's BILINEAR antialiases when it shrinks: the
// network input differs from the Python runtime's there, not where boxes and masks map back).  Any other
// pre.resize throws std::runtime_error.
Letterbox letterbox_normalize(const Image& img, int net_h, int net_w, const std::array<float, 3>& mean,
                              const std::array<float, 3>& std, float* chw, const Preprocess& pre = Preprocess());

}  // namespace autotimm
