"""What the tests and benchmarks use: server launchers, a synthetic image-QA set and a tiny Qwen2.5-VL
built from a config (shipped with the package so that a user can run the same checks)."""
