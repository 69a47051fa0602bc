"""The `vreid` command as a user runs it: help, version, data summary, and exit codes on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from data.test_aic21 import make_real
from vreid import __version__
from vreid.cli import EXIT_BAD_INPUT, main


def test_help_lists_subcommands_and_version():
    out = subprocess.run([sys.executable, "-m", "vreid.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("data", "synth", "config"):
        assert command in out.stdout
    out = subprocess.run([sys.executable, "-m", "vreid.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"vreid {__version__}"


def test_summary_json_is_the_only_stdout(tmp_path, capsys):
    make_real(tmp_path)
    assert main(["data", "summary", "--dataset", "aic21", "--root", str(tmp_path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats == {
        "train": {"images": 6, "ids": 3, "cameras": 3, "tracks": 3},
        "query": {"images": 2, "ids": None, "cameras": 2, "tracks": 0},
        "gallery": {"images": 3, "ids": None, "cameras": 0, "tracks": 2},
    }


def test_summary_table_and_config_defaults(tmp_path, capsys):
    make_real(tmp_path)
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"DATASETS:\n  TEST: aic21\n  ROOT_DIR: {tmp_path}\n")
    assert main(["data", "summary", "--config-file", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "unlabelled split" in out


@pytest.mark.parametrize("argv, message", [
    (["data", "summary", "--dataset", "aic21", "--root", "/no/such/dir"], "/no/such/dir: dataset root does not exist"),
    (["data", "summary", "--dataset", "market1501", "--root", "."], "unknown dataset 'market1501'"),
    (["data", "summary", "--dataset", "aic21", "--root", ".", "DATASETS.ROOT_DIRR", "x"], "DATASETS.ROOT_DIR"),
])
def test_bad_input_exits_non_zero_with_a_clear_message(argv, message, caplog):
    assert main(argv) == EXIT_BAD_INPUT
    assert message in caplog.text


def test_verify_images_fails_on_a_corrupt_file(tmp_path, caplog):
    base = make_real(tmp_path)
    (base / "image_test" / "000002.jpg").write_bytes(b"garbage")
    args = ["data", "summary", "--dataset", "aic21", "--root", str(tmp_path)]
    assert main(args) == 0  # readers only check existence
    assert main([*args, "--verify-images"]) == EXIT_BAD_INPUT
    assert "image_test/000002.jpg: unreadable image" in caplog.text
    assert "1 of 11 images cannot be decoded" in caplog.text


def test_config_show_prints_resolved_config(capsys):
    assert main(["config", "show", "SEED", "11"]) == 0
    assert "SEED: 11" in capsys.readouterr().out


def test_synth_then_summary_round_trip(tmp_path, capsys, caplog):
    out = tmp_path / "city"
    argv = ["synth", "--out", str(out), "--ids", "6", "--sim-ids", "4", "--cameras", "3", "--seed", "1",
            "--min-frames", "2", "--max-frames", "3", "--preview"]
    assert main(argv) == 0
    capsys.readouterr()
    real = out / "AIC21_Track2_ReID"
    assert main(["data", "summary", "--dataset", "aic21", "--root", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["train"]["ids"] == stats["gallery"]["ids"] == stats["query"]["ids"] == 3
    assert stats["query"]["images"] == 3 * 2  # queries_per_id defaults to 2
    for split, folder in (("train", "image_train"), ("query", "image_query"), ("gallery", "image_test")):
        assert stats[split]["images"] == len(list((real / folder).iterdir()))
    assert main(["data", "summary", "--dataset", "aic21_synthetic", "--root", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["ids"] == 4
    assert (out / "preview.png").stat().st_size > 0
    assert json.loads((out / "synth_options.json").read_text())["seed"] == 1
    assert main(argv) == EXIT_BAD_INPUT  # refuses to overwrite without --overwrite
    assert "AIC21_Track2_ReID" in caplog.text
    assert main([*argv, "--overwrite"]) == 0
    assert main(["synth", "--out", str(tmp_path / "x"), "--ids", "1"]) == EXIT_BAD_INPUT
    assert "num_ids" in caplog.text


def test_model_summary_prints_blocks_embedding_and_flops(capsys):
    assert main(["model", "summary", "--num-classes", "10", "MODEL.BACKBONE", "resnet18", "MODEL.LAST_STRIDE", "2",
                 "INPUT.SIZE_TEST", "(224, 224)"]) == 0
    out = capsys.readouterr().out
    assert "backbone.layer4" in out and "classifier" in out and "5,120" in out  # 512 x 10 classifier
    assert "embedding: 512-d" in out and "GFLOPs" in out
    assert main(["model", "summary", "MODEL.BACKBONE", "nonsense_net"]) == EXIT_BAD_INPUT


def test_options_may_follow_config_overrides(tmp_path, capsys):
    make_real(tmp_path)
    assert main(["data", "summary", "DATASETS.ROOT_DIR", str(tmp_path), "--dataset", "aic21", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["images"] == 6
    # a value that merely looks like a key stays where it is
    assert main(["config", "show", "OUTPUT_DIR", "SEED", "SEED", "4"]) == 0
    out = capsys.readouterr().out
    assert "OUTPUT_DIR: SEED" in out and "SEED: 4" in out
