"""Reproducible evaluations of the watcher's detectors against public benchmarks (no network)."""
