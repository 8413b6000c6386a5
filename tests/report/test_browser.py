"""report.html in a real headless Chromium: the decision is what a reader sees first, without scrolling."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from edgetl.report import make_report

VIEWPORT = (1280, 800)
# The decision section's background and the PASS cell's, as set in edgetl/report/render.py's CSS.
DECISION_BACKGROUND = (0xE8, 0xF1, 0xFC)
PASS_BACKGROUND = (0xDA, 0xFB, 0xE1)


@pytest.fixture(scope="session")  # session: it decides before the benched run is built
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed and CI is set: run `bash scripts/ensure-test-tools.sh` first")
        pytest.skip("chromium is not installed (bash scripts/ensure-test-tools.sh installs it)")
    return exe


def _screenshot(chromium: str, page, out, tmp_path) -> np.ndarray:
    """The first viewport of ``page`` as an (H, W, 3) uint8 array."""
    width, height = VIEWPORT
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},{height}",
                    f"--screenshot={out}", page.as_uri()],
                   check=True, capture_output=True, timeout=180, env={**os.environ, "HOME": str(tmp_path)})
    with Image.open(out) as image:
        return np.asarray(image.convert("RGB"))


def _rows_with(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Indices of the pixel rows that hold ``colour`` (within 2 levels: colour management may round)."""
    match = (np.abs(pixels.astype(int) - colour) <= 2).all(axis=2)
    return np.flatnonzero(match.sum(axis=1) > 20)


def test_the_first_screen_holds_the_whole_decision_table(chromium, benched_run, tmp_path):
    make_report(benched_run.path)
    pixels = _screenshot(chromium, benched_run.path / "report.html", tmp_path / "first-screen.png", tmp_path)
    assert pixels.shape[:2] == (VIEWPORT[1], VIEWPORT[0])

    decision = _rows_with(pixels, DECISION_BACKGROUND)
    assert decision.size > 100, "the decision section is not on the first screen"
    assert decision.min() < 200, f"the decision starts {decision.min()} px down: something pushes it down"
    assert decision.max() < VIEWPORT[1] - 1, "the decision section runs past the fold"
    passed = _rows_with(pixels, PASS_BACKGROUND)
    assert passed.size and decision.min() < passed.min() < decision.max(), "the PASS verdict is not on screen"


def test_long_reasons_and_estimates_keep_the_decision_inside_the_first_screen(chromium, benched_run, tmp_path):
    """Two UNDECIDED targets (their reasons are long) and an estimated one: the table wraps, it does not
    squeeze the reasons into a sliver nor spill past the section's right edge or the fold."""
    from edgetl.report.data import collect
    from edgetl.report.render import to_html

    data, notes = collect(benched_run)
    why = ("accuracy_drop +2.08 pp (n=48: 95% CI -5.52..+10.90) straddles budget 1 pp: too few samples to decide "
           "(use a larger validation split)")
    row = {"device": "vm", "p90_ms": 4.29, "speedup": 13.1, "top1": 0.979, "drop_pp": 2.08, "estimated": False}
    data["decisions"] = [
        {**row, "target": "host-cpu", "verdict": "UNDECIDED", "artifact": "host-cpu/int8", "runtime": "onnxruntime",
         "precision": "int8", "why": why},
        {**row, "target": "host-openvino", "verdict": "UNDECIDED", "artifact": "host-openvino/int8",
         "runtime": "openvino", "precision": "int8", "why": why},
        {**row, "target": "jetson-orin-nano", "verdict": "not measured here", "artifact": "jetson-orin-nano/int8",
         "runtime": "tensorrt", "precision": "int8", "p90_ms": None, "speedup": None, "top1": 0.833,
         "drop_pp": 16.67, "estimated": True, "why": "needs an NVIDIA GPU"}]
    page = tmp_path / "report.html"
    page.write_text(to_html(data, notes, {}))
    pixels = _screenshot(chromium, page, tmp_path / "first-screen.png", tmp_path)

    decision = _rows_with(pixels, DECISION_BACKGROUND)
    assert decision.size > 100 and decision.max() < VIEWPORT[1] - 1, "the decision section runs past the fold"
    right_margin = pixels[decision.min():decision.max(), -16:]
    assert (right_margin == 255).all(), "the decision table spills past the section's right edge"
