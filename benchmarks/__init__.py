"""Benchmarks for fprune against torch.ao's pruner and Torch-Pruning: pruning time, peak memory
and pruned-model latency. Run ``python -m benchmarks --help`` from the repository root."""
