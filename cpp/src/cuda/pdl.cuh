// Programmatic dependent launch (sm_90+): a kernel launched with pdl_attribute may start while the
// kernel before it on the stream is still running, once every block of that one has called
// pdl_trigger (or exited). It must call pdl_wait before it reads anything the kernels before it
// write and before it writes anything they read; pdl_wait returns once those kernels have finished
// and their writes are visible. What comes before pdl_wait may only read memory that no earlier
// work writes (an Mlp's weights from initializers), so that a dense kernel's prologue (launch,
// weight copies) runs in the tail of the kernel before it instead of after it. CUDA-graph capture
// keeps the dependency as a programmatic edge. Elsewhere (older GPUs, a launch without the
// attribute) both calls do nothing and the stream orders the kernels as usual.
//
// Every kernel launched with the attribute calls pdl_wait on every path that reads or writes
// global memory, so that its completion implies its predecessors' (the chain stays ordered).
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace dd {
namespace {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel (if launched with pdl_attribute) start its blocks as SMs free up.
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// The launch attribute where the device has programmatic dependent launch (compute capability 9+).
// Returns the number of attributes written (0 or 1).
inline int pdl_attribute(int major, cudaLaunchAttribute* attr) {
  if (major < 9) return 0;
  attr->id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr->val.programmaticStreamSerializationAllowed = 1;
  return 1;
}

// The configuration of a cudaLaunchKernelEx launch, no attributes yet (the launches add theirs).
inline cudaLaunchConfig_t launch_config(dim3 grid, dim3 block, size_t smem, cudaStream_t stream) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  return cfg;
}

// kernel<<<grid, block, smem, stream>>>(args...) with pdl_attribute where the device has it.
template <typename... KernelArgs, typename... Args>
cudaError_t launch_pdl(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       int major, Args&&... args) {
  cudaLaunchConfig_t cfg = launch_config(grid, block, smem, stream);
  cudaLaunchAttribute attr[1];
  cfg.attrs = attr;
  cfg.numAttrs = (unsigned)pdl_attribute(major, attr);
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace
}  // namespace dd
