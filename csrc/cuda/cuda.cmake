# CUDA kernels (owned by the kernels work): filled in by csrc/cuda/*.
enable_language(CUDA)
