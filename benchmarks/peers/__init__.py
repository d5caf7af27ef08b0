"""Peers the suite compares medix_kernels against (see each module for what is imported and what is written here)."""
