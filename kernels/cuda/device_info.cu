#include <cuda_runtime_api.h>

#include "kernels/include/kvc/kernels/device_info.h"

namespace kvc::kernels {

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

}  // namespace kvc::kernels
