#include "autotimm/image.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <stdexcept>

namespace autotimm {

namespace {
std::string token(std::istream& in) {
  std::string t;
  char c;
  while (in.get(c)) {
    if (c == '#') {
      std::string line;
      std::getline(in, line);
      continue;
    }
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (!t.empty()) break;
      continue;
    }
    t += c;
  }
  return t;
}
}  // namespace

Image read_ppm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  if (token(in) != "P6") throw std::runtime_error(path + ": not a binary PPM (P6) file");
  Image img;
  try {
    img.width = std::stoi(token(in));
    img.height = std::stoi(token(in));
    if (std::stoi(token(in)) != 255) throw std::runtime_error(path + ": only maxval 255 is supported");
  } catch (const std::logic_error&) {
    throw std::runtime_error(path + ": malformed PPM header");
  }
  if (img.width < 1 || img.height < 1 || img.width > 65536 || img.height > 65536)
    throw std::runtime_error(path + ": bad PPM size");
  img.rgb.resize(static_cast<size_t>(img.width) * img.height * 3);
  in.read(reinterpret_cast<char*>(img.rgb.data()), static_cast<std::streamsize>(img.rgb.size()));
  if (in.gcount() != static_cast<std::streamsize>(img.rgb.size())) throw std::runtime_error(path + ": truncated PPM data");
  return img;
}

Image read_raw_rgb(const std::string& path, int width, int height) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  Image img;
  img.width = width;
  img.height = height;
  img.rgb.resize(static_cast<size_t>(width) * height * 3);
  in.read(reinterpret_cast<char*>(img.rgb.data()), static_cast<std::streamsize>(img.rgb.size()));
  if (in.gcount() != static_cast<std::streamsize>(img.rgb.size()))
    throw std::runtime_error(path + ": expected " + std::to_string(img.rgb.size()) + " bytes of RGB");
  return img;
}

void write_ppm(const Image& img, const std::string& path) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error(path + ": cannot write");
  out << "P6\n" << img.width << " " << img.height << "\n255\n";
  out.write(reinterpret_cast<const char*>(img.rgb.data()), static_cast<std::streamsize>(img.rgb.size()));
  if (!out) throw std::runtime_error(path + ": write failed");
}

Image apply_exif_orientation(const Image& img, int orientation) {
  if (orientation < 1 || orientation > 8)
    throw std::runtime_error("EXIF orientation must be 1-8, got " + std::to_string(orientation));
  const int w = img.width, h = img.height;
  const bool swap = orientation >= 5;  // 5-8 exchange width and height
  Image out;
  out.width = swap ? h : w;
  out.height = swap ? w : h;
  out.rgb.resize(img.rgb.size());
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int sx = x, sy = y;  // the stored pixel shown at (x, y)
      switch (orientation) {
        case 2: sx = w - 1 - x; break;
        case 3: sx = w - 1 - x; sy = h - 1 - y; break;
        case 4: sy = h - 1 - y; break;
        case 5: sx = y; sy = x; break;
        case 6: sx = y; sy = h - 1 - x; break;
        case 7: sx = w - 1 - y; sy = h - 1 - x; break;
        case 8: sx = w - 1 - y; sy = x; break;
        default: break;
      }
      for (int c = 0; c < 3; ++c)
        out.rgb[(static_cast<size_t>(y) * out.width + x) * 3 + c] = img.rgb[(static_cast<size_t>(sy) * w + sx) * 3 + c];
    }
  }
  return out;
}

Letterbox letterbox_normalize(const Image& img, int net_h, int net_w, const std::array<float, 3>& mean,
                              const std::array<float, 3>& std, float* chw, const Preprocess& pre) {
  Letterbox lb;
  lb.width = img.width;
  lb.height = img.height;
  int nh = net_h, nw = net_w, off_x = 0, off_y = 0;
  if (pre.resize == "stretch") {
    lb.scale = static_cast<double>(net_w) / img.width;
    lb.scale_y = static_cast<double>(net_h) / img.height;
  } else if (pre.resize == "letterbox") {
    const double scale = std::min(static_cast<double>(net_h) / img.height, static_cast<double>(net_w) / img.width);
    lb.scale = scale;
    nh = std::max(1, static_cast<int>(std::nearbyint(img.height * scale)));
    nw = std::max(1, static_cast<int>(std::nearbyint(img.width * scale)));
    off_x = pre.center ? (net_w - nw) / 2 : 0;
    off_y = pre.center ? (net_h - nh) / 2 : 0;
  } else {
    throw std::runtime_error("preprocessing '" + pre.resize + "' is not implemented in the C++ runtime "
                             "(letterbox and stretch are)");
  }
  lb.pad_x = off_x;
  lb.pad_y = off_y;
  const size_t plane = static_cast<size_t>(net_h) * net_w;
  for (int c = 0; c < 3; ++c) {  // the mean colour normalises to 0
    const float v = pre.fill_mean ? 0.0f : static_cast<float>((pre.fill_rgb[c] / 255.0 - mean[c]) / std[c]);
    std::fill(chw + c * plane, chw + (c + 1) * plane, v);
  }
  const double sy = static_cast<double>(img.height) / nh, sx = static_cast<double>(img.width) / nw;
  for (int y = 0; y < nh; ++y) {
    const double fy = std::clamp((y + 0.5) * sy - 0.5, 0.0, img.height - 1.0);
    const int y0 = static_cast<int>(fy), y1 = std::min(y0 + 1, img.height - 1);
    const double wy = fy - y0;
    for (int x = 0; x < nw; ++x) {
      const double fx = std::clamp((x + 0.5) * sx - 0.5, 0.0, img.width - 1.0);
      const int x0 = static_cast<int>(fx), x1 = std::min(x0 + 1, img.width - 1);
      const double wx = fx - x0;
      for (int c = 0; c < 3; ++c) {
        auto px = [&](int yy, int xx) { return static_cast<double>(img.rgb[(static_cast<size_t>(yy) * img.width + xx) * 3 + c]); };
        const double v = (1 - wy) * ((1 - wx) * px(y0, x0) + wx * px(y0, x1)) + wy * ((1 - wx) * px(y1, x0) + wx * px(y1, x1));
        chw[c * plane + static_cast<size_t>(y + off_y) * net_w + (x + off_x)] =
            static_cast<float>((v / 255.0 - mean[c]) / std[c]);
      }
    }
  }
  return lb;
}

}  // namespace autotimm
