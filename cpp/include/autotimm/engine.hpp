// Loads a TensorRT / TensorRT-RTX engine written by autotimm-export, after checking its sidecar, and
// runs it.  Built only when CMake finds NvInfer.h and the library (see cpp/CMakeLists.txt).
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "autotimm/image.hpp"
#include "autotimm/json.hpp"
#include "autotimm/masks.hpp"
#include "autotimm/postprocess.hpp"

namespace autotimm {

struct ModelInfo {
  std::string task, decode, family;
  int input_h = 0, input_w = 0;
  std::array<float, 3> mean{}, std{};
  std::vector<std::string> class_names;
  PostprocessConfig postprocess;  // the family's rule and the model's thresholds
  Preprocess preprocess;          // the family's resize (letterbox / stretch), placement and padding colour
  MaskSpec masks;                 // instance segmentation: the family's masks (has_masks)
  bool has_masks = false;
};

class Engine {
 public:
  // Reads <engine>.json, checks size, SHA-256, magic bytes and library version, then deserialises
  // with engine host code disallowed.  Throws std::runtime_error saying what is wrong.
  explicit Engine(const std::string& engine_path);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const Json& sidecar() const { return sidecar_; }
  const ModelInfo& model() const { return model_; }

  // Runs one batch (B, 3, H, W) float32; returns the float32 outputs by name (host copies).
  std::vector<std::vector<float>> infer(const std::vector<float>& images, int batch, int h, int w,
                                        std::vector<std::vector<long>>* shapes);
  const std::vector<std::string>& output_names() const { return outputs_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  Json sidecar_;
  ModelInfo model_;
  std::vector<std::string> outputs_;
};

// Parses sidecar["model"] (the ONNX metadata: JSON-encoded strings) into a ModelInfo.
ModelInfo model_info_from_sidecar(const Json& sidecar);
// The "family" declaration (ONNX metadata key "family", a JSON object) into info's postprocess / preprocess / masks
// (each part optional: absent in exports made before families, and "masks" only in instance segmentors; what is
// absent keeps the seed's defaults).
void apply_family(const Json& family, ModelInfo& info);

}  // namespace autotimm
