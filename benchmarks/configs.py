"""Problem sizes the benchmarks and the report share.

`series` groups configs into a sweep, plotted against that size; the named
settings are the ones the issues quote (the DIM CIFAR-10 setting and a large one).
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Config:
    op: str
    name: str
    batch: int
    locations: int
    num_negatives: int = 1  # mi_bound
    units: int = 0  # dot_product_mi: E
    channels: int = 0  # concat_conv_mi: C, D and the hidden layers
    global_dim: int = 0
    hidden: tuple[int, ...] = ()
    series: str = ""  # the swept size ("batch" or "locations"), "" for a single named setting
    estimators: tuple[str, ...] = field(default=("jsd", "infonce"))


MI_BOUND_ESTIMATORS = ("jsd", "dv", "infonce")

MI_BOUND = [
    Config("mi_bound", "cifar-local", batch=64, locations=64, num_negatives=1, estimators=MI_BOUND_ESTIMATORS),
    Config("mi_bound", "cifar-local-k8", batch=64, locations=64, num_negatives=8, estimators=MI_BOUND_ESTIMATORS),
    Config("mi_bound", "large", batch=256, locations=256, num_negatives=8, estimators=MI_BOUND_ESTIMATORS),
]

DOT_PRODUCT = [
    Config("dot_product_mi", "cifar", batch=64, locations=64, units=2048),
    Config("dot_product_mi", "b256", batch=256, locations=64, units=2048),
    *[
        Config("dot_product_mi", f"sweep-B{b}", batch=b, locations=64, units=1024, series="batch")
        for b in (32, 64, 128, 256, 512)
    ],
    *[
        Config("dot_product_mi", f"sweep-L{l}", batch=256, locations=l, units=1024, series="locations")
        for l in (16, 64, 256, 1024)
    ],
]

CONCAT_CONV = [
    Config("concat_conv_mi", "cifar", batch=64, locations=64, channels=128, global_dim=64, hidden=(512, 512)),
    Config(
        "concat_conv_mi",
        "cifar-k8",
        batch=64,
        locations=64,
        num_negatives=8,
        channels=128,
        global_dim=64,
        hidden=(512, 512),
    ),
    Config("concat_conv_mi", "large", batch=256, locations=256, channels=256, global_dim=128, hidden=(512, 512)),
    # The alex64x64 encoder's local map on STL-10's 64x64 crops.
    Config("concat_conv_mi", "stl10", batch=64, locations=225, channels=384, global_dim=64, hidden=(512, 512)),
]

QUICK = [MI_BOUND[0], DOT_PRODUCT[0], CONCAT_CONV[0]]  # the CIFAR-10 settings
FULL = MI_BOUND + DOT_PRODUCT + CONCAT_CONV
# A few seconds end to end: what the test suite runs.
TINY = [
    Config("mi_bound", "tiny", batch=8, locations=16, num_negatives=2, estimators=("jsd",)),
    *[
        Config("dot_product_mi", f"tiny-B{b}", batch=b, locations=8, units=16, series="batch", estimators=("jsd",))
        for b in (4, 8)
    ],
    Config(
        "concat_conv_mi", "tiny", batch=4, locations=4, channels=3, global_dim=2, hidden=(8, 8), estimators=("jsd",)
    ),
]
