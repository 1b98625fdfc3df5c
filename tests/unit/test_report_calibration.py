"""The report draws each adjustment's negative-control funnel when calibration ran."""

from __future__ import annotations

from pathlib import Path

from medlab.studies.report import _calibration_plot


def test_a_calibration_funnel_per_adjustment_with_a_null(tmp_path: Path) -> None:
    controls = [
        {"adjustment": a, "log_hr": b, "se": s}
        for a in ("none", "matching")
        for b, s in ((0.1, 0.2), (-0.2, 0.3), (0.3, 0.15))
    ]
    site = {
        "site": "s",
        "controls": controls,
        "estimates": [
            {
                "adjustment": "none",
                "null": {"mean": 0.1, "sd": 0.1},
                "ease": 0.12,
                "log_hr": 0.4,
                "se": 0.2,
            },
            {"adjustment": "matching", "null": None},  # not calibrated: no plot
        ],
    }
    images = _calibration_plot({"name": "c"}, site, tmp_path)
    assert images == ["c_s_calibration_none.png"]
    assert (tmp_path / images[0]).stat().st_size > 0
