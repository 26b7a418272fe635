"""Every fused op on every backend of a device, forward and backward, on small odd shapes
in float32 and bfloat16, checked against the reference: what compute-sanitizer's memcheck
and racecheck run in benchmarks/gpu_check.sh (small, so that they finish in seconds).

    python -m benchmarks.gpu_smoke [--device cuda] [--backends cuda triton] [--one-per-kernel]

--one-per-kernel keeps one case per op (each of whose kernels it runs): what racecheck, the
slowest sanitizer, runs.

Exits 1 when a result disagrees with the reference; prints one line per case."""

import argparse
import sys

import torch

import dim_fused
from dim_fused import reference

TOLERANCE = {torch.float32: 2e-2, torch.bfloat16: 2e-1}  # loose: this checks plumbing, the tests check accuracy
# A case per op that runs every kernel of the op's fused backends.
ONE_PER_KERNEL = ("mi_bound jsd", "dot_product_mi infonce", "concat_conv_mi jsd")


def cases(device: torch.device, dtype: torch.dtype):
    """(name, fused(backend) -> value, reference() -> value, inputs) per op."""
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(shape, generator=generator, device=device) * scale).to(dtype).requires_grad_()

    pos, neg = randn(33, 17), randn(3, 33, 17)
    for estimator in ("jsd", "dv", "infonce"):
        yield (
            f"mi_bound {estimator}",
            lambda b, e=estimator: dim_fused.mi_bound(pos, neg, e, backend=b),
            lambda e=estimator: reference.mi_bound(pos, neg, e),
            (pos, neg),
        )
    local, global_codes = randn(5, 40, 3, 7, scale=0.3), randn(5, 40, scale=0.3)
    channels_last = local.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    for estimator in ("jsd", "dv", "infonce"):
        for name, codes in (("", local), (" channels-last", channels_last)):
            yield (
                f"dot_product_mi {estimator}{name}",
                lambda b, e=estimator, c=codes: dim_fused.dot_product_mi(c, global_codes, estimator=e, backend=b),
                lambda e=estimator, c=codes: reference.dot_product_mi(c, global_codes, e),
                (codes, global_codes),
            )
    fmap, code = torch.relu(randn(5, 6, 3, 3)).detach().requires_grad_(), randn(5, 4)
    weights = [randn(9, 10, scale=0.3), randn(7, 9, scale=0.3), randn(1, 7, scale=0.3)]
    biases = [randn(9, scale=0.1), randn(7, scale=0.1), randn(1, scale=0.1)]
    perm = dim_fused.location_permutation(5, 9, num_negatives=2, generator=generator, device=device)
    for estimator in ("jsd", "infonce"):
        yield (
            f"concat_conv_mi {estimator}",
            lambda b, e=estimator: dim_fused.concat_conv_mi(
                fmap, code, weights, biases, perm=perm, estimator=e, backend=b
            ),
            lambda e=estimator: reference.concat_conv_mi(fmap, code, weights, biases, perm, e),
            (fmap, code, *weights, *biases),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", nargs="+", help="default: the fused backends available on the device")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--one-per-kernel", action="store_true", help="one case per op (for racecheck)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    backends = args.backends or [b for b in dim_fused.available_backends(device) if b != "reference"]
    failures = 0
    for dtype in (getattr(torch, d) for d in args.dtypes):
        for name, fused, oracle, inputs in cases(device, dtype):
            if args.one_per_kernel and name not in ONE_PER_KERNEL:
                continue
            want = oracle()
            want_grads = torch.autograd.grad(want, inputs)
            for backend in backends:
                got = fused(backend)
                grads = torch.autograd.grad(got, inputs)
                errors = [(got - want).abs().item()]
                errors += [(g - w).abs().max().item() for g, w in zip(grads, want_grads, strict=True)]
                scale = max(1.0, want.abs().item())
                ok = all(e <= TOLERANCE[dtype] * scale for e in errors)
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {backend:6} {str(dtype)[6:]:8} {name}: max error {max(errors):.2e}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
