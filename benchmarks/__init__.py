"""Benchmarks of the fused ops against their peers (reference eager,
torch.compile(reference), the official/seed formulations)."""
