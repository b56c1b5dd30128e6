"""Benchmarks (not tests): throughput against sentence-transformers and the peers, the GPU sweep, memory.
Run them as modules from the repository root: python -m benchmarks.throughput --help."""
