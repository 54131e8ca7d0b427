"""`dvc plots show` in a built project: every declared plot renders without a network and without a warning."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
VEGA_PLOTS = 3  # the learning curve as the train stage declares it and as the top-level entry, the test-set scatter


@pytest.mark.timeout(900)
def test_dvc_plots_show_renders_offline_without_warnings(built_project):
    project = built_project  # `dvc plots show` only reads it (dvc_plots/ is git-ignored)
    assert (project.path / ".dvc" / "plots.html").read_text() == (ROOT / ".dvc" / "plots.html").read_text()
    result = project.run("dvc", "plots", "show")
    assert "WARNING" not in result.stdout + result.stderr, result.stderr  # e.g. "DVC failed to load some plots"
    page = (project.path / "dvc_plots" / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=[\"']https?://", page), "a script is loaded from the network"
    assert "vega-embed@6.18.2, inlined by scripts/vendor-vega.sh" in page
    assert page.count("vegaEmbed('#") == VEGA_PLOTS
    for picture in ["learning_curve.png", "predictions.png", "residuals.png"]:
        assert picture in page
