"""Benchmarks of the training stage: sample quality, the trainer's overhead, the GPU check."""
