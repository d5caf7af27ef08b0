"""Vision-language policies (Qwen2.5-VL / Qwen3-VL): images, preprocessing, prompt items, the vision tower."""
