"""Benchmarks: throughput, detector cost, chaos scenarios (run as ``python -m benchmarks.<name>``)."""
