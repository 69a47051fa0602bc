"""Options of the synthetic city, validated when constructed so that bad values fail before any rendering."""

from __future__ import annotations

from dataclasses import dataclass, fields

from vreid.data.synth.vehicles import MAX_GROUP_SIZE


@dataclass(frozen=True)
class SynthOptions:
    """What to generate. Same options, same bytes."""

    num_ids: int = 40                   # real-like identities (half train, half test)
    num_sim_ids: int | None = None      # sim-like identities; None -> same as num_ids; 0 -> no sim part
    num_cameras: int = 4
    seed: int = 0
    min_frames: int = 3                 # tracklet length range
    max_frames: int = 6
    queries_per_id: int = 2
    group_size: int = 3                 # identities sharing type+colour
    workers: int = 1

    def __post_init__(self) -> None:
        self.check()

    @property
    def sim_ids(self) -> int:
        """The number of sim-like identities after resolving ``None``."""
        return self.num_ids if self.num_sim_ids is None else self.num_sim_ids

    @property
    def num_train_ids(self) -> int:
        return self.num_ids // 2

    @property
    def num_test_ids(self) -> int:
        return self.num_ids - self.num_train_ids

    def check(self) -> None:
        """Raise ValueError naming the first bad option and what was expected."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "num_sim_ids":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"SynthOptions.{f.name} must be an int, got {value!r}")

        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"SynthOptions.{name} must be {expected}, got {getattr(self, name)!r}")

        need(2 <= self.num_ids <= 9999, "num_ids", "in 2..9999 (4-digit vehicle IDs, half train, half test)")
        need(self.num_sim_ids is None or 0 <= self.num_sim_ids <= 99999, "num_sim_ids",
             "None or in 0..99999 (5-digit vehicle IDs)")
        need(2 <= self.num_cameras <= 999, "num_cameras", "in 2..999 (every identity is seen by >= 2 cameras)")
        need(self.seed >= 0, "seed", ">= 0")
        need(self.min_frames >= 1, "min_frames", ">= 1")
        need(self.max_frames >= self.min_frames, "max_frames", f">= min_frames ({self.min_frames})")
        need(1 <= self.queries_per_id <= self.num_cameras, "queries_per_id",
             f"in 1..num_cameras ({self.num_cameras}): each query comes from a different camera")
        need(1 <= self.group_size <= MAX_GROUP_SIZE, "group_size",
             f"in 1..{MAX_GROUP_SIZE} (members of a group need distinct detail combinations)")
        need(self.workers >= 1, "workers", ">= 1")
