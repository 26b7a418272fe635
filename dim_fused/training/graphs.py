"""A step replayed as a CUDA graph: the whole DIM update (forward, backward, both
optimisers' steps) launched by one ``graph.replay()`` instead of hundreds of kernel
launches from Python, which at the paper's sizes cost more than the GPU's work.

``GraphedStep(step, device)`` runs ``step(*inputs)`` eagerly for its first ``warmup``
calls (on a side stream, as torch.cuda.graph requires: the allocator, cuBLAS workspaces,
Triton's autotuner and the optimisers' lazily made state all settle there), captures the
next call into a graph over static copies of its inputs, and from then on copies each
call's inputs into those and replays. What a step must be for that to be exact (the
trainer's ``update`` is, and its tests check it): no host syncs and no CPU-side decision
that depends on tensor values, no randomness of its own (the trainer draws negatives and
prior samples before it), optimisers built with ``capturable=True``, and inputs of the
same shapes, dtypes and structure at every call (a call that differs drops the graph: it
and the next calls run eagerly, warming up again, and the graph is captured afresh)."""

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree as pytree


def _signature(leaves: list[Any]) -> tuple:
    return tuple((x.shape, x.dtype, x.device) if isinstance(x, torch.Tensor) else x for x in leaves)


class GraphedStep:
    """``step`` as a CUDA graph after ``warmup`` eager calls (see the module). The outputs
    it returns after the capture are the graph's static tensors: read (or copy) them
    before the next call, which overwrites them."""

    def __init__(self, step: Callable[..., Any], device: torch.device | str, warmup: int = 3) -> None:
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 eager call before the capture, got {warmup}")
        self.step, self.device, self.warmup = step, device, warmup
        self.reset()

    def reset(self) -> None:
        """Forget the graph (after a step's tensors were replaced, e.g. an optimiser's state
        loaded from a checkpoint): the next calls warm up and capture again."""
        self.graph: torch.cuda.CUDAGraph | None = None
        self._eager_calls = 0
        self._spec = self._signature = self._inputs = self._outputs = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, *inputs: Any) -> Any:
        leaves, spec = pytree.tree_flatten(inputs)
        signature = _signature(leaves)
        if self.graph is not None and (spec, signature) == (self._spec, self._signature):
            for static, value in zip(self._inputs, leaves, strict=True):
                if isinstance(static, torch.Tensor):
                    static.copy_(value)
            self.graph.replay()
            return self._outputs
        if self.graph is not None:  # inputs of another shape: eager now, captured afresh later
            self.reset()
        if self._eager_calls < self.warmup:
            self._eager_calls += 1
            return self._on_side_stream(inputs)
        self._capture(leaves, spec, signature)
        self.graph.replay()  # capturing recorded the call's kernels; replaying runs them
        return self._outputs

    def _on_side_stream(self, inputs: tuple) -> Any:
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            outputs = self.step(*inputs)
        current.wait_stream(side)
        return outputs

    def _capture(self, leaves: list[Any], spec: Any, signature: tuple) -> None:
        self._inputs = [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._outputs = self.step(*pytree.tree_unflatten(self._inputs, spec))
        self.graph, self._spec, self._signature = graph, spec, signature
