// Unit tests of the TensorRT-free part of the C++ runtime (run by ctest).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "autotimm/engine.hpp"
#include "autotimm/image.hpp"
#include "autotimm/json.hpp"
#include "autotimm/postprocess.hpp"
#include "autotimm/sha256.hpp"

using namespace autotimm;

static int failures = 0;
#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                          \
    }                                                                      \
  } while (0)

static bool near(float a, float b, float tol = 1e-5f) { return std::fabs(a - b) <= tol; }

static void test_iou() {
  const float a[4] = {0, 0, 10, 10}, b[4] = {5, 0, 15, 10}, c[4] = {20, 20, 30, 30};
  CHECK(near(box_iou(a, b), 50.0f / 150.0f));
  CHECK(box_iou(a, c) == 0.0f);
  CHECK(near(box_iou(a, a), 1.0f));
}

static void test_nms_class_aware_and_agnostic() {
  // 3 candidates, 2 classes: candidates 0 and 1 overlap (IoU 0.82), candidate 2 is apart
  const std::vector<float> boxes = {0, 0, 10, 10, 1, 0, 11, 10, 50, 50, 60, 60};
  const std::vector<float> scores = {0.9f, 0.0f, 0.8f, 0.7f, 0.0f, 0.6f};  // (N=3, C=2)
  PostprocessConfig cfg;
  cfg.score_thresh = 0.5f;
  cfg.iou_thresh = 0.5f;
  auto d = nms_postprocess(boxes.data(), scores.data(), 3, 2, cfg);
  // class 0: cand 0 (0.9) suppresses cand 1 (0.8); class 1: cand 1 (0.7) and cand 2 (0.6) both kept
  CHECK(d.size() == 3);
  CHECK(near(d[0].score, 0.9f) && d[0].label == 0);
  CHECK(near(d[1].score, 0.7f) && d[1].label == 1 && near(d[1].x1, 1.0f));
  CHECK(near(d[2].score, 0.6f) && d[2].label == 1 && near(d[2].x1, 50.0f));
  cfg.class_agnostic = true;
  d = nms_postprocess(boxes.data(), scores.data(), 3, 2, cfg);
  CHECK(d.size() == 2 && near(d[0].score, 0.9f) && near(d[1].score, 0.6f));
  cfg.class_agnostic = false;
  cfg.max_detections = 1;
  CHECK(nms_postprocess(boxes.data(), scores.data(), 3, 2, cfg).size() == 1);
  cfg.max_detections = 100;
  cfg.score_thresh = 0.95f;
  CHECK(nms_postprocess(boxes.data(), scores.data(), 3, 2, cfg).empty());
}

static void test_pre_nms_top_k() {
  std::vector<float> boxes, scores;
  for (int i = 0; i < 50; ++i) {
    const float x = 20.0f * i;
    boxes.insert(boxes.end(), {x, 0, x + 10, 10});
    scores.push_back(0.1f + 0.01f * i);
  }
  PostprocessConfig cfg;
  cfg.pre_nms_top_k = 5;
  auto d = nms_postprocess(boxes.data(), scores.data(), 50, 1, cfg);
  CHECK(d.size() == 5 && near(d[0].score, 0.59f) && near(d[4].score, 0.55f));
}

static void test_argmax_candidates_and_no_top_k() {
  // candidate 0: class 1 best (0.8), class 0 also above the threshold (0.7): argmax keeps only class 1
  const std::vector<float> boxes = {0, 0, 10, 10, 50, 50, 60, 60};
  const std::vector<float> scores = {0.7f, 0.8f, 0.2f, 0.1f};  // (N=2, C=2)
  PostprocessConfig cfg;
  cfg.score_thresh = 0.5f;
  CHECK(nms_postprocess(boxes.data(), scores.data(), 2, 2, cfg).size() == 2);  // per class: (0, 0) and (0, 1)
  cfg.argmax = true;
  auto d = nms_postprocess(boxes.data(), scores.data(), 2, 2, cfg);
  CHECK(d.size() == 1 && d[0].label == 1 && near(d[0].score, 0.8f));
  // ties: the first best class, as torch.max
  const std::vector<float> tie = {0.6f, 0.6f, 0.0f, 0.0f};
  d = nms_postprocess(boxes.data(), tie.data(), 2, 2, cfg);
  CHECK(d.size() == 1 && d[0].label == 0);
  // pre_nms_top_k <= 0: every candidate goes to NMS
  std::vector<float> many_boxes, many_scores;
  for (int i = 0; i < 1500; ++i) {
    const float x = 20.0f * i;
    many_boxes.insert(many_boxes.end(), {x, 0, x + 10, 10});
    many_scores.push_back(0.51f + 0.0001f * i);
  }
  cfg.max_detections = 2000;
  cfg.pre_nms_top_k = 0;
  CHECK(nms_postprocess(many_boxes.data(), many_scores.data(), 1500, 1, cfg).size() == 1500);
  cfg.pre_nms_top_k = 1000;
  CHECK(nms_postprocess(many_boxes.data(), many_scores.data(), 1500, 1, cfg).size() == 1000);
}

static void test_family_metadata() {
  ModelInfo info;
  apply_family(Json::parse(R"({"name": "autotimm-fcos", "postprocess": {"candidates": "argmax",
      "pre_nms_top_k": null, "score_thresh": 0.25, "iou_thresh": 0.5, "max_detections": 7},
      "preprocess": {"resize": "letterbox", "align": "center", "fill": [114, 114, 114], "crop_fraction": 1.0}})"),
               info);
  CHECK(info.family == "autotimm-fcos" && info.postprocess.argmax && info.postprocess.pre_nms_top_k == 0);
  CHECK(near(info.postprocess.score_thresh, 0.25f) && info.postprocess.max_detections == 7);
  CHECK(info.preprocess.center && !info.preprocess.fill_mean && near(info.preprocess.fill_rgb[2], 114.0f));
}

static void test_to_image_and_json() {
  std::vector<Detection> d = {{10, 20, 300, 50, 0.5f, 1}};
  Letterbox lb{0.5f, 500, 60};
  to_image_pixels(d, lb);
  CHECK(near(d[0].x1, 20) && near(d[0].y1, 40) && near(d[0].x2, 500) && near(d[0].y2, 60));  // clipped
  std::vector<Detection> inside_out = {{40, 30, 20, 10, 0.5f, 0}};  // l + r < 0 (AutoTimm YOLOX): x2 < x1, y2 < y1
  to_image_pixels(inside_out, lb);
  CHECK(near(inside_out[0].x1, 40) && near(inside_out[0].y1, 20) && near(inside_out[0].x2, 80) &&
        near(inside_out[0].y2, 60));  // corners ordered as the Python runtime's
  const std::string js = detections_json(d, lb, {"a", "b\"q"}, "x.ppm");
  const Json parsed = Json::parse(js);
  CHECK(parsed["image"].string() == "x.ppm" && parsed["width"].integer() == 500);
  CHECK(parsed["detections"][0]["class_name"].string() == "b\"q");
  CHECK(near(static_cast<float>(parsed["detections"][0]["box"][2].number()), 500.0f));
}

static void test_json_parser() {
  const Json j = Json::parse(R"({"a": [1, 2.5, -3e2], "b": {"c": "x\u00e9\n"}, "t": true, "n": null})");
  CHECK(j["a"].size() == 3 && j["a"][2].number() == -300.0);
  CHECK(j["b"]["c"].string() == "x\xc3\xa9\n");
  CHECK(j["t"].boolean() && j["n"].is_null());
  bool threw = false;
  try {
    Json::parse("{\"a\": [1, 2}");
  } catch (const JsonError& e) {
    threw = std::string(e.what()).find("offset") != std::string::npos;
  }
  CHECK(threw);
}

static void test_sha256() {
  CHECK(sha256_hex(reinterpret_cast<const uint8_t*>(""), 0) ==
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  const std::string abc = "abc";
  CHECK(sha256_hex(reinterpret_cast<const uint8_t*>(abc.data()), abc.size()) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string m56 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";  // 56 bytes: two blocks
  CHECK(sha256_hex(reinterpret_cast<const uint8_t*>(m56.data()), m56.size()) ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void test_ppm_and_letterbox(const std::string& tmp) {
  const std::string path = tmp + "/t.ppm";
  {
    std::ofstream f(path, std::ios::binary);
    f << "P6\n# comment\n4 2\n255\n";
    for (int i = 0; i < 8; ++i) f.put(static_cast<char>(255)).put(0).put(static_cast<char>(i * 30));
  }
  const Image img = read_ppm(path);
  CHECK(img.width == 4 && img.height == 2 && img.rgb[2] == 0 && img.rgb[5] == 30);
  std::vector<float> chw(3 * 8 * 8);
  const Letterbox lb = letterbox_normalize(img, 8, 8, {0.5f, 0.5f, 0.5f}, {0.25f, 0.25f, 0.25f}, chw.data());
  CHECK(near(lb.scale, 2.0f) && lb.width == 4 && lb.height == 2);
  CHECK(near(chw[0], (1.0f - 0.5f) / 0.25f));          // red plane, top-left pixel: 255
  CHECK(near(chw[64 + 0], (0.0f - 0.5f) / 0.25f));     // green plane: 0
  CHECK(chw[7 * 8 + 0] == 0.0f);                        // padding row (image is 8x4 after scaling) = mean
  Preprocess centred;
  centred.center = true;
  centred.fill_mean = false;
  centred.fill_rgb = {114, 114, 114};
  const Letterbox lc = letterbox_normalize(img, 8, 8, {0.5f, 0.5f, 0.5f}, {0.25f, 0.25f, 0.25f}, chw.data(), centred);
  CHECK(near(lc.pad_x, 0.0f) && near(lc.pad_y, 2.0f));   // 8x4 image centred in 8x8: rows 2-5
  CHECK(near(chw[0], (114.0f / 255.0f - 0.5f) / 0.25f)); // top row is padding in the fill colour
  CHECK(near(chw[2 * 8 + 0], (1.0f - 0.5f) / 0.25f));   // the image starts on row 2
  std::vector<Detection> d = {{0, 2, 8, 6, 0.5f, 0}};
  to_image_pixels(d, lc);
  CHECK(near(d[0].x1, 0) && near(d[0].y1, 0) && near(d[0].x2, 4) && near(d[0].y2, 2));
  bool threw = false;
  {
    std::ofstream f(tmp + "/bad.ppm", std::ios::binary);
    f << "P6\n4 2\n255\nxx";
  }
  try {
    read_ppm(tmp + "/bad.ppm");
  } catch (const std::runtime_error& e) {
    threw = std::string(e.what()).find("truncated") != std::string::npos;
  }
  CHECK(threw);
}

int main(int argc, char** argv) {
  const std::string tmp = argc > 1 ? argv[1] : ".";
  test_iou();
  test_nms_class_aware_and_agnostic();
  test_pre_nms_top_k();
  test_argmax_candidates_and_no_top_k();
  test_family_metadata();
  test_to_image_and_json();
  test_json_parser();
  test_sha256();
  test_ppm_and_letterbox(tmp);
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all postprocess tests passed\n");
  return 0;
}
