"""vreid.data.loader: what it builds from a config (records, labels, validation split, sampler, loader), checked
against the dataset's own label file and expectations written out here."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from vreid.config import load_config
from vreid.data.loader import build_train_loader, build_train_sampler, prepare_training_data
from vreid.data.samplers import RandomBatchSampler, RandomIdentitySampler
from vreid.data.synth import SynthOptions, generate_city
from vreid.data.transforms import build_train_transform
from vreid.errors import DatasetError


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("city")
    generate_city(out, SynthOptions(num_ids=8, num_sim_ids=0, num_cameras=3, seed=4, min_frames=2, max_frames=3))
    return out


def train_labels(city: Path) -> dict[str, tuple[str, str]]:
    """image name -> (vehicle id, camera id), read from train_label.xml directly (declared gb2312, ASCII inside)."""
    text = (city / "AIC21_Track2_ReID" / "train_label.xml").read_text(encoding="ascii")
    items = re.findall(r'imageName="([^"]+)" vehicleID="([^"]+)" cameraID="([^"]+)"', text)
    assert len(items) == int(re.search(r'<Items number="(\d+)"', text).group(1))
    return {name: (vid, cam) for name, vid, cam in items}


def config(city: Path, *opts: str):
    return load_config(None, ["DATASETS.ROOT_DIR", str(city), "DATASETS.TRAIN", "('aic21',)", "DATASETS.TEST",
                              "aic21", "INPUT.SIZE_TRAIN", "(32, 32)", "INPUT.PADDING", "2", "SOLVER.IMS_PER_BATCH",
                              "4", "DATALOADER.NUM_INSTANCE", "2", "DATALOADER.NUM_WORKERS", "0", *opts])


def test_training_records_are_the_train_list_with_one_label_per_vehicle(city):
    truth = train_labels(city)
    data = prepare_training_data(config(city))
    assert sorted(r.path.name for r in data.records) == sorted(truth)
    assert data.num_classes == len({vid for vid, _ in truth.values()})
    label_of: dict[str, int] = {}
    for record, label in zip(data.records, data.labels, strict=True):
        assert label_of.setdefault(truth[record.path.name][0], label) == label  # one label per vehicle
    assert sorted(label_of.values()) == list(range(data.num_classes))  # and one vehicle per label
    assert data.domains == [0] * len(data.records)  # all real images
    assert data.val_query == data.val_gallery == []


def test_validation_ids_are_held_out_of_training(city):
    truth = train_labels(city)
    data = prepare_training_data(config(city, "DATASETS.VAL_IDS", "2"))
    held = {r.vehicle_id for r in data.val_query + data.val_gallery}
    trained = {truth[r.path.name][0] for r in data.records}
    assert len(held) == 2 and held <= {vid for vid, _ in truth.values()} and not held & trained
    assert data.num_classes == len(trained) == len({vid for vid, _ in truth.values()}) - 2
    # every image of the held-out ids is a query or in the gallery; together with training: the whole list
    assert sorted(r.path.name for r in data.records + data.val_query + data.val_gallery) == sorted(truth)
    for q in data.val_query:  # each query can be matched in another camera
        assert any(g.vehicle_id == q.vehicle_id and g.camera_id != q.camera_id for g in data.val_gallery)


def test_sampler_follows_the_configured_kind(city):
    data = prepare_training_data(config(city))
    pk = build_train_sampler(config(city), data)
    assert isinstance(pk, RandomIdentitySampler)
    for batch in pk:  # P x K: 2 vehicles x 2 images
        assert len(batch) == 4
        assert sorted(Counter(data.labels[i] for i, _ in batch).values()) == [2, 2]
    random = build_train_sampler(config(city, "DATALOADER.SAMPLER", "random"), data)
    assert isinstance(random, RandomBatchSampler) and len(random) == len(data.records) // 4
    cfg = config(city)
    cfg.defrost()
    cfg.DATALOADER.SAMPLER = "unknown"
    with pytest.raises(ValueError, match="DATALOADER.SAMPLER"):
        build_train_sampler(cfg, data)


def test_loader_batches_are_labelled_sized_and_repeatable(city):
    cfg = config(city)
    data = prepare_training_data(cfg)
    sampler = build_train_sampler(cfg, data)
    loader = build_train_loader(cfg, data, build_train_transform(cfg), sampler)
    state = torch.get_rng_state()
    iterator = iter(loader)
    assert torch.equal(torch.get_rng_state(), state)  # starting an epoch draws nothing from the global RNG
    first = next(iterator)
    assert first["image"].shape == (4, 3, 32, 32)
    assert first["label"].tolist() == [data.labels[i] for i in first["index"].tolist()]
    assert first["domain"].tolist() == [0, 0, 0, 0]
    sampler.set_epoch(0)
    again = next(iter(loader))  # the same epoch again: the same images, augmentation included
    assert first["index"].tolist() == again["index"].tolist() and torch.equal(first["image"], again["image"])
    sampler.set_epoch(1)
    assert next(iter(loader))["index"].tolist() != first["index"].tolist()


def test_background_swap_without_masks_names_the_missing_file(city):
    cfg = config(city, "INPUT.BACKGROUND_SWAP.PROB", "0.5")
    data = prepare_training_data(cfg)
    with pytest.raises(DatasetError, match="masks.json") as info:
        build_train_loader(cfg, data, build_train_transform(cfg), build_train_sampler(cfg, data))
    assert "vreid prep masks" in str(info.value)
