"""The digital CTP phantom with its ground truth (imported by tests, benchmarks, training and the demo only)."""
