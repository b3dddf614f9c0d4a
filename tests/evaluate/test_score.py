"""Rows per case and region, their summary and metrics.csv, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from distmis.evaluate.score import case_rows, summarise, write_metrics_csv
from distmis.prepare.preprocess import map_labels

REGIONS = ("WT", "TC", "ET")
SPACING = (1.0, 2.0, 3.0)


def _regions(*labels: int) -> np.ndarray:
    """Region masks (X, 1, 1, 3) of an MSD label line along x."""
    return map_labels(np.array(labels, dtype=np.uint8).reshape(-1, 1, 1), "regions").astype(bool)


def test_case_rows_score_each_region_channel():
    # x:           0  1  2  3  4  5
    reference = _regions(0, 1, 2, 3, 0, 0)  # WT x1..3, TC x2..3, ET x3
    predicted = _regions(0, 1, 1, 3, 3, 0)  # WT x1..4, TC x3..4, ET x3..4
    rows = case_rows("BRATS_001", predicted, reference, REGIONS, SPACING)
    assert [(r["case_id"], r["region"]) for r in rows] == [
        ("BRATS_001", "WT"),
        ("BRATS_001", "TC"),
        ("BRATS_001", "ET"),
    ]
    # WT: 2·3 / (4 + 3); TC: 2·1 / (2 + 2); ET: 2·1 / (2 + 1).
    assert [r["dice"] for r in rows] == pytest.approx([6 / 7, 0.5, 2 / 3])
    # Surfaces are whole lines here (1 voxel thick), x voxels 1 mm. WT: pred→ref [0,0,0,1],
    # ref→pred [0,0,0] → 95th pct 0.85; TC: pred→ref [0,1], ref→pred [1,0] → 0.95; ET as WT
    # with pred→ref [0,1] → 0.95.
    assert [r["hd95_mm"] for r in rows] == pytest.approx([0.85, 0.95, 0.95])


def test_case_rows_use_the_spacing_of_the_axis():
    reference = np.zeros((1, 4, 1, 1), dtype=bool)
    predicted = reference.copy()
    reference[0, 0], predicted[0, 3] = True, True  # 3 voxels apart along y (2 mm voxels)
    (row,) = case_rows("c", predicted, reference, ("tumour",), SPACING)
    assert row == {"case_id": "c", "region": "tumour", "dice": 0.0, "hd95_mm": 6.0}


def test_case_rows_reject_a_region_count_that_does_not_fit():
    masks = _regions(0, 1)
    with pytest.raises(ValueError, match=r"masks have 3 channels, but regions are \['tumour'\]"):
        case_rows("c", masks, masks, ("tumour",), SPACING)


def test_summarise_hand_computed():
    rows = [
        {"case_id": "a", "region": "WT", "dice": 0.5, "hd95_mm": 2.0},
        {"case_id": "b", "region": "WT", "dice": 1.0, "hd95_mm": 4.0},
        {"case_id": "c", "region": "WT", "dice": 0.0, "hd95_mm": 12.0},
        {"case_id": "a", "region": "ET", "dice": 0.25, "hd95_mm": 1.0},
    ]
    summary = summarise(rows, ("WT", "ET", "TC"))
    assert list(summary) == ["WT", "ET", "TC"]
    # dice [0.5, 1, 0]: mean 0.5, population variance (0 + 0.25 + 0.25) / 3.
    assert summary["WT"]["dice"] == {
        "mean": 0.5,
        "median": 0.5,
        "std": pytest.approx(np.sqrt(1 / 6)),
        "n": 3,
    }
    assert summary["WT"]["hd95_mm"] == {
        "mean": 6.0,
        "median": 4.0,
        "std": pytest.approx(np.sqrt(56 / 3)),
        "n": 3,
    }
    assert summary["ET"]["dice"] == {"mean": 0.25, "median": 0.25, "std": 0.0, "n": 1}
    assert summary["TC"] == {
        "dice": {"mean": None, "median": None, "std": None, "n": 0},
        "hd95_mm": {"mean": None, "median": None, "std": None, "n": 0},
    }


def test_metrics_csv_is_written_whole_with_six_significant_digits(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("old content that must go\n")
    rows = [
        {"case_id": "BRATS_001", "region": "WT", "dice": 2 / 3, "hd95_mm": 373.13},
        {"case_id": "BRATS_001", "region": "ET", "dice": 1.0, "hd95_mm": 0.0},
    ]
    write_metrics_csv(path, rows)
    # csv's own line ends (\r\n), as any csv reader expects.
    assert path.read_bytes() == (
        b"case_id,region,dice,hd95_mm\r\nBRATS_001,WT,0.666667,373.13\r\nBRATS_001,ET,1,0\r\n"
    )
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
