// How the .cu files launch kernels: launch_kernel(kernel, blocks, threads,
// stream, args...) returns the launch's cudaError_t. Compiled by nvcc it is
// the <<<>>> launch; with -DUNSEEN_FAST_EMULATE_CUDA (a C++ compiler, tests
// on machines without a GPU) the same kernels run on the CPU (emulate.h).
#pragma once

#ifdef UNSEEN_FAST_EMULATE_CUDA
#include "emulate.h"
#else
#include <cuda_runtime_api.h>

namespace unseen_fast::cuda {

template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), unsigned blocks, unsigned threads, cudaStream_t stream,
                          Args&&... args) {
  kernel<<<blocks, threads, 0, stream>>>(static_cast<Args&&>(args)...);
  return cudaGetLastError();
}

}  // namespace unseen_fast::cuda
#endif
