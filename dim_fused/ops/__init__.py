"""The fused ops, one folder each (the public function and its checks, the reference,
the torch.library registration, the Triton kernels), and ``common/``: what they share
(estimators, the common checks, the dispatch policy, the tunables, precision, the
registration helper, the Triton launch helpers and math)."""
