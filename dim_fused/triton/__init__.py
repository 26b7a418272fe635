"""Triton kernels, one module per fused op; `_math` mirrors csrc/estimators.h.

Import this package only after deciding on TRITON_INTERPRET: Triton reads it when
kernels are defined. On a machine without a GPU, set TRITON_INTERPRET=1 before
importing dim_fused to run these kernels (slowly) on CPU tensors.
"""
