# CUDA kernels: module rmbench_fast._cuda (no torch; raw pointers cross the boundary).
# Two archs only (A100 sm_80, H100/H200 sm_90) to keep build time modest; PTX for sm_90 is
# embedded too so newer GPUs can JIT it. cudart is linked statically: the module imports on a
# machine without a driver and fails with a clear RuntimeError only when a kernel is called.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES "80-real;90")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

pybind11_add_module(_cuda MODULE
  kernels/cuda/bindings.cpp
  kernels/cuda/checks.cpp
  kernels/cuda/dpo_logratio.cu)
target_include_directories(_cuda PRIVATE kernels/cuda)
set_target_properties(_cuda PROPERTIES
  CUDA_RUNTIME_LIBRARY Static
  CUDA_STANDARD 17
  CUDA_STANDARD_REQUIRED ON)
# The module links with the C++ driver (pybind11), which does not know nvcc's implicit library
# directory under Ninja: name it, or -lcudart_static / -lcudadevrt are not found.
target_link_directories(_cuda PRIVATE ${CUDAToolkit_LIBRARY_DIR})
target_link_libraries(_cuda PRIVATE CUDA::cudart_static)
install(TARGETS _cuda DESTINATION rmbench_fast)
