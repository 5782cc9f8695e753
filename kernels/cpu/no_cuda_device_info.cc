// CudaDeviceCount() for builds without the CUDA backend: there is no usable device.
#include "kernels/include/kvc/kernels/device_info.h"

namespace kvc::kernels {
int CudaDeviceCount() { return 0; }
}  // namespace kvc::kernels
