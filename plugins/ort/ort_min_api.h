// Oldest ONNX Runtime C API our ONNX Runtime code uses (ORT 1.18), for the op library and the Triton
// backend alike: both ask ORT for this version, so they load in ORT 1.18 and every newer release
// even though they are compiled against newer headers.
#pragma once

#include <cstdint>

namespace dd_ort {
constexpr uint32_t kMinOrtApiVersion = 18;
}  // namespace dd_ort
