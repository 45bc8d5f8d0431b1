"""Benchmark suite of tenantllm (`make bench`); see bench/run.py."""
