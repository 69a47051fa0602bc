"""Dataset readers, one module per on-disk format, and the single place that names them.

``load_dataset(name, root, ...)`` is the entry point used by the config and the command line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from vreid.data.formats import aic21, folder, vehicle2cam, vehicleid, veri776, veriwild
from vreid.data.records import GALLERY, QUERY, TRAIN, Dataset, hold_out_split

log = logging.getLogger(__name__)

READERS: dict[str, Callable[..., Dataset]] = {
    "veri776": veri776.read,
    "aic21": aic21.read,
    "aic21_synthetic": aic21.read_synthetic,
    "vehicleid": vehicleid.read,
    "veriwild": veriwild.read,
    "vehicle2cam": vehicle2cam.read,
    "folder": folder.read,
}
DATASET_NAMES = tuple(READERS)


def load_dataset(
    name: str,
    root: str | Path,
    *,
    test_split: str = "",
    seed: int = 0,
    folder_pattern: str = folder.DEFAULT_PATTERN,
    local_split_ids: int = 0,
    local_split_queries: int = 2,
    synthetic_images: str | Path = "",
) -> Dataset:
    """Read dataset ``name`` from ``root``.

    With ``local_split_ids > 0`` that many training identities are held out (seeded) as a labelled
    query/gallery (the paper's Split-Train / Split-Test), replacing the dataset's own query/gallery:
    the way to evaluate on AIC21-style data whose test labels are private. ``synthetic_images`` replaces
    the image folder of ``aic21_synthetic`` (a UNIT-translated copy, see :func:`aic21.read_synthetic`).
    """
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}")
    kwargs: dict = {"pattern": folder_pattern} if name == "folder" else {}
    if name == "aic21_synthetic" and synthetic_images:
        kwargs["image_dir"] = synthetic_images
    dataset = READERS[name](root, test_split=test_split, seed=seed, **kwargs)
    if local_split_ids:
        train, query, gallery = hold_out_split(dataset.train, local_split_ids, seed, local_split_queries)
        log.info("local split of %s: %d train ids kept, %d held out -> %d queries, %d gallery images",
                 name, len({r.vehicle_id for r in train}), local_split_ids, len(query), len(gallery))
        dataset.splits.update({TRAIN: train, QUERY: query, GALLERY: gallery})
        dataset.meta["local_split"] = {"num_ids": local_split_ids, "seed": seed, "queries_per_id": local_split_queries}
    return dataset


__all__ = ["DATASET_NAMES", "READERS", "load_dataset"]
