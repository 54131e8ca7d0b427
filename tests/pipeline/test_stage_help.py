"""What a newcomer types first: `make help` and `python -m pipeline <stage> --help`."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from pipeline import __main__ as cli
from tests.conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_help(stage: str, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main([stage, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_help_names_what_the_stage_writes(stage, capsys):
    text = stage_help(stage, capsys)
    assert text.startswith(f"usage: python -m pipeline {stage} ")
    writes = text[text.index("writes:"):]
    for out in STAGES[stage]["outs"]:
        path = next(iter(out)) if isinstance(out, dict) else out
        assert path.rstrip("/") in writes, f"{stage} --help does not say it writes {path}"
    assert ("--worker" in text) == (stage == "tune")


def test_stage_helps_differ(capsys):
    texts = [stage_help(stage, capsys) for stage in STAGES]
    assert len(set(texts)) == len(texts)


def test_worker_is_refused_outside_tune(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--worker"])
    assert info.value.code == 2
    assert "unrecognized arguments: --worker" in capsys.readouterr().err


def test_make_help_lists_every_commented_target():
    makefile = (ROOT / "Makefile").read_text()
    documented = re.findall(r"^## ([^:]+): ", makefile, flags=re.M)
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    listed = [line.split()[1] for line in out.splitlines()]
    assert listed == documented
    assert {"run", "ui", "test", "experiments", "clean"} <= set(listed)
