"""Configuration: _BASE_ inheritance, overrides, unknown keys with suggestions, saved config."""

from __future__ import annotations

import pytest
import yaml

from vreid.config import load_config, save_config
from vreid.errors import ConfigError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path / "base.yml", "SEED: 5\nDATASETS:\n  ROOT_DIR: /a\n  TEST: veri776\n")
    write(tmp_path / "mid" / "mid.yml", "_BASE_: ../base.yml\nDATASETS:\n  ROOT_DIR: /b\n")
    child = write(tmp_path / "child.yml", "_BASE_: mid/mid.yml\nDATASETS:\n  TRAIN: [veri776, aic21_synthetic]\n")
    cfg = load_config(child, ["DATASETS.LOCAL_SPLIT.NUM_IDS", "80", "SEED", "7"])
    assert cfg.SEED == 7  # command line beats file beats base
    assert cfg.DATASETS.ROOT_DIR == "/b"  # child's base beats grand-base
    assert cfg.DATASETS.TEST == "veri776"  # inherited
    assert cfg.DATASETS.TRAIN == ("veri776", "aic21_synthetic")
    assert cfg.DATASETS.LOCAL_SPLIT.NUM_IDS == 80
    assert cfg.is_frozen()


def test_multiple_bases_later_wins(tmp_path):
    write(tmp_path / "a.yml", "SEED: 1\nOUTPUT_DIR: a\n")
    write(tmp_path / "b.yml", "SEED: 2\n")
    cfg = load_config(write(tmp_path / "c.yml", "_BASE_: [a.yml, b.yml]\n"))
    assert (cfg.SEED, cfg.OUTPUT_DIR) == (2, "a")


def test_unknown_key_in_file_names_file_key_and_suggestion(tmp_path):
    f = write(tmp_path / "bad.yml", "DATASETS:\n  ROOT_DIRS: /x\n")
    with pytest.raises(ConfigError, match=r"bad\.yml: unknown config key 'DATASETS\.ROOT_DIRS'.*DATASETS\.ROOT_DIR"):
        load_config(f)


def test_unknown_key_on_command_line_suggests_by_last_part():
    with pytest.raises(ConfigError, match=r"command line: unknown config key 'SKIP_UNREADABLE'.*"
                                          r"DATALOADER\.SKIP_UNREADABLE"):
        load_config(None, ["SKIP_UNREADABLE", "True"])


@pytest.mark.parametrize("opts, match", [
    (["SEED"], "KEY VALUE pairs"),
    (["SEED", "'abc'"], "SEED"),
])
def test_bad_overrides(opts, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, opts)


@pytest.mark.parametrize("opts, match", [
    (["DATASETS.TEST", "market"], r"DATASETS\.TEST: 'market' is not one of veri776, aic21, "),
    (["DATASETS.TRAIN", "('veri776', 'nope')"], r"DATASETS\.TRAIN: 'nope' is not one of"),
    (["MODEL.POOLING", "sum"], r"MODEL\.POOLING: 'sum' is not one of gem, avg, max"),
    (["LOSSES.NAMES", "('ce', 'arc')"], r"LOSSES\.NAMES: unknown loss 'arc'"),
    (["SOLVER.OPTIMIZER", "lamb"], r"SOLVER\.OPTIMIZER: 'lamb' is not one of adam, sgd"),
    (["TEST.METRIC", "manhattan"], r"TEST\.METRIC: 'manhattan' is not one of euclidean, sqeuclidean, cosine"),
    (["SOLVER.IMS_PER_BATCH", "30", "DATALOADER.NUM_INSTANCE", "4"],
     r"SOLVER\.IMS_PER_BATCH \(30\) must be a multiple"),
])
def test_each_builder_checks_its_section(opts, match):
    """Reading a config checks keys and types only; the section's builder refuses a value it cannot build."""
    from vreid.engine.checks import check_training_config

    cfg = load_config(None, opts)  # accepted: config.py knows no choices
    with pytest.raises(ConfigError, match=match):
        check_training_config(cfg)


def test_unused_options_are_named_in_a_warning(caplog, monkeypatch):
    from vreid.models.build import check_model_config

    monkeypatch.setattr("vreid.models.build._WARNED", set())
    cfg = load_config(None, ["MODEL.POOLING", "avg", "MODEL.GEM.P", "4.0"])
    check_model_config(cfg)
    check_model_config(cfg)  # the builder and the up-front check both run it: one warning
    assert caplog.text.count("MODEL.GEM.P is set but has no effect") == 1
    caplog.clear()
    check_model_config(load_config(None, ["MODEL.POOLING", "gem", "MODEL.GEM.P", "4.0"]))
    assert "no effect" not in caplog.text


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "x.yml", "SEED: [1\n"))
    with pytest.raises(ConfigError, match="_BASE_ cycle"):
        write(tmp_path / "p.yml", "_BASE_: q.yml\n")
        load_config(write(tmp_path / "q.yml", "_BASE_: p.yml\n"))
    with pytest.raises(ConfigError, match="named by _BASE_"):
        load_config(write(tmp_path / "r.yml", "_BASE_: missing.yml\n"))
    with pytest.raises(ConfigError, match="DATASETS is a section"):
        load_config(write(tmp_path / "s.yml", "DATASETS: 3\n"))


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["DATASETS.TEST", "vehicle2cam", "DATASETS.TEST_SPLIT", "val"])
    path = save_config(cfg, tmp_path / "out")
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["DATASETS"]["TEST_SPLIT"] == "val"


def test_every_default_has_a_comment():
    """Each option in config.py carries a one-line comment (on its line or the line above)."""
    import inspect

    import vreid.config as config_module

    lines = inspect.getsource(config_module).splitlines()
    for i, line in enumerate(lines):
        if line.startswith("_C.") and "= CN()" not in line:
            assert "#" in line or lines[i - 1].lstrip().startswith("#"), f"no comment: {line}"


def test_every_shipped_config_loads():
    """Every file under configs/ loads: pipeline*.yml as a pipeline, the rest as a training config."""
    from pathlib import Path

    from vreid.engine.checks import check_training_config
    from vreid.pipeline import load_pipeline

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yml"))
    pipelines = [p for p in configs if p.name.startswith("pipeline")]
    assert len(configs) - len(pipelines) >= 8 and len(pipelines) >= 4
    for path in configs:
        if path in pipelines:
            load_pipeline(path)  # resolves every member's config and opts
        else:
            check_training_config(load_config(path))  # raises on any unknown key or bad value


def test_every_option_is_documented():
    """docs/configuration.md carries exactly the table `vreid config docs` prints, covering every option."""
    from pathlib import Path

    from vreid.config import _flat_keys, get_defaults, options_markdown

    table = options_markdown()
    assert all(f"`{k}`" in table for k in _flat_keys(get_defaults()))
    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert table in doc, "docs/configuration.md is stale: paste the output of `vreid config docs`"


def test_integers_are_accepted_for_float_options(tmp_path):
    """yacs alone rejects ``SOLVER.BASE_LR 1`` (int vs float); an integer is a valid float, floats are not ints."""
    cfg = load_config(None, ["SOLVER.BASE_LR", "1", "UNIT.TIME_LIMIT", "240"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float) and cfg.UNIT.TIME_LIMIT == 240.0
    cfg = load_config(write(tmp_path / "f.yml", "SOLVER:\n  BASE_LR: 2\n"))
    assert cfg.SOLVER.BASE_LR == 2.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    with pytest.raises(ConfigError, match="SOLVER.MAX_EPOCHS"):
        load_config(None, ["SOLVER.MAX_EPOCHS", "2.5"])
    with pytest.raises(ConfigError, match="SOLVER.BASE_LR"):
        load_config(None, ["SOLVER.BASE_LR", "fast"])


def test_string_options_stay_strings(tmp_path):
    """yacs literal-evaluates strings: "800" must stay the string the option expects, from a file or the CLI."""
    cfg = load_config(None, ["DATASETS.TEST_SPLIT", "800", "MODEL.PRETRAIN_PATH", "/w/a.pth", "OUTPUT_DIR", "1e3",
                             "DATASETS.TEST", "'veri776'"])
    assert cfg.DATASETS.TEST == "veri776"
    assert (cfg.DATASETS.TEST_SPLIT, cfg.MODEL.PRETRAIN_PATH, cfg.OUTPUT_DIR) == ("800", "/w/a.pth", "1e3")
    f = write(tmp_path / "s.yml", 'DATASETS:\n  TEST_SPLIT: "1600"\n  ROOT_DIR: 2024\n')
    cfg = load_config(f)
    assert (cfg.DATASETS.TEST_SPLIT, cfg.DATASETS.ROOT_DIR) == ("1600", "2024")
    assert load_config(None, ["DATASETS.FOLDER_PATTERN", r"(?P<vehicle_id>\d+)_c(?P<camera_id>\d+)"]
                       ).DATASETS.FOLDER_PATTERN == r"(?P<vehicle_id>\d+)_c(?P<camera_id>\d+)"
