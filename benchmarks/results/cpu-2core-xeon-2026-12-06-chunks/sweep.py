"""concat_conv_mi's fused `cpu` forward+backward (JSD) against DIM_FUSED_CHUNK_VALUES: every
timing first (two rounds over the values, each the median and best of REPS calls after two
untimed), then with --mem the peak memory of one call per value (benchmarks/memory.py).

    .venv/bin/python benchmarks/results/cpu-2core-xeon-2026-12-06-chunks/sweep.py \\
        cifar,cifar-k8,stl10,large bf16 262144,1048576,2097152,4194304,8388608 5 --mem
    .venv/bin/python benchmarks/results/cpu-2core-xeon-2026-12-06-chunks/sweep.py \\
        cifar,cifar-k8,stl10,large fp32 262144,524288,1048576,2097152 5 --mem
"""

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from benchmarks import cases, configs, memory  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def cases_of(names: list[str], dtypes: list[str]):
    for config in [c for c in configs.CONCAT_CONV if c.name in names]:
        for dtype in dtypes:
            yield config, dtype, cases.make_inputs(config, torch.device("cpu"), DTYPES[dtype])


def step(inputs, values: int):
    os.environ["DIM_FUSED_CHUNK_VALUES"] = str(values)
    return cases.step("concat_conv_mi", "cpu", inputs, "jsd", "forward+backward")


def main(names: list[str], dtypes: list[str], values: list[int], reps: int, peaks: bool) -> None:
    for config, dtype, inputs in cases_of(names, dtypes):
        for _ in range(2):
            for v in values:
                fn = step(inputs, v)
                fn()
                fn()
                times = []
                for _ in range(reps):
                    start = time.perf_counter()
                    fn()
                    times.append((time.perf_counter() - start) * 1e3)
                times.sort()
                median, best = times[len(times) // 2], times[0]
                size = f"{config.name} {dtype} 2^{v.bit_length() - 1}"
                print(f"{size} median {median:.2f} best {best:.2f} ms", flush=True)
    if not peaks:
        return
    memory.prepare_cpu_accounting()  # after every timing: it slows the allocations it counts
    for config, dtype, inputs in cases_of(names, dtypes):
        for v in values:
            fn = step(inputs, v)
            fn()
            peak = memory.peak_extra_bytes(fn, torch.device("cpu")) / 2**20
            print(f"{config.name} {dtype} 2^{v.bit_length() - 1} peak {peak:.0f} MiB", flush=True)


if __name__ == "__main__":
    main(
        sys.argv[1].split(","),
        sys.argv[2].split(","),
        [int(v) for v in sys.argv[3].split(",")],
        int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4].isdigit() else 8,
        "--mem" in sys.argv,
    )
