"""Per-camera feature normalisation against per-row loops, and the invariance it exists for."""

from __future__ import annotations

import numpy as np
import pytest

from vreid.retrieval.camera_norm import STD_EPS, camera_normalize, camera_normalize_pair
from vreid.retrieval.metrics import evaluate


def ref_normalize(x, cams, mode, min_images):
    """Row by row: the statistics of the row's camera (or of all rows for a small camera), then unit length."""
    x = np.asarray(x, np.float64)
    out = []
    for i, row in enumerate(x):
        group = [j for j in range(len(x)) if cams[j] == cams[i]]
        if len(group) < min_images:
            group = list(range(len(x)))
        rows = x[group]
        mean = rows.sum(axis=0) / len(rows)
        value = row - mean
        if mode == "standardize":
            std = np.sqrt(((rows - mean) ** 2).sum(axis=0) / len(rows))
            value = value / (std + STD_EPS)
        out.append(value / np.linalg.norm(value))
    return np.array(out)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    cams = np.array(["1"] * 12 + ["2"] * 15 + ["3"] * 3)  # camera 3 is below min_images=5
    return x, cams


@pytest.mark.parametrize("mode", ["center", "standardize"])
def test_matches_row_by_row_reference(data, mode):
    x, cams = data
    out = camera_normalize(x, cams, mode, min_images=5)
    assert out.dtype == np.float32
    assert np.allclose(out, ref_normalize(x, cams, mode, 5), atol=1e-6)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_small_camera_uses_all_images(data):
    x, cams = data
    out = camera_normalize(x, cams, "center", min_images=5)
    pooled = x[27:] - x.astype(np.float64).mean(axis=0)
    assert np.allclose(out[27:], pooled / np.linalg.norm(pooled, axis=1, keepdims=True), atol=1e-6)
    # with min_images 3 camera 3 is large enough: centred on its own mean, so the rows differ
    own = camera_normalize(x, cams, "center", min_images=3)
    assert not np.allclose(own[27:], out[27:], atol=1e-3)
    assert np.allclose(own[:27], out[:27])


def test_none_only_normalises(data):
    x, cams = data
    assert np.allclose(camera_normalize(x, cams, "none"), x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-6)


def test_a_camera_offset_no_longer_changes_the_ranking():
    """What it is for: camera 2 adds one vector to all its features (another colour response). The plain ranking
    suffers; centred features are the same with and without the offset, so the ranking is restored exactly."""
    rng = np.random.default_rng(1)
    ids = np.arange(40)
    centres = rng.normal(size=(40, 32))
    query = centres + 0.8 * rng.normal(size=(40, 32))
    gallery = centres + 0.8 * rng.normal(size=(40, 32))
    shifted = gallery + 3.0 * rng.normal(size=32)  # the same offset for every image of camera 2
    qc, gc = ["1"] * 40, ["2"] * 40

    def m_ap(q, g):
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        dist = 2 - 2 * q @ g.T
        return evaluate(dist, ids, ids, np.array(qc), np.array(gc))["mAP"]

    q0, g0 = camera_normalize_pair(query, gallery, qc, gc, "center")
    q1, g1 = camera_normalize_pair(query, shifted, qc, gc, "center")
    assert np.allclose(q0, q1, atol=1e-5) and np.allclose(g0, g1, atol=1e-5)
    assert m_ap(query, shifted) < m_ap(query, gallery) - 0.05  # the offset does hurt (0.95 -> 0.89)
    assert m_ap(q1, g1) == pytest.approx(m_ap(q0, g0))


def test_standardize_removes_a_per_camera_scale_per_dimension():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 6))
    cams = np.array(["a"] * 10 + ["b"] * 10)
    scaled = x.copy()
    scaled[10:] = scaled[10:] * rng.uniform(0.5, 2.0, size=6) + rng.normal(size=6)
    assert np.allclose(camera_normalize(x, cams, "standardize"), camera_normalize(scaled, cams, "standardize"),
                       atol=1e-5)
    assert not np.allclose(camera_normalize(x, cams, "center"), camera_normalize(scaled, cams, "center"), atol=1e-3)


def test_pair_takes_statistics_from_both_sides():
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(6, 4)), rng.normal(size=(9, 4))
    qc, gc = ["1", "1", "2", "2", "2", "1"], ["1"] * 4 + ["2"] * 5
    nq, ng = camera_normalize_pair(q, g, qc, gc, "center", min_images=1)
    both = ref_normalize(np.concatenate([q, g]), qc + gc, "center", 1)
    assert np.allclose(nq, both[:6], atol=1e-6) and np.allclose(ng, both[6:], atol=1e-6)


def test_bad_arguments_name_the_problem(data):
    x, cams = data
    with pytest.raises(ValueError, match="unknown camera normalisation 'mean'"):
        camera_normalize(x, cams, "mean")
    with pytest.raises(ValueError, match="min_images must be >= 1"):
        camera_normalize(x, cams, "center", min_images=0)
    with pytest.raises(ValueError, match="one camera per feature row"):
        camera_normalize(x, cams[:-1], "center")
    with pytest.raises(ValueError, match="dimensions differ"):
        camera_normalize_pair(x, x[:, :4], cams, cams, "center")
    with pytest.raises(ValueError, match="NaN or infinite"):
        camera_normalize(np.full((3, 2), np.nan), ["1"] * 3, "center")


# --- statistics fitted once and applied to other rows (galleries) --------------------------------------------------

def test_fitted_statistics_apply_to_new_rows_of_known_and_unknown_cameras(data):
    from vreid.retrieval.camera_norm import CameraStats

    x, cams = data
    stats = CameraStats.fit(x, cams, "standardize", 5)
    assert stats.cameras == ("1", "2") and stats.counts == (12, 15) and stats.pooled_count == 30
    new = np.random.default_rng(3).normal(size=(4, 8)).astype(np.float32)
    out = stats.apply(new, ["2", "1", "3", "elsewhere"])
    x64 = x.astype(np.float64)

    def expected(row, rows):  # written out: that group's mean and population std, then unit length
        value = (row - rows.mean(axis=0)) / (rows.std(axis=0) + STD_EPS)
        return value / np.linalg.norm(value)

    assert np.allclose(out[0], expected(new[0], x64[cams == "2"]), atol=1e-6)
    assert np.allclose(out[1], expected(new[1], x64[cams == "1"]), atol=1e-6)
    for i in (2, 3):  # camera 3 had too few rows to have its own; "elsewhere" was never seen: all 30 rows
        assert np.allclose(out[i], expected(new[i], x64), atol=1e-6)
    # the pooled moments, combined from the cameras', equal numpy's over the whole set
    assert np.allclose(stats.pooled_mean, x64.mean(axis=0), atol=1e-12)
    assert np.allclose(stats.pooled_scale, x64.std(axis=0) + STD_EPS, atol=1e-12)


def test_statistics_round_trip_through_json_exactly_and_broken_text_is_named(data):
    from vreid.retrieval.camera_norm import CameraStats

    x, cams = data
    stats = CameraStats.fit(x, cams, "center", 5)
    back = CameraStats.from_json(stats.to_json(), "g.db")
    assert (back.mode, back.min_images, back.cameras, back.counts, back.pooled_count) == \
        ("center", 5, ("1", "2"), (12, 15), 30)
    for a, b in ((stats.means, back.means), (stats.scales, back.scales), (stats.pooled_mean, back.pooled_mean)):
        assert np.array_equal(a, b)
    assert np.array_equal(stats.apply(x, cams), back.apply(x, cams))
    text = stats.to_json()
    assert len(text) < 0.6 * len(CameraStats.fit(x, cams, "standardize", 5).to_json())  # center stores no scales
    for broken in ("{", text.replace('"center"', '"sideways"'), text.replace('"dim": 8', '"dim": 7'), "[]"):
        with pytest.raises(ValueError, match="g.db: broken camera statistics"):
            CameraStats.from_json(broken, "g.db")
    with pytest.raises(ValueError, match="8-d"):
        stats.apply(x[:, :4], cams)
    with pytest.raises(ValueError, match="center or standardize"):
        CameraStats.fit(x, cams, "none")


def test_no_camera_large_enough_and_the_unknown_camera_use_the_pooled_statistics():
    from vreid.retrieval.camera_norm import CameraStats

    rng = np.random.default_rng(5)
    x = rng.normal(size=(9, 4)).astype(np.float32) + 50.0  # a large common offset: precision of the spread
    cams = np.array(["a"] * 4 + ["b"] * 5)
    out = camera_normalize(x, cams, "standardize", 10)  # no camera reaches 10: every row with all rows' statistics
    assert np.allclose(out, ref_normalize(x, ["all"] * 9, "standardize", 1), atol=1e-6)
    unknown = np.array([""] * 5 + ["b"] * 4)  # five rows of unknown camera: still no statistics of their own
    stats = CameraStats.fit(x, unknown, "standardize", 3)
    assert stats.cameras == ("b",)
    x64 = x.astype(np.float64)
    assert np.allclose(stats.pooled_scale, x64.std(axis=0) + STD_EPS, rtol=1e-12)
    assert np.allclose(stats.apply(x[:5], unknown[:5]), ref_normalize(x, ["all"] * 9, "standardize", 1)[:5],
                       atol=1e-6)
