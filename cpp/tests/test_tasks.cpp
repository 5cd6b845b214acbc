// Unit tests of the instance-mask and semantic-segmentation post-processing and the stretch resize (run by ctest).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "autotimm/dump.hpp"
#include "autotimm/engine.hpp"
#include "autotimm/image.hpp"
#include "autotimm/json.hpp"
#include "autotimm/masks.hpp"
#include "autotimm/segmentation.hpp"

using namespace autotimm;

static int failures = 0;
#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                                   \
    }                                                                               \
  } while (0)

static bool same(const std::vector<float>& a, const std::vector<float>& b) { return a == b; }

static void test_resize_bilinear() {
  // PyTorch's align_corners=False: 2 -> 4 samples read 0, 0.25, 0.75, 1 (edges clamped); 4 -> 2 average pairs
  const std::vector<float> x = {0, 1, 2, 3};  // (2, 2)
  CHECK(same(resize_bilinear(x.data(), 2, 2, 4, 4), {0, 0.25f, 0.75f, 1, 0.5f, 0.75f, 1.25f, 1.5f,  //
                                                     1.5f, 1.75f, 2.25f, 2.5f, 2, 2.25f, 2.75f, 3}));
  CHECK(same(resize_bilinear(x.data(), 1, 4, 1, 2), {0.5f, 2.5f}));
  CHECK(same(resize_bilinear(x.data(), 2, 2, 2, 2), x));   // same size: copied
  CHECK(same(resize_bilinear(x.data(), 2, 2, 1, 1), {1.5f}));
  const BilinearAxis a(3, 7);  // s = (d + 0.5) * float32(3 / 7) - 0.5, rounded to float32
  CHECK(a.i0[0] == 0 && a.w1[0] == 0.0f && a.i0[6] == 2 && a.i1[6] == 2);
  const float s3 = static_cast<float>(3.5 * static_cast<double>(3.0f / 7.0f) - 0.5);  // ~1: float32 decides
  CHECK(a.i0[3] == static_cast<int>(std::floor(s3)) && a.w1[3] == s3 - std::floor(s3) && a.w0[3] == 1.0f - a.w1[3]);
}

static void test_paste_region_and_masks() {
  float b1[4] = {-3, -2, 4.2f, 3.0f};
  PasteRegion r = paste_region(b1, 5, 6);
  CHECK(r.x1 == 0 && r.y1 == 0 && r.x2 == 5 && r.y2 == 3);
  float outside[4] = {10, 10, 12, 12};  // beyond the frame: the last column / row, one pixel
  r = paste_region(outside, 5, 6);
  CHECK(r.x1 == 5 && r.x2 == 6 && r.y1 == 4 && r.y2 == 5);
  float tiny[4] = {2.2f, 3.1f, 2.3f, 3.2f};
  r = paste_region(tiny, 5, 6);
  CHECK(r.x1 == 2 && r.x2 == 3 && r.y1 == 3 && r.y2 == 4);
  float flipped[4] = {3, 3, 1, 1};  // x2 < x1: still one pixel
  r = paste_region(flipped, 5, 6);
  CHECK(r.x1 == 3 && r.x2 == 4 && r.y1 == 3 && r.y2 == 4);
  // the Python docstring's example: row 2, columns 1-4
  std::vector<float> p(28 * 28, 0.9f);
  const float box[4] = {1.5f, 2.0f, 4.2f, 3.0f};
  auto m = paste_mask(p.data(), 28, 28, box, 5, 6, 0.5f);
  int on = 0;
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 6; ++x) {
      on += m[y * 6 + x];
      if (m[y * 6 + x]) CHECK(y == 2 && x >= 1 && x <= 4);
    }
  CHECK(on == 4);
  m = paste_mask(p.data(), 28, 28, tiny, 5, 6, 0.5f);  // a 1-px box: one pixel
  CHECK(m[3 * 6 + 2] == 1 && std::count(m.begin(), m.end(), 1) == 1);
  m = paste_mask(p.data(), 28, 28, outside, 5, 6, 0.5f);
  CHECK(m[4 * 6 + 5] == 1 && std::count(m.begin(), m.end(), 1) == 1);
  std::vector<float> half(28 * 28, 0.5f);  // > threshold, not >=
  m = paste_mask(half.data(), 28, 28, b1, 5, 6, 0.5f);
  CHECK(std::count(m.begin(), m.end(), 1) == 0);
  // a gradient: the left half of the box above 0.5
  std::vector<float> g(4);
  g = {0.0f, 1.0f, 0.0f, 1.0f};  // (2, 2): columns 0 and 1
  const float wide[4] = {0, 0, 4, 1};
  m = paste_mask(g.data(), 2, 2, wide, 1, 4, 0.5f);  // columns read 0, 0.25, 0.75, 1
  CHECK(m == std::vector<uint8_t>({0, 0, 1, 1}));
  const float two[8] = {0, 0, 4, 1, 1, 0, 2, 1};
  const std::vector<float> gg = {0, 1, 0, 1, 0.9f, 0.9f, 0.9f, 0.9f};
  CHECK(paste_masks(gg.data(), 2, 2, 2, two, 1, 4, 0.5f) == std::vector<uint8_t>({0, 0, 1, 1, 0, 1, 0, 0}));
}

static void test_rle() {
  // pycocotools.mask.encode(np.asfortranarray(m))["counts"]
  const std::vector<uint8_t> a = {0, 1, 1, 1};
  CHECK(rle_counts(a.data(), 2, 2) == "13");
  const std::vector<uint8_t> zeros(12, 0), ones(12, 1), z1(1, 0), o1(1, 1);
  CHECK(rle_counts(zeros.data(), 3, 4) == "<");
  CHECK(rle_counts(ones.data(), 3, 4) == "0<");
  CHECK(rle_counts(z1.data(), 1, 1) == "1" && rle_counts(o1.data(), 1, 1) == "01");
  std::vector<uint8_t> m(40 * 50, 0);  // m[5:35, 3:45] = 1; m[10, :] = 1
  for (int y = 0; y < 40; ++y)
    for (int x = 0; x < 50; ++x) m[y * 50 + x] = (y >= 5 && y < 35 && x >= 3 && x < 45) || y == 10;
  CHECK(rle_counts(m.data(), 40, 50) ==
        ":1W1000Km0XO0000000000000000000000000000000000000000000000000000000000000000000000000000000005SOh00000000F");
  const Json j = Json::parse(rle_json(a.data(), 2, 2));
  CHECK(j["size"][0].integer() == 2 && j["counts"].string() == "13");
}

static void test_stretch_and_mapping() {
  Image img;
  img.width = 4;
  img.height = 2;
  img.rgb.assign(4 * 2 * 3, 255);
  Preprocess pre;
  pre.resize = "stretch";
  std::vector<float> chw(3 * 8 * 6);
  const Letterbox lb = letterbox_normalize(img, 8, 6, {0.5f, 0.5f, 0.5f}, {0.5f, 0.5f, 0.5f}, chw.data(), pre);
  CHECK(lb.scale == 1.5 && lb.scale_y == 4.0 && lb.sy() == 4.0 && lb.pad_x == 0 && lb.pad_y == 0);
  CHECK(chw[7 * 6 + 5] == 1.0f && chw[0] == 1.0f);  // no padding: the image fills the input
  std::vector<long> rows, cols;
  image_grid(lb, rows, cols);
  CHECK(rows == std::vector<long>({2, 6}) && cols == std::vector<long>({0, 2, 3, 5}));
  std::vector<Detection> d = {{0, 0, 6, 8, 0.5f, 0}, {3, 2, 4.5f, 6, 0.5f, 0}};
  to_image_pixels(d, lb);
  CHECK(d[0].x2 == 4.0f && d[0].y2 == 2.0f && d[1].x1 == 2.0f && d[1].y1 == 0.5f && d[1].x2 == 3.0f);
  std::vector<uint8_t> net(8 * 6, 0);  // network pixel (6, 3) on: image pixel (1, 2)
  net[6 * 6 + 3] = 1;
  const auto im = mask_to_image(net.data(), 8, 6, lb);
  CHECK(im.size() == 8 && im[1 * 4 + 2] == 1 && std::count(im.begin(), im.end(), 1) == 1);
  // a letterbox whose image extends beyond the network input: those pixels are outside the mask (0)
  Letterbox shifted{1.0, 3, 3, 0.0, 6.0};
  std::vector<uint8_t> full(8 * 6, 1);
  CHECK(mask_to_image(full.data(), 8, 6, shifted) == std::vector<uint8_t>({1, 1, 1, 1, 1, 1, 0, 0, 0}));
  Letterbox plain{0.5, 4, 2};  // scale_y 0: the same as scale
  CHECK(plain.sy() == 0.5);
  pre.resize = "resize_crop";
  bool threw = false;
  try {
    letterbox_normalize(img, 8, 6, {0.5f, 0.5f, 0.5f}, {0.5f, 0.5f, 0.5f}, chw.data(), pre);
  } catch (const std::runtime_error&) {
    threw = true;
  }
  CHECK(threw);
}

static void test_segmentation() {
  // class 0 high at the top-left, class 1 at the bottom-right; resized 2x2 -> 4x4, ties on the anti-diagonal -> 0
  const std::vector<float> logits = {1, 0, 0, 0, 0, 0, 0, 1};
  const auto l = argmax_labels(logits.data(), 2, 2, 2, 4, 4);
  CHECK(l == std::vector<int32_t>({0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 1}));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> special = {3, 1, 3, nan, 1, 9};  // (3 classes, 1, 2): a tie -> 0; the NaN wins -> 1
  CHECK(argmax_labels(special.data(), 3, 1, 2, 1, 2) == std::vector<int32_t>({0, 1}));
  // labels (2, 3) at the head's resolution, network 8x12, a 4x4 image stretched: rows 1,3,5,7 -> cells 0,0,1,1;
  // cols 1,4,7,10 -> cells 0,1,1,2
  const std::vector<int32_t> lab = {0, 1, 2, 3, 4, 5};
  const Letterbox st{3.0, 4, 4, 0.0, 0.0, 2.0};
  CHECK(labels_to_image(lab.data(), 2, 3, 8, 12, st) ==
        std::vector<int32_t>({0, 1, 1, 2, 0, 1, 1, 2, 3, 4, 4, 5, 3, 4, 4, 5}));
  const Letterbox below{1.0, 2, 3, 0.0, 7.0};  // rows 7, 8, 9: beyond the input -> the last cell
  CHECK(labels_to_image(lab.data(), 2, 3, 8, 12, below) == std::vector<int32_t>({3, 3, 3, 3, 3, 3}));
  const std::vector<int32_t> map = {2, 2, 0, 7, 2, 0, 0, 5};
  const auto areas = class_areas(map, {"bg", "a", "b"});
  CHECK(areas.size() == 4 && areas[0].label == 0 && areas[1].label == 2 && areas[2].label == 5);  // 0 and 2: 3 each
  CHECK(areas[3].class_name == "7" && areas[0].class_name == "bg" && areas[0].fraction == 3.0 / 8.0);
  const Json j = Json::parse(segmentation_json(map, Letterbox{1.0, 4, 2}, {"bg", "a", "b"}));
  CHECK(j["width"].integer() == 4 && j["classes"].size() == 4 && j["classes"][1]["class_name"].string() == "b");
  CHECK(j["classes"][2]["fraction"].number() == 0.125 && !j.has("label_map"));
  std::vector<int32_t> big(128, 0);
  big[0] = 1;  // 1/128 = 0.0078125: round half to even as Python's round(f, 6)
  CHECK(Json::parse(segmentation_json(big, Letterbox{1.0, 128, 1}, {}))["classes"][1]["fraction"].number() == 0.007812);
}

static void test_family_masks_and_dispatch() {
  ModelInfo info;
  apply_family(Json::parse(R"({"name": "autotimm-instance", "postprocess": {"candidates": "argmax",
      "pre_nms_top_k": null, "score_thresh": 0.05, "iou_thresh": 0.5, "max_detections": 100},
      "preprocess": {"resize": "stretch", "align": "top-left", "fill": null, "crop_fraction": 1.0},
      "masks": {"feature_stride": 8, "roi_size": 7, "mask_size": 14, "sampling_ratio": 2, "aligned": false,
                "threshold": 0.4}})"),
               info);
  CHECK(info.has_masks && info.masks.roi_size == 7 && info.masks.mask_size == 14 && info.masks.sampling_ratio == 2);
  CHECK(!info.masks.aligned && info.masks.threshold == 0.4f && info.preprocess.resize == "stretch");
  ModelInfo det;
  apply_family(Json::parse(R"({"name": "x", "masks": null})"), det);
  CHECK(!det.has_masks && det.masks.mask_size == 28);
  CHECK(dump_task("detection") == detections_from_dump && dump_task("segmentation") == segmentation_from_dump);
  CHECK(dump_task("instance_segmentation") == instances_from_dump);
  bool threw = false;
  try {
    dump_task("pose");
  } catch (const std::runtime_error& e) {
    threw = std::string(e.what()).find("known: detection, instance_segmentation, segmentation") != std::string::npos;
  }
  CHECK(threw);
}

int main() {
  test_resize_bilinear();
  test_paste_region_and_masks();
  test_rle();
  test_stretch_and_mapping();
  test_segmentation();
  test_family_masks_and_dispatch();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all task tests passed\n");
  return 0;
}
