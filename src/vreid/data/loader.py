"""Training data: which records, which labels, and the loader that batches them.

:func:`prepare_training_data` is the one place that decides what is trained on and what validates
it: the training datasets (each with its own id space), minus the local test split's held-out ids,
minus the validation ids (``DATASETS.VAL_IDS``) that pick the best checkpoint.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vreid.config import check_choice
from vreid.data.background_swap import FILLS, BackgroundSwap
from vreid.data.formats import DATASET_NAMES, load_dataset
from vreid.data.images import collate_images, read_image
from vreid.data.masks import MASK_INDEX
from vreid.data.records import LABEL_KINDS, SYNTHETIC, ImageRecord, hold_out_split, relabel
from vreid.data.samplers import (
    DOMAIN_EPOCHS,
    DomainBalancedIdentitySampler,
    RandomBatchSampler,
    RandomIdentitySampler,
)
from vreid.data.transforms import ERASING_VALUES, RESIZE_MODES
from vreid.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)


SAMPLERS = ("pk", "pk_domain", "random")  # DATALOADER.SAMPLER: P x K, P x K balanced over domains, plain shuffle


def check_data_config(cfg) -> None:
    """The DATASETS, INPUT and DATALOADER keys with a fixed set of choices or a range, each error naming its key."""
    check_choice(cfg, "DATASETS.TRAIN", DATASET_NAMES)
    check_choice(cfg, "DATASETS.TEST", DATASET_NAMES)
    check_choice(cfg, "DATASETS.LABEL", LABEL_KINDS)
    check_choice(cfg, "DATALOADER.SAMPLER", SAMPLERS)
    check_choice(cfg, "DATALOADER.DOMAIN_EPOCH", DOMAIN_EPOCHS)
    check_choice(cfg, "INPUT.ERASING.VALUE", ERASING_VALUES)
    check_choice(cfg, "INPUT.RESIZE_MODE", RESIZE_MODES)
    check_choice(cfg, "INPUT.BACKGROUND_SWAP.FILL", FILLS)
    if cfg.SOLVER.IMS_PER_BATCH % cfg.DATALOADER.NUM_INSTANCE and cfg.DATALOADER.SAMPLER != "random":
        raise ConfigError(f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be a multiple of "
                          f"DATALOADER.NUM_INSTANCE ({cfg.DATALOADER.NUM_INSTANCE}) for the P x K sampler")
    if cfg.DATASETS.LOCAL_SPLIT.NUM_IDS < 0:
        raise ConfigError("DATASETS.LOCAL_SPLIT.NUM_IDS must be >= 0")
    if cfg.DATASETS.LOCAL_SPLIT.QUERIES_PER_ID < 1:
        raise ConfigError("DATASETS.LOCAL_SPLIT.QUERIES_PER_ID must be >= 1")


@dataclass
class TrainingData:
    records: list[ImageRecord]
    labels: list[int]
    domains: list[int]  # 0 real, 1 synthetic
    num_classes: int
    val_query: list[ImageRecord]
    val_gallery: list[ImageRecord]


def load_test_dataset(cfg, test_split: str | None = None):
    """The dataset named by ``DATASETS.TEST`` with its test list and local split applied."""
    check_data_config(cfg)
    return load_dataset(
        cfg.DATASETS.TEST, cfg.DATASETS.ROOT_DIR,
        test_split=cfg.DATASETS.TEST_SPLIT if test_split is None else test_split,
        seed=cfg.DATASETS.SPLIT_SEED, folder_pattern=cfg.DATASETS.FOLDER_PATTERN,
        local_split_ids=cfg.DATASETS.LOCAL_SPLIT.NUM_IDS, local_split_queries=cfg.DATASETS.LOCAL_SPLIT.QUERIES_PER_ID,
    )


def prepare_training_data(cfg) -> TrainingData:
    """Records, class labels and domains of the training datasets, and the validation query/gallery."""
    check_data_config(cfg)
    groups: list[list[ImageRecord]] = []
    for name in cfg.DATASETS.TRAIN:
        if name == cfg.DATASETS.TEST:
            dataset = load_test_dataset(cfg, test_split="")  # the local split's test ids stay out of training
        else:
            dataset = load_dataset(name, cfg.DATASETS.ROOT_DIR, seed=cfg.DATASETS.SPLIT_SEED,
                                   folder_pattern=cfg.DATASETS.FOLDER_PATTERN,
                                   synthetic_images=cfg.DATASETS.SYNTHETIC_IMAGES)
        if not dataset.train:
            raise DatasetError(f"dataset {name!r} has no training images", path=dataset.root)
        groups.append(list(dataset.train))
    val_query: list[ImageRecord] = []
    val_gallery: list[ImageRecord] = []
    if cfg.DATASETS.VAL_IDS:
        groups[0], val_query, val_gallery = hold_out_split(groups[0], cfg.DATASETS.VAL_IDS, cfg.DATASETS.SPLIT_SEED + 1)
        log.info("validation: %d ids of %s held out (%d queries, %d gallery images)", cfg.DATASETS.VAL_IDS,
                 cfg.DATASETS.TRAIN[0], len(val_query), len(val_gallery))
    labels, mapping = relabel(groups, cfg.DATASETS.LABEL, cfg.DATASETS.ORIENTATION_BIN)
    records = [r for g in groups for r in g]
    domains = [int(r.domain == SYNTHETIC) for r in records]
    log.info("training on %d images of %d classes (%s labels) from %s", len(records), len(mapping),
             cfg.DATASETS.LABEL, ", ".join(cfg.DATASETS.TRAIN))
    return TrainingData(records, labels, domains, len(mapping), val_query, val_gallery)


def seed_sample(seed: int) -> None:
    """Seed every RNG an augmentation may use, so a sample's augmentation depends on its seed alone."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


class TrainDataset(torch.utils.data.Dataset):
    """``(index, sample_seed)`` -> augmented image with its label and domain.

    Seeding per sample makes augmentation independent of which worker loads it and of restarts,
    which is what lets a resumed run repeat an uninterrupted one exactly.
    """

    def __init__(self, records: Sequence[ImageRecord], labels: Sequence[int], domains: Sequence[int],
                 transform: Callable[[Image.Image], Any], skip_unreadable: bool = False,
                 pre_transform: Callable[[Image.Image, Any], Image.Image] | None = None):
        self.records, self.labels, self.domains = records, labels, domains
        self.transform = transform
        self.skip_unreadable = skip_unreadable
        self.pre_transform = pre_transform  # (image, path) -> image, e.g. the background swap

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, sample_seed = item
        path = self.records[index].path
        try:
            image = read_image(path)
            seed_sample(sample_seed)
            if self.pre_transform is not None:  # may read another image (a background): same skip rule
                image = self.pre_transform(image, path)
        except DatasetError:
            if not self.skip_unreadable:
                raise
            log.warning("skipping unreadable image %s", path)
            return {"skipped": str(path)}
        return {"image": self.transform(image), "label": self.labels[index], "domain": self.domains[index],
                "index": index}


def build_train_sampler(cfg, data: TrainingData, rank: int = 0, world_size: int = 1):
    kind, batch = cfg.DATALOADER.SAMPLER, cfg.SOLVER.IMS_PER_BATCH
    common = {"batch_size": batch, "seed": cfg.SEED, "rank": rank, "world_size": world_size}
    if kind == "pk":
        return RandomIdentitySampler(data.labels, num_instances=cfg.DATALOADER.NUM_INSTANCE, **common)
    if kind == "pk_domain":
        return DomainBalancedIdentitySampler(data.labels, data.domains, num_instances=cfg.DATALOADER.NUM_INSTANCE,
                                             epoch=cfg.DATALOADER.DOMAIN_EPOCH, **common)
    if kind == "random":
        return RandomBatchSampler(len(data.records), **common)
    raise ValueError(f"DATALOADER.SAMPLER: unknown sampler {kind!r}")


def mask_dir(cfg) -> Path:
    return Path(cfg.INPUT.BACKGROUND_SWAP.MASK_DIR or Path(cfg.DATASETS.ROOT_DIR) / "masks")


def build_background_swap(cfg, data: TrainingData):
    """The background swap of ``INPUT.BACKGROUND_SWAP`` (None when its probability is 0)."""
    swap = cfg.INPUT.BACKGROUND_SWAP
    if swap.PROB <= 0:
        return None
    cache = mask_dir(cfg)
    if not (cache / MASK_INDEX).is_file():
        raise DatasetError("INPUT.BACKGROUND_SWAP.PROB > 0 needs foreground masks: run `vreid prep masks` first",
                           path=cache / MASK_INDEX)
    return BackgroundSwap.from_cache(data.records, cache, p=swap.PROB, fill=swap.FILL,
                                     root=Path(cfg.DATASETS.ROOT_DIR))


def build_train_loader(cfg, data: TrainingData, transform, sampler) -> torch.utils.data.DataLoader:
    dataset = TrainDataset(data.records, data.labels, data.domains, transform, cfg.DATALOADER.SKIP_UNREADABLE,
                           pre_transform=build_background_swap(cfg, data))
    workers = cfg.DATALOADER.NUM_WORKERS
    # Own generator: creating the loader's iterator must not consume the global RNG (exact resume).
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                       collate_fn=collate_images, persistent_workers=workers > 0,
                                       generator=torch.Generator().manual_seed(cfg.SEED))
