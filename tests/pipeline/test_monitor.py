"""`python -m pipeline monitor` in-process, on request logs written in the service's format."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from devtools.tiny_onnx_models import monitored_3d
from pipeline import __main__ as cli
from pipeline.config import MonitorConfig, load_params
from pipeline.monitor import main as monitor_main, read_card, read_log, summarize
from tests.conftest import ROOT

CFG = load_params(ROOT / "params.yaml").monitor


def write_log(directory, rows: np.ndarray, targets: np.ndarray | None, worker: int = 1) -> None:
    """Lines as service/request_log.py writes them: one per row served, one per row of feedback."""
    path = directory / "requests" / "data" / f"data.{worker}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        request = f"{i:032x}"
        lines.append({"kind": "prediction", "id": request, "row": 0, "inputs": dict(zip("abc", row.tolist())),
                      "output": float(row[0] + 2 * row[1] - row[2]), "extrapolated": False})
        if targets is not None:
            lines.append({"kind": "feedback", "id": request, "row": 0, "target": float(targets[i])})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"kind": "predic')  # cut short


@pytest.fixture
def model(tmp_path):
    model_dir, train = monitored_3d(tmp_path / "model")
    frame = pd.DataFrame(train, columns=["a", "b", "c"])
    frame["y"] = train @ [1.0, 2.0, -1.0]
    frame.to_parquet(tmp_path / "train.parquet")
    return model_dir / "card.json", tmp_path / "train.parquet"


def test_shifted_feature_is_flagged_alone_and_its_labelled_rows_are_written(tmp_path, model, capsys):
    card, train = model
    rows = np.random.default_rng(3).normal(size=(600, 3))
    rows[:, 1] += 1.0
    truth = rows @ [1.0, 2.0, -1.0] + np.where(rows[:, 1] > 1.5, 1.0, 0.0)  # worse where the shift took it
    write_log(tmp_path / "log", rows, truth)
    status = monitor_main(CFG, tmp_path / "log", card, train, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    psi = {f["feature"]: f["psi"] for f in summary["features"]}
    assert status == 1 and summary["retrain"]
    assert psi["b"] > 0.2 and psi["a"] < 0.1 and psi["c"] < 0.1
    assert any("'b' drifted" in reason for reason in summary["reasons"])
    assert not any("'a'" in reason or "'c'" in reason for reason in summary["reasons"])
    by_name = {f["feature"]: f for f in summary["features"]}
    assert by_name["b"]["ks_pvalue"] < 1e-6 < by_name["a"]["ks_pvalue"]
    assert summary["error"]["matched_rows"] == 600 and summary["error"]["live"] > 0.3
    assert summary["unreadable_log_lines"] == 1
    labelled = pd.read_csv(tmp_path / "out" / "labelled.csv")
    assert list(labelled.columns) == ["a", "b", "c", "y"] and len(labelled) == 600
    assert labelled["y"].to_numpy() == pytest.approx(truth)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Retrain" in html and html.count("data:image/png;base64,") == 4
    assert "retrain: feature 'b' drifted" in capsys.readouterr().out


def test_steady_traffic_passes_and_too_few_rows_give_no_verdict(tmp_path, model):
    card, train = model
    model_card = read_card(card)
    for name, rows in (("steady", np.random.default_rng(4).normal(size=(600, 3))),
                       ("few", np.random.default_rng(5).normal(size=(20, 3)) + 3)):
        write_log(tmp_path / name, rows, None)
        served, feedback, _ = read_log(tmp_path / name)
        summary, labelled = summarize(model_card, served, feedback, pd.read_parquet(train), CFG)
        assert not summary["retrain"] and summary["error"]["matched_rows"] == 0 and labelled.empty
    assert "no drift verdict" in summary["note"]  # the few rows moved by 3 sigma: too few to judge


def test_cli_names_a_missing_card_or_log_and_a_bad_threshold(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    assert cli.main(["monitor", "--log", str(tmp_path / "nothing")]) == 2
    assert "no model card at models/package/card.json" in capsys.readouterr().err
    monitored_3d(tmp_path / "models" / "package")
    assert cli.main(["monitor", "--log", str(tmp_path / "nothing")]) == 2
    assert "no request log under" in capsys.readouterr().err
    with pytest.raises(ValueError, match="psi_threshold"):
        MonitorConfig(psi_threshold=0, min_rows=1, error_ratio=1.5, min_feedback_rows=1)
