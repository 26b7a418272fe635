"""Peak extra memory of dot_product_mi on the CPU, measured (never timed): the
process's peak resident set over one forward + backward, in a fresh process per
measurement so nothing cached by an earlier run hides an allocation."""

import json
import subprocess
import sys
import textwrap

import pytest

import dim_fused

MEASURE = textwrap.dedent(
    """
    import gc, json, sys, torch, dim_fused

    def resident(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    backend = sys.argv[1]
    batch, units, locations = 256, 16, 1024
    local = torch.randn(batch, units, locations) * 0.1
    global_codes = torch.randn(batch, units) * 0.1
    local.requires_grad_()
    global_codes.requires_grad_()

    def run():
        if backend == "reference":
            estimate = dim_fused.reference.dot_product_mi(local, global_codes, "jsd")
        else:
            estimate = dim_fused.dot_product_mi(local, global_codes, estimator="jsd", backend=backend)
        return torch.autograd.grad(estimate, (local, global_codes))

    grads = run()  # warm up, and hold the gradients both paths must return
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident set
    before = resident("VmRSS:")
    grads = run()
    print(json.dumps({"peak_extra": resident("VmHWM:") - before}))
    """
)


def peak_extra_bytes(backend: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, backend], capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_extra"]


def test_fused_cpu_jsd_uses_a_twentieth_of_the_reference_memory():
    if "cpu" not in dim_fused.available_backends("cpu"):
        pytest.skip("needs the compiled cpu backend")
    reference = peak_extra_bytes("reference")
    fused = peak_extra_bytes("cpu")
    scores = 256 * 256 * 1024 * 4
    assert reference >= scores, (
        f"the reference should hold the {scores >> 20} MB score tensor, measured {reference >> 20} MB"
    )
    assert fused * 20 < reference, f"fused {fused / 2**20:.1f} MB vs reference {reference / 2**20:.1f} MB"
