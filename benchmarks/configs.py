"""Problem sizes the benchmarks and the report share."""

from dataclasses import dataclass


@dataclass(frozen=True)
class MiBoundConfig:
    name: str
    batch: int
    locations: int
    num_negatives: int

    @property
    def num_scores(self) -> int:
        return self.batch * self.locations * (1 + self.num_negatives)


MI_BOUND = [
    MiBoundConfig("cifar-local", batch=64, locations=64, num_negatives=1),
    MiBoundConfig("cifar-local-k8", batch=64, locations=64, num_negatives=8),
    MiBoundConfig("large", batch=256, locations=256, num_negatives=8),
]
MI_BOUND_QUICK = MI_BOUND[:2]
MI_BOUND_ESTIMATORS = ("jsd", "dv", "infonce")
