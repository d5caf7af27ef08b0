"""The GPU check: one prepared run for a lent GPU machine (``bash benchmarks/gpu/check.sh OUT``).

It builds ``medix_kernels._C`` for sm_90a against that machine's torch, checks every cuda/triton
backend against the reference (values and gradients, fp32 and bf16), runs the GPU tests and
``compute-sanitizer --tool memcheck`` over each CUDA kernel, measures the copy bandwidth and bf16
matrix rate, runs the benchmark rows of the GPU-kernel targets and writes the CSVs, a Markdown
summary (each target: measured, required, ratio, met/missed), versions, ``nvidia-smi`` and the
build's register/spill report into OUT (at most 8 files). ``--dry-run`` runs the same script on a
CPU machine (Triton interpreted, tiny shapes; what needs a GPU is skipped and says so):
tests/test_gpu_check.py runs it. benchmarks/gpu/README.md has the device-run invocation.

Modules: ``check`` (the orchestrator: phases, time budget, output folder; its phases live in
``check_build``, ``check_tests``, ``check_bench``, its outputs in ``check_report``), ``rows`` (the
benchmark rows through ``benchmarks.suite`` and the measured ceilings), ``correctness`` (the
backend-vs-reference matrix), ``sanitize`` (the short run of each CUDA kernel under
compute-sanitizer), ``targets`` (target evaluation and the Markdown), ``ptxas`` (the register /
spill report).
"""
