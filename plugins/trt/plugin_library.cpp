// Entry points of libdlrm_deploy_trt.so that TensorRT looks up when it loads a plugin library
// (`trtexec --dynamicPlugins=`, IPluginRegistry::loadLibrary): getCreators and setLoggerFinder.
// Nothing here links against TensorRT: TensorRT hands over every object the plugin calls.
#include <cstdarg>
#include <cstdio>
#include <mutex>

#include "embedding_bag_plugin.h"

#define DD_TRT_EXPORT extern "C" __attribute__((visibility("default")))

namespace dlrm_deploy_trt {
namespace {
std::mutex g_mutex;
nvinfer1::ILoggerFinder* g_finder = nullptr;
}  // namespace

void log(nvinfer1::ILogger::Severity severity, const char* fmt, ...) noexcept {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  nvinfer1::ILogger* logger = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    // findLogger() names the logger of the engine or context calling the plugin on this thread.
    if (g_finder) logger = g_finder->findLogger();
  }
  if (logger) {
    logger->log(severity, buf);
  } else if (severity <= nvinfer1::ILogger::Severity::kWARNING) {
    std::fprintf(stderr, "[dlrm_deploy EmbeddingBag] %s\n", buf);
  }
}

}  // namespace dlrm_deploy_trt

DD_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  std::lock_guard<std::mutex> lock(dlrm_deploy_trt::g_mutex);
  dlrm_deploy_trt::g_finder = finder;
}

DD_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nb_creators) {
  static dlrm_deploy_trt::EmbeddingBagCreator creator;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
  nb_creators = 1;
  return creators;
}
