"""Batch samplers: P x K structure, determinism, resume, distributed shares, per-sample seeds, len."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from vreid.data.samplers import (
    DomainBalancedIdentitySampler,
    RandomBatchSampler,
    RandomIdentitySampler,
    sample_seed,
    sample_seeds,
)


def uneven_labels(num_ids: int = 30, seed: int = 0, low: int = 1, high: int = 40) -> list[int]:
    """Ids with 1..39 images each (some fewer than K), shuffled so an id's images are not contiguous."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_ids), rng.integers(low, high, num_ids))
    return rng.permutation(labels).tolist()


def indices(batch):
    return [i for i, _ in batch]


def check_pk_batch(batch, labels, p, k):
    """P distinct ids, K images each, the K of an id consecutive; returns the ids in batch order."""
    assert len(batch) == p * k
    ids = []
    for j in range(0, p * k, k):
        block = {labels[i] for i in indices(batch[j : j + k])}
        assert len(block) == 1, f"images {j}..{j + k} are not one identity: {block}"
        ids.append(block.pop())
    assert len(set(ids)) == p, f"identities repeat within a batch: {ids}"
    return ids


@pytest.mark.parametrize("k", [2, 4])
def test_pk_batches_have_p_distinct_ids_of_k_consecutive_images(k):
    labels = uneven_labels()
    sampler = RandomIdentitySampler(labels, batch_size=4 * k, num_instances=k, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    sizes = Counter(labels)
    seen: Counter = Counter()
    for b in batches:
        check_pk_batch(b, labels, 4, k)
        seen.update(indices(b))
    # An image repeats within an epoch only if its identity has fewer than K images.
    for i, n in seen.items():
        if sizes[labels[i]] >= k:
            assert n == 1, f"image {i} of a {sizes[labels[i]]}-image identity used {n} times"


def test_pk_epoch_uses_every_chunk_it_can():
    """The epoch ends only when fewer than P identities have unused chunks (and len() says how many)."""
    labels = uneven_labels(num_ids=12, seed=5, high=30)
    p, k = 4, 4
    sampler = RandomIdentitySampler(labels, batch_size=p * k, num_instances=k)
    chunks = {i: max(n, k) // k for i, n in Counter(labels).items()}
    for epoch in range(3):
        sampler.set_epoch(epoch)
        used = Counter(label for b in sampler for label in check_pk_batch(b, labels, p, k))
        assert sum(chunks[i] > used[i] for i in chunks) < p


def test_pk_order_is_a_function_of_seed_and_epoch():
    labels = uneven_labels()
    a = RandomIdentitySampler(labels, 16, 4, seed=1)
    b = RandomIdentitySampler(labels, 16, 4, seed=1)
    c = RandomIdentitySampler(labels, 16, 4, seed=2)
    for s in (a, b, c):
        s.set_epoch(5)
    assert list(a) == list(b) == list(a)
    order = [indices(x) for x in a]  # compare the orders alone: the sample seeds differ in any case
    assert [indices(x) for x in c] != order
    a.set_epoch(6)
    assert [indices(x) for x in a] != order
    a.set_epoch(5)
    assert list(a) == list(b)


def test_len_matches_iteration_over_epochs_and_settings():
    labels = uneven_labels(num_ids=40, seed=7)
    domains = [label % 2 for label in labels]
    samplers = [
        RandomIdentitySampler(labels, 16, 4),
        RandomIdentitySampler(labels, 24, 8, seed=9, rank=1, world_size=3),
        RandomIdentitySampler(labels, 8, 1),
        DomainBalancedIdentitySampler(labels, domains, 16, 4),
        DomainBalancedIdentitySampler(labels, domains, 16, 2, seed=4, rank=1, world_size=2),
        RandomBatchSampler(len(labels), 32),
        RandomBatchSampler(len(labels), 32, drop_last=False),
        RandomBatchSampler(103, 12, rank=2, world_size=4, drop_last=False),
        RandomBatchSampler(5, 8, world_size=4, drop_last=False),
    ]
    for s in samplers:
        for epoch in range(4):
            s.set_epoch(epoch)
            assert len(list(s)) == len(s), (s, epoch)
    assert len(RandomBatchSampler(100, 32)) == 3
    assert len(RandomBatchSampler(100, 32, drop_last=False)) == 4


def test_set_start_skips_batches_for_one_epoch_only():
    labels = uneven_labels()
    for sampler in (RandomIdentitySampler(labels, 16, 4, seed=3), RandomBatchSampler(len(labels), 10, seed=3)):
        sampler.set_epoch(2)
        full = list(sampler)
        sampler.set_start(3)
        assert list(sampler) == full[3:]
        assert list(sampler) == full  # the skip is used up
        sampler.set_start(len(sampler))
        assert list(sampler) == []
        with pytest.raises(ValueError, match="past the end"):
            sampler.set_start(len(sampler) + 1)


def test_set_start_is_consumed_when_iteration_starts():
    """A DataLoader calls iter() once per epoch; the next epoch must start from batch 0."""
    labels = uneven_labels()
    sampler = RandomIdentitySampler(labels, 16, 4)
    sampler.set_epoch(1)
    sampler.set_start(2)
    it = iter(sampler)
    sampler.set_epoch(2)  # the running iterator keeps its epoch's batches
    ref = RandomIdentitySampler(labels, 16, 4)
    ref.set_epoch(1)
    assert list(it) == list(ref)[2:]
    ref.set_epoch(2)
    assert list(sampler) == list(ref)


@pytest.mark.parametrize(
    "make",
    [
        lambda labels, domains, r, w: RandomIdentitySampler(labels, 16, 4, seed=11, rank=r, world_size=w),
        lambda labels, domains, r, w: RandomBatchSampler(len(labels), 12, seed=11, rank=r, world_size=w),
    ],
    ids=["pk", "random"],
)
@pytest.mark.parametrize("world_size", [2, 4])
def test_union_over_ranks_is_the_global_batch(make, world_size):
    labels = uneven_labels(num_ids=25, seed=2)
    domains = [0] * len(labels)
    single = make(labels, domains, 0, 1)
    ranks = [make(labels, domains, r, world_size) for r in range(world_size)]
    for epoch in (0, 3):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        per_rank = [list(s) for s in ranks]
        assert {len(b) for b in per_rank} == {len(single)}
        for step, global_batch in enumerate(single):
            shares = [batches[step] for batches in per_rank]
            assert {len(x) for x in shares} == {len(global_batch) // world_size}
            assert [e for share in shares for e in share] == global_batch  # element for element, seeds too
        assert single.global_batches() == list(single)


def test_identity_shares_are_whole_identities():
    labels = uneven_labels()
    ranks = [RandomIdentitySampler(labels, 16, 4, rank=r, world_size=2) for r in range(2)]
    for r0, r1 in zip(*ranks, strict=True):
        ids0 = check_pk_batch(r0, labels, 2, 4)
        ids1 = check_pk_batch(r1, labels, 2, 4)
        assert not set(ids0) & set(ids1)


def test_domain_balanced_halves_and_rank_shares():
    labels = uneven_labels(num_ids=30, seed=4)
    domains = [int(label >= 18) for label in labels]  # 18 real, 12 synthetic identities
    p, k = 4, 4
    single = DomainBalancedIdentitySampler(labels, domains, p * k, k, seed=5, epoch="shortest")
    batches = list(single)
    assert len(batches) == len(single) > 0
    for b in batches:
        ids = check_pk_batch(b, labels, p, k)
        assert [int(i >= 18) for i in ids] == [0, 0, 1, 1]
    # The epoch ends when either domain runs out: the synthetic side cannot form one more half batch.
    chunks = {i: max(n, k) // k for i, n in Counter(labels).items() if i >= 18}
    used = Counter(i for b in batches for i in check_pk_batch(b, labels, p, k) if i >= 18)
    real_used = Counter(i for b in batches for i in check_pk_batch(b, labels, p, k) if i < 18)
    real_chunks = {i: max(n, k) // k for i, n in Counter(labels).items() if i < 18}
    assert (sum(chunks[i] > used[i] for i in chunks) < p // 2
            or sum(real_chunks[i] > real_used[i] for i in real_chunks) < p // 2)
    # Two ranks: each local batch is itself half real, half synthetic; together they are the global batch.
    ranks = [DomainBalancedIdentitySampler(labels, domains, p * k, k, seed=5, rank=r, world_size=2, epoch="shortest")
             for r in range(2)]
    for step, (b0, b1) in enumerate(zip(*ranks, strict=True)):
        for local in (b0, b1):
            assert [int(i >= 18) for i in check_pk_batch(local, labels, 2, k)] == [0, 1]
        assert sorted(b0 + b1) == sorted(batches[step])


def test_domain_balanced_errors():
    labels = [0] * 8 + [1] * 8 + [2] * 8 + [3] * 8
    with pytest.raises(ValueError, match="even number of identities"):
        DomainBalancedIdentitySampler(labels, [0] * 16 + [1] * 16, 12, 4)
    with pytest.raises(ValueError, match=r"synthetic \(1\) has 1 identities"):
        DomainBalancedIdentitySampler(labels, [0] * 24 + [1] * 8, 16, 4)
    with pytest.raises(ValueError, match="both domains"):
        DomainBalancedIdentitySampler(labels, [0] * 4 + [1] * 28, 8, 4)
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        DomainBalancedIdentitySampler(labels, [0] * 16 + [2] * 16, 8, 4)
    with pytest.raises(ValueError, match="not divisible by world_size"):
        DomainBalancedIdentitySampler(labels, [0] * 16 + [1] * 16, 16, 4, world_size=4)


def test_argument_errors():
    labels = [0] * 8 + [1] * 8 + [2] * 8
    with pytest.raises(ValueError, match="multiple of num_instances"):
        RandomIdentitySampler(labels, 10, 4)
    with pytest.raises(ValueError, match="only 3"):
        RandomIdentitySampler(labels, 16, 4)
    with pytest.raises(ValueError, match="not divisible by world_size 4"):
        RandomIdentitySampler(labels, 8, 4, world_size=4)
    with pytest.raises(ValueError, match="divisible by world_size"):
        RandomBatchSampler(24, 10, world_size=4)
    with pytest.raises(ValueError, match="rank must be"):
        RandomBatchSampler(24, 8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="drop_last"):
        RandomIdentitySampler(labels, 8, 4, drop_last=False)
    with pytest.raises(ValueError, match="no full batch"):
        RandomBatchSampler(5, 8)
    with pytest.raises(ValueError, match="epoch"):
        RandomBatchSampler(24, 8).set_epoch(-1)


def test_sample_seeds_unique_per_epoch_and_independent_of_layout():
    labels = uneven_labels(num_ids=60, seed=8)
    sampler = RandomIdentitySampler(labels, 16, 4, seed=21)
    seeds_by_epoch = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seeds = [s for b in sampler for _, s in b]
        assert len(set(seeds)) == len(seeds)
        assert all(0 <= s < 2**32 for s in seeds)
        seeds_by_epoch.append(seeds)
    assert seeds_by_epoch[0] != seeds_by_epoch[1]
    # A seed is a function of (seed, epoch, position) only: sampler kind and data do not matter.
    other = RandomBatchSampler(1000, 16, seed=21)
    other.set_epoch(2)
    assert [s for b in other for _, s in b][:64] == seeds_by_epoch[2][:64]
    assert sample_seed(21, 2, 5) == seeds_by_epoch[2][5]
    # Distinct over a large range of positions (a bijection), not merely unlikely to collide.
    big = sample_seeds(0, 0, np.arange(1 << 18))
    assert len(np.unique(big)) == 1 << 18


def test_dataloader_passes_index_seed_pairs():
    class Echo(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, item):
            index, seed = item
            return torch.tensor([index, seed], dtype=torch.int64)

    sampler = RandomIdentitySampler([i // 8 for i in range(64)], 16, 4, seed=1)
    loader = torch.utils.data.DataLoader(Echo(), batch_sampler=sampler)
    assert len(loader) == len(sampler)
    got = [b.tolist() for b in loader]
    assert got == [[list(e) for e in b] for b in sampler]


def test_domain_balanced_official_epoch_is_the_pk_epoch_over_both_domains(caplog):
    """Default epoch: as many batches as the official P x K sampler over all ids; short domains restart."""
    labels = uneven_labels(num_ids=30, seed=4)
    domains = [int(label >= 10) for label in labels]  # 10 real, 20 synthetic identities: real runs out first
    p, k = 4, 4
    with caplog.at_level("INFO"):
        sampler = DomainBalancedIdentitySampler(labels, domains, p * k, k, seed=2)
    chunks = Counter({i: max(n, k) // k for i, n in Counter(labels).items()})
    # brute force: the most batches of p distinct ids, one chunk each, that all chunks allow
    expected = max(b for b in range(sum(chunks.values()) // p + 1)
                   if sum(min(c, b) for c in chunks.values()) >= p * b)
    assert len(sampler) == expected
    shortest = DomainBalancedIdentitySampler(labels, domains, p * k, k, seed=2, epoch="shortest")
    assert len(shortest) < expected  # the real half alone would end the epoch early
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == expected
        used = Counter()
        for b in batches:
            ids = check_pk_batch(b, labels, p, k)
            assert [int(i >= 10) for i in ids] == [0, 0, 1, 1]
            used.update(ids)
        real_used = sum(used[i] for i in range(10))
        real_chunks = sum(chunks[i] for i in range(10))
        assert real_used == expected * p // 2 > real_chunks  # the real ids were gone through more than once
        assert all(used[i] <= chunks[i] for i in range(10, 30))  # the synthetic side needed one pass only
    assert sampler.domain_samples() == (expected * p // 2 * k,) * 2
    assert f"official epoch: {expected} batches (steps) per epoch" in caplog.text
    with pytest.raises(ValueError, match="epoch must be one of"):
        DomainBalancedIdentitySampler(labels, domains, p * k, k, epoch="long")
