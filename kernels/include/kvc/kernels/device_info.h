// Host-only query of the CUDA devices visible to this process (no CUDA types in this header).
// Implemented in kernels/cuda when the CUDA backend is built.
#ifndef KVC_KERNELS_DEVICE_INFO_H_
#define KVC_KERNELS_DEVICE_INFO_H_

namespace kvc::kernels {

// Number of CUDA devices this process can use; 0 when there is no driver or no device.
int CudaDeviceCount();

}  // namespace kvc::kernels

#endif  // KVC_KERNELS_DEVICE_INFO_H_
