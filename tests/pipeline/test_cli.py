"""`python -m pipeline`: one line for the project's own errors, a traceback for anything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import __main__ as cli


def test_params_yaml_syntax_error_names_line_and_column(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("data:\n  source: synthetic\n  n_samples: [100\nsplit: {}\n")
    assert cli.main(["generate", "--params", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {bad}: not valid YAML at line 4, column 6"), err


def test_project_errors_are_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = Path(__file__).resolve().parents[2] / "params.yaml"
    text = params.read_text().replace("source: synthetic", "source: file", 1)
    (tmp_path / "params.yaml").write_text(text)
    assert cli.main(["generate", "--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: data.file.path:"), err


def test_unexpected_errors_keep_their_traceback(monkeypatch) -> None:
    """A library's ValueError or OSError is a bug to look into, not a message to shorten."""
    def broken(params, ws, **_) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(cli, "_generate", broken)
    monkeypatch.setitem(cli.STAGES, "generate", broken)
    with pytest.raises(OSError, match="disk on fire"):
        cli.main(["generate"])
