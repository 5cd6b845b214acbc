// TensorRT / TensorRT-RTX engine loading and execution (compiled only when CMake finds TensorRT).
#include "autotimm/engine.hpp"

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include "autotimm/sha256.hpp"

namespace autotimm {

namespace {
class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) {
      std::fprintf(stderr, "[TensorRT] %s\n", msg);
      last = msg;
    }
  }
  std::string last;
};

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

size_t volume(const nvinfer1::Dims& d) {
  size_t v = 1;
  for (int i = 0; i < d.nbDims; ++i) v *= static_cast<size_t>(d.d[i]);
  return v;
}
}  // namespace

struct Engine::Impl {
  Logger logger;
  std::unique_ptr<nvinfer1::IRuntime> runtime;
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
  std::unique_ptr<nvinfer1::IExecutionContext> context;
  cudaStream_t stream = nullptr;
  std::string input;
  std::vector<void*> buffers;
  ~Impl() {
    for (void* p : buffers) cudaFree(p);
    if (stream) cudaStreamDestroy(stream);
  }
};

Engine::Engine(const std::string& path) : impl_(new Impl) {
  const std::vector<uint8_t> side_bytes = read_file(path + ".json");
  sidecar_ = Json::parse(std::string(side_bytes.begin(), side_bytes.end()));
  if (!sidecar_.has("format") || sidecar_["format"].string() != "autotimm-deploy-engine/1")
    throw std::runtime_error(path + ".json: not an autotimm-deploy engine sidecar");
  const std::vector<uint8_t> data = read_file(path);
  if (static_cast<long long>(data.size()) != sidecar_["engine"]["bytes"].integer())
    throw std::runtime_error(path + ": size differs from the sidecar (truncated or replaced); re-export it");
  if (sha256_hex(data) != sidecar_["engine"]["sha256"].string())
    throw std::runtime_error(path + ": SHA-256 does not match the sidecar; the file was modified; re-export it");
  const std::string lib = sidecar_["library"]["name"].string();
  const std::string magic = lib == "tensorrt-rtx" ? "vtrt" : "ftrt";
  if (data.size() < 4 || std::string(data.begin(), data.begin() + 4) != magic)
    throw std::runtime_error(path + ": not a " + lib + " engine");
#if defined(NV_TENSORRT_MAJOR)
  const std::string have = std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
                           std::to_string(NV_TENSORRT_PATCH) + ".";
  const std::string want = sidecar_["library"]["version"].string();
  if (want.compare(0, have.size(), have) != 0)
    throw std::runtime_error(path + ": built with " + lib + " " + want + ", this program uses " + have +
                             "x; engines load only in the version that built them");
#endif
  model_ = model_info_from_sidecar(sidecar_);
  impl_->runtime.reset(nvinfer1::createInferRuntime(impl_->logger));
  if (!impl_->runtime) throw std::runtime_error("createInferRuntime failed: " + impl_->logger.last);
  impl_->runtime->setEngineHostCodeAllowed(false);
  impl_->engine.reset(impl_->runtime->deserializeCudaEngine(data.data(), data.size()));
  if (!impl_->engine) throw std::runtime_error(path + ": deserialisation failed: " + impl_->logger.last);
  impl_->context.reset(impl_->engine->createExecutionContext());
  if (!impl_->context) throw std::runtime_error(path + ": cannot create an execution context");
  check_cuda(cudaStreamCreate(&impl_->stream), "cudaStreamCreate");
  impl_->input = sidecar_["io"]["inputs"][0]["name"].string();
  for (const auto& o : sidecar_["io"]["outputs"].array()) outputs_.push_back(o["name"].string());
}

Engine::~Engine() = default;

std::vector<std::vector<float>> Engine::infer(const std::vector<float>& images, int batch, int h, int w,
                                              std::vector<std::vector<long>>* shapes) {
  auto& im = *impl_;
  for (void* p : im.buffers) cudaFree(p);
  im.buffers.clear();
  if (!im.context->setInputShape(im.input.c_str(), nvinfer1::Dims4{batch, 3, h, w}))
    throw std::runtime_error("input shape outside the engine's optimisation profile");
  void* in = nullptr;
  check_cuda(cudaMalloc(&in, images.size() * sizeof(float)), "cudaMalloc");
  im.buffers.push_back(in);
  check_cuda(cudaMemcpyAsync(in, images.data(), images.size() * sizeof(float), cudaMemcpyHostToDevice, im.stream),
             "cudaMemcpyAsync");
  im.context->setTensorAddress(im.input.c_str(), in);
  std::vector<std::vector<float>> out;
  std::vector<void*> dev;
  for (const auto& name : outputs_) {
    const nvinfer1::Dims d = im.context->getTensorShape(name.c_str());
    if (im.engine->getTensorDataType(name.c_str()) != nvinfer1::DataType::kFLOAT)
      throw std::runtime_error("output " + name + " is not float32 (export with FP32 outputs)");
    void* p = nullptr;
    check_cuda(cudaMalloc(&p, volume(d) * sizeof(float)), "cudaMalloc");
    im.buffers.push_back(p);
    im.context->setTensorAddress(name.c_str(), p);
    out.emplace_back(volume(d));
    dev.push_back(p);
    if (shapes) shapes->push_back(std::vector<long>(d.d, d.d + d.nbDims));
  }
  if (!im.context->enqueueV3(im.stream)) throw std::runtime_error("enqueueV3 failed: " + im.logger.last);
  for (size_t k = 0; k < out.size(); ++k)
    check_cuda(cudaMemcpyAsync(out[k].data(), dev[k], out[k].size() * sizeof(float), cudaMemcpyDeviceToHost, im.stream),
               "cudaMemcpyAsync");
  check_cuda(cudaStreamSynchronize(im.stream), "cudaStreamSynchronize");
  return out;
}

}  // namespace autotimm
