"""Where the time goes, and how fast the paths are against each other.

Modules: profiling (`profile`: one run under torch.profiler, split by phase), bench/
(`bench`: the same records through the official-style, native and vLLM paths, their agreement:
prepared -> measure -> official, native (child) and vllm -> agreement -> bench), vllm_path (the
vLLM path, run as a script by the vLLM environment's Python).
"""
