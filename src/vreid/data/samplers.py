"""Training batch samplers: P x K identity batches, domain-balanced P x K batches, plain shuffled batches.

All three are batch samplers (``DataLoader(batch_sampler=...)``) that yield lists of
``(dataset index, sample_seed)`` pairs. Why this shape:

- An epoch's *global* batches (``batch_size`` is the batch over all ranks) are a pure function of
  ``(seed, epoch)``, computed identically on every rank from a private generator (never the global RNGs);
  rank r takes its contiguous share. So the union over ranks of one step is exactly the global batch,
  every rank has the same number of batches, and the run does not depend on the number of processes.
- ``sample_seed`` depends only on ``(seed, epoch, position in the epoch)``; the dataset seeds the
  augmentation RNGs with it, so a sample's augmentation does not depend on which worker loads it.
  Seeds are 32-bit (``numpy.random.seed`` accepts them) and distinct within an epoch by construction.
- ``set_start`` resumes mid-epoch by skipping the batches already trained on.

The P x K draw is the official one (docs/method.md, Samplers: each id's images shuffled, ids with fewer than K
images sampled with replacement up to K, cut into chunks of K, remainder dropped; P distinct ids per batch
drawn uniformly among those with chunks left; stop when fewer than P ids have chunks left) with one change
so that ``len()`` is exact and the same every epoch: an id whose remaining chunks are as many as the
batches still to come is always taken. This makes every epoch reach the largest possible number of
batches (with the official uniform draw it varies with the draws, and its ``len()`` overestimates).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

log = logging.getLogger(__name__)

_MASK32 = 0xFFFF_FFFF
_MASK64 = (1 << 64) - 1

Batch = list[tuple[int, int]]

# How long a domain-balanced epoch is (DATALOADER.DOMAIN_EPOCH).
EPOCH_OFFICIAL = "official"  # as many batches as a P x K epoch over both domains together (the official sampler)
EPOCH_SHORTEST = "shortest"  # until either domain has no P/2 identities left
DOMAIN_EPOCHS = (EPOCH_OFFICIAL, EPOCH_SHORTEST)


# --------------------------------------------------------------------------------------------------
# Per-sample seeds


def _splitmix64(x: int) -> int:
    x = (x + 0x9E37_79B9_7F4A_7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58_476D_1CE4_E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D0_49BB_1331_11EB) & _MASK64
    return x ^ (x >> 31)


def _epoch_key(seed: int, epoch: int) -> int:
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (epoch & _MASK64)) & _MASK32


def _fmix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's finaliser: a bijection of 32-bit values that scatters neighbouring inputs."""
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x85EB_CA6B)) & np.uint64(_MASK32)
    x = x ^ (x >> np.uint64(13))
    x = (x * np.uint64(0xC2B2_AE35)) & np.uint64(_MASK32)
    return x ^ (x >> np.uint64(16))


def sample_seeds(seed: int, epoch: int, positions: np.ndarray) -> np.ndarray:
    """32-bit seeds of the samples at ``positions`` of an epoch; distinct positions give distinct seeds."""
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size and (positions.min() < 0 or positions.max() > _MASK32):
        raise ValueError("sample positions must be in [0, 2**32)")
    return _fmix32(positions.astype(np.uint64) ^ np.uint64(_epoch_key(seed, epoch)))


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of the sample at ``position`` (0-based, over the global batches) of ``epoch``."""
    return int(sample_seeds(seed, epoch, np.array([position]))[0])


# --------------------------------------------------------------------------------------------------
# Common machinery


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class _EpochBatchSampler(Sampler[Batch]):
    """Global batches from ``(seed, epoch)``; this rank's share of each, with per-sample seeds."""

    def __init__(self, batch_size: int, seed: int, rank: int, world_size: int, drop_last: bool):
        super().__init__()
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {rank}")
        if self.batch_size % self.world_size:
            raise ValueError(f"batch_size ({batch_size}) is the global batch and must be divisible by "
                             f"world_size ({world_size})")
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches ``__iter__`` yields (a pure function of seed and epoch)."""
        self.epoch = _check_int("epoch", epoch, 0)

    def set_start(self, batch_index: int) -> None:
        """Skip the first ``batch_index`` batches of the current epoch (resume); the next epoch starts at 0."""
        batch_index = _check_int("batch_index", batch_index, 0)
        if batch_index > len(self):
            raise ValueError(f"batch_index {batch_index} is past the end of the epoch ({len(self)} batches)")
        self._start = batch_index

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed & _MASK64, epoch])))

    def _global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The epoch's global batches of dataset indices, in their canonical order."""
        raise NotImplementedError

    def _rank_positions(self, length: int) -> np.ndarray:
        """Positions of this rank's share within a global batch of ``length`` (a multiple of world_size)."""
        share = length // self.world_size
        return np.arange(self.rank * share, (self.rank + 1) * share)

    def global_batches(self) -> list[Batch]:
        """All ranks' batches of the current epoch, as (index, sample_seed), in canonical order."""
        out = []
        for b, idx in enumerate(self._global_batches(self._rng(self.epoch))):
            seeds = sample_seeds(self.seed, self.epoch, b * self.batch_size + np.arange(len(idx)))
            out.append([(int(i), int(s)) for i, s in zip(idx, seeds, strict=True)])
        return out

    def __iter__(self) -> Iterator[Batch]:
        start, self._start = self._start, 0  # the skip applies to this epoch only
        return self._iter_from(self.epoch, start)  # bound now: a later set_epoch does not alter a running epoch

    def _iter_from(self, epoch: int, start: int) -> Iterator[Batch]:
        batches = self._global_batches(self._rng(epoch))
        for b in range(start, len(batches)):
            idx = batches[b]
            pos = self._rank_positions(len(idx))
            seeds = sample_seeds(self.seed, epoch, b * self.batch_size + pos)
            yield [(int(i), int(s)) for i, s in zip(idx[pos], seeds, strict=True)]

    def __len__(self) -> int:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# P x K


def _group_by_label(labels: Sequence[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct labels (sorted) and the dataset indices of each, in dataset order."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers (class indices), got dtype {arr.dtype}")
    order = np.argsort(arr, kind="stable")
    uniq, starts = np.unique(arr[order], return_index=True)
    return uniq, np.split(order, starts[1:])


def _chunk_counts(groups: Sequence[np.ndarray], k: int) -> np.ndarray:
    return np.array([max(len(g), k) // k for g in groups], dtype=np.int64)


def _max_batches(counts: np.ndarray, p: int) -> int:
    """Most batches of p distinct ids, one chunk each: the largest B with sum(min(c_i, B)) >= p * B."""
    lo, hi = 0, int(counts.sum()) // p
    while lo < hi:  # the feasible B form an interval [0, B*] (the left side is concave in B)
        mid = (lo + hi + 1) // 2
        if np.minimum(counts, mid).sum() >= p * mid:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _chunks(rng: np.random.Generator, groups: Sequence[np.ndarray], k: int) -> list[np.ndarray]:
    """Each id's images shuffled (sampled with replacement up to k if fewer), cut into (c_i, k) chunks."""
    out = []
    for g in groups:
        sel = rng.choice(g, size=k, replace=True) if len(g) < k else rng.permutation(g)
        out.append(sel[: len(sel) // k * k].reshape(-1, k))
    return out


def _draw_ids(rng: np.random.Generator, counts: np.ndarray, p: int, num_batches: int) -> list[np.ndarray]:
    """For each batch, p distinct ids (positions in ``counts``), uniformly among those with chunks left.

    Ids with at least as many chunks as batches still to come ("critical") are always taken (or, if more
    than p, p of them at random); this keeps sum(min(c_i, R)) >= p * R for the R batches left, so all
    ``num_batches`` (= :func:`_max_batches`) batches can be filled.
    """
    counts = counts.copy()
    picks = []
    for remaining in range(num_batches, 0, -1):
        critical = np.flatnonzero(counts >= remaining)
        if len(critical) >= p:
            picked = rng.choice(critical, size=p, replace=False)
        else:
            others = np.flatnonzero((counts > 0) & (counts < remaining))
            picked = rng.permutation(np.concatenate([critical, rng.choice(others, size=p - len(critical),
                                                                           replace=False)]))
        counts[picked] -= 1
        picks.append(picked)
    return picks


def _assemble(chunks: list[np.ndarray], picks: list[np.ndarray]) -> list[np.ndarray]:
    """Concatenate the next chunk of each picked id, batch by batch."""
    used = np.zeros(len(chunks), dtype=np.int64)
    batches = []
    for picked in picks:
        parts = []
        for i in picked:
            parts.append(chunks[i][used[i]])
            used[i] += 1
        batches.append(np.concatenate(parts))
    return batches


class RandomIdentitySampler(_EpochBatchSampler):
    """P x K batches: P = batch_size // K distinct identities, K consecutive images each.

    ``labels[i]`` is the class of dataset item i. Every batch is full (a smaller last batch would break the
    P x K structure the metric losses rely on), so only ``drop_last=True`` is accepted. With
    ``world_size`` ranks each rank gets P / world_size whole identities of every global batch.
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        num_instances: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        super().__init__(batch_size, seed, rank, world_size, drop_last)
        self.num_instances = _check_int("num_instances", num_instances, 1)
        self.num_ids_per_batch = self._ids_per_batch()
        self._check_world(self.num_ids_per_batch)
        self.ids, self._groups = _group_by_label(labels)
        self._counts = _chunk_counts(self._groups, self.num_instances)
        if len(self.ids) < self.num_ids_per_batch:
            raise ValueError(f"a batch needs P={self.num_ids_per_batch} distinct identities but the data has only "
                             f"{len(self.ids)}; lower batch_size or raise num_instances")
        self._num_batches = _max_batches(self._counts, self.num_ids_per_batch)
        self._log_summary()

    def _ids_per_batch(self) -> int:
        k = self.num_instances
        if self.batch_size % k:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of num_instances K ({k})")
        if not self.drop_last:
            raise ValueError("identity samplers always drop the leftover identities: a batch of fewer than P "
                             "identities would break the P x K structure; use drop_last=True")
        return self.batch_size // k

    def _check_world(self, ids_per_rank_unit: int) -> None:
        if ids_per_rank_unit % self.world_size:
            raise ValueError(f"each rank must get whole identities: {ids_per_rank_unit} identities per batch "
                             f"are not divisible by world_size {self.world_size}")

    def _log_summary(self) -> None:
        used = self._num_batches * self.batch_size
        log.info("%s: %d ids, P=%d x K=%d, %d batches per epoch (%d sampled images, the data has %d)",
                 type(self).__name__, len(self.ids), self.num_ids_per_batch, self.num_instances,
                 self._num_batches, used, sum(len(g) for g in self._groups))

    def _global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        chunks = _chunks(rng, self._groups, self.num_instances)
        return _assemble(chunks, _draw_ids(rng, self._counts, self.num_ids_per_batch, self._num_batches))

    def __len__(self) -> int:
        return self._num_batches


class DomainBalancedIdentitySampler(RandomIdentitySampler):
    """P x K batches whose first P/2 identities are real (domain 0) and last P/2 synthetic (domain 1).

    Makes the real/synthetic pairing that MixStyle's "two domains" assumes actually happen (docs/method.md,
    "MixStyle"). How long an epoch is (``epoch``):

    - ``"official"`` (default): as many batches as :class:`RandomIdentitySampler` gives over both domains
      together, the official sampler's epoch, so that epochs, schedules in epochs and MALW's update count
      mean what they mean in the paper. A domain whose identities run out starts a fresh pass (new shuffle,
      new chunks) within the epoch: on the Split-Train (360 real ids, 44k images) with VehicleX (1,362 ids,
      192k images) and batch 128, about 1,850 steps sample each real image about 2.6 times and 60 % of the
      synthetic images, where the official sampler shows each image once but fills batches only about 20 %
      with real ids.
    - ``"shortest"``: the epoch ends when either domain runs out (every image at most once per epoch).

    With several ranks, each rank's *local* batch is
    itself half real, half synthetic (rank r gets the r-th slice of each half), because that is the batch
    its model and MixStyle see; the union over ranks is still exactly the global batch (as a set of
    (index, seed) pairs, in a rank-major order). So P/2 must be divisible by world_size.
    """

    def __init__(
        self,
        labels: Sequence[int],
        domains: Sequence[int],
        batch_size: int,
        num_instances: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        epoch: str = EPOCH_OFFICIAL,
    ):
        _EpochBatchSampler.__init__(self, batch_size, seed, rank, world_size, drop_last)
        if epoch not in DOMAIN_EPOCHS:
            raise ValueError(f"epoch must be one of {', '.join(DOMAIN_EPOCHS)}, got {epoch!r}")
        self.epoch_kind = epoch
        self.num_instances = _check_int("num_instances", num_instances, 1)
        self.num_ids_per_batch = p = self._ids_per_batch()
        if p % 2:
            raise ValueError(f"a domain-balanced batch needs an even number of identities P, got P={p} "
                             f"(batch_size {batch_size} / K {num_instances})")
        self._check_world(p // 2)
        lab, dom = np.asarray(labels), np.asarray(domains)
        if dom.shape != lab.shape:
            raise ValueError(f"labels and domains must have the same length, got {lab.shape} and {dom.shape}")
        if not np.isin(dom, (0, 1)).all():
            raise ValueError(f"domains must be 0 (real) or 1 (synthetic), got values {sorted(set(dom.tolist()))}")
        self.ids, self._groups = _group_by_label(labels)
        id_domain = []
        for uid, g in zip(self.ids, self._groups, strict=True):
            ds = np.unique(dom[g])
            if len(ds) > 1:
                raise ValueError(f"identity {uid} has images in both domains; each identity must be real or "
                                 "synthetic (train datasets keep separate id spaces)")
            id_domain.append(int(ds[0]))
        self.id_domains = np.array(id_domain)
        self._domain_groups: list[list[np.ndarray]] = []
        self._domain_counts: list[np.ndarray] = []
        batches_per_domain = []
        for d, name in enumerate(("real (0)", "synthetic (1)")):
            groups = [g for g, gd in zip(self._groups, id_domain, strict=True) if gd == d]
            if len(groups) < p // 2:
                raise ValueError(f"domain {name} has {len(groups)} identities, fewer than the P/2={p // 2} a "
                                 "domain-balanced batch needs")
            counts = _chunk_counts(groups, self.num_instances)
            self._domain_groups.append(groups)
            self._domain_counts.append(counts)
            batches_per_domain.append(_max_batches(counts, p // 2))
        self._pass_batches = batches_per_domain  # batches of one pass over each domain's chunks
        if epoch == EPOCH_OFFICIAL:
            self._num_batches = _max_batches(_chunk_counts(self._groups, self.num_instances), p)
        else:
            self._num_batches = min(batches_per_domain)
        self._log_summary()

    def domain_samples(self) -> tuple[int, int]:
        """(real, synthetic) images one epoch samples, over all ranks (each identity gives K per batch)."""
        per_domain = self._num_batches * self.num_ids_per_batch // 2 * self.num_instances
        return per_domain, per_domain

    def _log_summary(self) -> None:
        sizes = [sum(len(g) for g in groups) for groups in self._domain_groups]
        samples = self.domain_samples()
        log.info("%s: %d real + %d synthetic ids, P=%d (half each) x K=%d, %s epoch: %d batches (steps) per epoch; "
                 "it samples %d real images (%.2f x the %d there are) and %d synthetic (%.2f x the %d there are)",
                 type(self).__name__, len(self._domain_groups[0]), len(self._domain_groups[1]),
                 self.num_ids_per_batch, self.num_instances, self.epoch_kind, self._num_batches,
                 samples[0], samples[0] / sizes[0], sizes[0], samples[1], samples[1] / sizes[1], sizes[1])

    def _global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        half = self.num_ids_per_batch // 2
        halves = []
        for groups, counts, per_pass in zip(self._domain_groups, self._domain_counts, self._pass_batches,
                                            strict=True):
            batches: list[np.ndarray] = []
            while len(batches) < self._num_batches:  # a domain that runs out starts a fresh pass
                chunks = _chunks(rng, groups, self.num_instances)
                picks = _draw_ids(rng, counts, half, min(per_pass, self._num_batches - len(batches)))
                batches += _assemble(chunks, picks)
            halves.append(batches)
        return [np.concatenate([real, syn]) for real, syn in zip(*halves, strict=True)]

    def _rank_positions(self, length: int) -> np.ndarray:
        half = length // 2
        share = half // self.world_size
        own = np.arange(self.rank * share, (self.rank + 1) * share)
        return np.concatenate([own, half + own])


# --------------------------------------------------------------------------------------------------
# Plain shuffled batches


class RandomBatchSampler(_EpochBatchSampler):
    """Shuffled batches of any items (the ``softmax`` sampler of the official code, made rank-aware).

    With ``drop_last=False`` the last, partial global batch is completed with items from the start of the
    epoch's permutation up to a multiple of world_size, so every rank gets an equal, non-empty share.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        super().__init__(batch_size, seed, rank, world_size, drop_last)
        self.num_samples = _check_int("num_samples", num_samples, 1)
        if self.drop_last and self.num_samples < self.batch_size:
            raise ValueError(f"{num_samples} samples make no full batch of {batch_size}; "
                             "lower batch_size or use drop_last=False")

    def _global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        perm = rng.permutation(self.num_samples)
        full = self.num_samples // self.batch_size * self.batch_size
        batches = [perm[i : i + self.batch_size] for i in range(0, full, self.batch_size)]
        rest = self.num_samples - full
        if rest and not self.drop_last:
            length = math.ceil(rest / self.world_size) * self.world_size
            batches.append(np.concatenate([perm[full:], np.resize(perm, length - rest)]))
        return batches

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)
