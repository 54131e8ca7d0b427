"""`python -m pipeline monitor --log DIR`: logged traffic against the training data, offline.

Reads the service's request log (SERVICE_REQUEST_LOG: JSON lines written by BentoML's monitor, one
line per row served and one per row of feedback), compares the inputs and outputs with the served
model's reference profile (its card) and, where data/split is at hand, with the training rows
themselves (two-sample Kolmogorov-Smirnov), and the live error from feedback with the test error.
It writes report.html, summary.json and labelled.csv (the rows with ground truth, in the data's
columns, ready to append to the data file) and says whether to retrain.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import file_sha256, write_json
from pipeline.config import MonitorConfig
from pipeline.errors import PipelineError
from service.api_models import ModelCard
from service.drift import bin_counts, psi

LOG_GLOB = "data.*.log*"  # BentoML's monitor: <name>/data/data.<worker>.log, rotated to .log.1, .log.2, ...


def read_log(log_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(served rows, feedback rows, unreadable lines) from every log file under `log_dir`."""
    files = sorted(Path(log_dir).rglob(LOG_GLOB))
    if not files:
        raise PipelineError(f"monitor: no request log under {log_dir} (files {LOG_GLOB}); serve with "
                            f"SERVICE_REQUEST_LOG={log_dir} to write one")
    records, bad = [], 0
    for path in files:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a crash: skip it, count it
                bad += 1
                continue
            if isinstance(record, dict) and record.get("kind") in ("prediction", "feedback"):
                records.append(record)
            else:
                bad += 1
    frame = pd.DataFrame.from_records(records, columns=["kind", "id", "row", "inputs", "output", "extrapolated",
                                                        "target", "timestamp"])
    served = frame[frame["kind"] == "prediction"].reset_index(drop=True)
    feedback = frame[frame["kind"] == "feedback"].drop_duplicates(["id", "row"], keep="last").reset_index(drop=True)
    return served, feedback, bad


def served_inputs(served: pd.DataFrame, card: ModelCard) -> pd.DataFrame:
    """One column per card feature; rows logged for another model (other features) are dropped."""
    names = card.feature_names
    rows = [inputs for inputs in served["inputs"] if isinstance(inputs, dict) and list(inputs) == names]
    return pd.DataFrame.from_records(rows, columns=names)


def feature_drift(card: ModelCard, inputs: pd.DataFrame, train: pd.DataFrame | None) -> list[dict]:
    """Per feature: PSI over the profile's bins, the live and training shares, and a KS test on raw values."""
    from scipy import stats

    out = []
    for column in card.profile.features:
        live = inputs[column.name]
        if column.kind == "categorical":  # bin 0 is out of vocabulary: no value sent maps to it by name
            index = {c: i for i, c in enumerate(column.categories or []) if i}
            values = live.map(lambda v: index.get(str(v), 0)).to_numpy(dtype=np.float64)
        else:
            values = pd.to_numeric(live, errors="coerce").to_numpy(dtype=np.float64)
            values = values[np.isfinite(values)]
        counts = bin_counts(values, column.edges)
        shares = counts / max(counts.sum(), 1)
        entry = {"feature": column.name, "kind": column.kind, "rows": int(counts.sum()),
                 "psi": psi(shares, column.expected), "live_shares": shares.tolist(), "expected": column.expected,
                 "edges": column.edges}
        if column.kind == "numeric" and train is not None and column.name in train and len(values):
            test = stats.ks_2samp(values, train[column.name].to_numpy(dtype=np.float64))
            entry.update(ks_statistic=float(test.statistic), ks_pvalue=float(test.pvalue),
                         live_mean=float(values.mean()), train_mean=float(train[column.name].mean()),
                         train_std=float(train[column.name].std()))
        out.append(entry)
    return out


def output_drift(card: ModelCard, served: pd.DataFrame) -> dict:
    column = card.profile.output
    if column.kind == "categorical":
        index = {c: i for i, c in enumerate(column.categories or [])}
        values = np.array([index.get(str(v), 0) for v in served["output"]], dtype=np.float64)
    else:
        values = pd.to_numeric(served["output"], errors="coerce").to_numpy(dtype=np.float64)
    counts = bin_counts(values[np.isfinite(values)], column.edges)
    shares = counts / max(counts.sum(), 1)
    return {"name": column.name, "psi": psi(shares, column.expected), "live_shares": shares.tolist(),
            "expected": column.expected}


def live_error(card: ModelCard, served: pd.DataFrame, feedback: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """The served model's error on the rows that got ground truth, and those rows (features + target)."""
    joined = served.merge(feedback[["id", "row", "target"]], on=["id", "row"], suffixes=("", "_fb"))
    joined = joined.drop(columns=["target"]).rename(columns={"target_fb": "target"})
    labelled = served_inputs(joined, card)
    labelled[card.target or "target"] = joined["target"].to_numpy()
    result: dict = {"feedback_rows": len(feedback), "matched_rows": len(joined),
                    "unmatched_feedback_rows": len(feedback) - len(joined)}
    if not len(joined):
        return result, labelled
    if card.task == "regression":
        errors = pd.to_numeric(joined["output"]) - pd.to_numeric(joined["target"])
        result.update(metric="rmse", live=float(np.sqrt(np.mean(errors ** 2))), test=card.metrics.get("rmse"))
    else:
        wrong = (joined["output"].astype(str) != joined["target"].astype(str)).mean()
        accuracy = card.metrics.get("accuracy")
        result.update(metric="error_rate", live=float(wrong), test=None if accuracy is None else 1 - accuracy)
    return result, labelled


def verdict(summary: dict, cfg: MonitorConfig) -> list[str]:
    """Why to retrain, one reason per line; empty when nothing crossed a threshold."""
    reasons = []
    if summary["rows"] >= cfg.min_rows:
        for entry in summary["features"]:
            if entry["psi"] > cfg.psi_threshold:
                reasons.append(f"feature {entry['feature']!r} drifted: PSI {entry['psi']:.3f} > {cfg.psi_threshold:g}")
        if summary["output"]["psi"] > cfg.psi_threshold:
            reasons.append(f"the model's output drifted: PSI {summary['output']['psi']:.3f} > {cfg.psi_threshold:g}")
    error = summary["error"]
    if error.get("matched_rows", 0) >= cfg.min_feedback_rows and error.get("test"):
        ratio = error["live"] / error["test"]
        error["ratio"] = ratio
        if ratio > cfg.error_ratio:
            reasons.append(f"live {error['metric']} {error['live']:.4g} is {ratio:.2f}x the test {error['metric']} "
                           f"{error['test']:.4g} (> {cfg.error_ratio:g}x)")
    return reasons


def summarize(card: ModelCard, served: pd.DataFrame, feedback: pd.DataFrame, train: pd.DataFrame | None,
              cfg: MonitorConfig) -> tuple[dict, pd.DataFrame]:
    """The JSON summary (figures, thresholds, reasons to retrain) and the labelled rows."""
    if card.profile is None:
        raise PipelineError("monitor: the model card has no reference profile; re-run `dvc repro` to package a "
                            "model with one")
    inputs = served_inputs(served, card)
    error, labelled = live_error(card, served, feedback)
    summary = {"model": card.name, "model_version": card.mlflow.model_version if card.mlflow else None,
               "rows": len(inputs), "rows_for_other_models": len(served) - len(inputs),
               "extrapolated_rate": float(served["extrapolated"].astype(bool).mean()) if len(served) else None,
               "features": feature_drift(card, inputs, train), "output": output_drift(card, served),
               "error": error,
               "thresholds": cfg.model_dump()}
    summary["reasons"] = verdict(summary, cfg)
    summary["retrain"] = bool(summary["reasons"])
    if summary["rows"] < cfg.min_rows:
        summary["note"] = f"{summary['rows']} logged rows: fewer than monitor.min_rows ({cfg.min_rows}), no drift verdict"
    return summary, labelled


def _bars(entry: dict, title: str) -> str:
    """A bar chart of training against live shares per bin, as an inline PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6))
    bins = np.arange(len(entry["expected"]))
    ax.bar(bins - 0.2, entry["expected"], 0.4, label="training")
    ax.bar(bins + 0.2, entry["live_shares"], 0.4, label="served")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("bin (training quantiles)" if entry.get("kind", "numeric") == "numeric" else "category")
    ax.set_ylabel("share of rows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def render_html(summary: dict) -> str:
    """A self-contained page: the verdict, a table per feature, and the distributions."""
    def fmt(value) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else (
            f"{value:.4g}" if isinstance(value, float) else html.escape(str(value)))

    verdict_text = ("<p class=bad>Retrain: " + "; ".join(map(html.escape, summary["reasons"])) + "</p>"
                    if summary["retrain"] else "<p class=ok>No threshold crossed.</p>")
    rows = "".join(
        f"<tr><td>{fmt(f['feature'])}</td><td>{fmt(f['psi'])}</td><td>{fmt(f.get('ks_statistic'))}</td>"
        f"<td>{fmt(f.get('ks_pvalue'))}</td><td>{fmt(f.get('live_mean'))}</td><td>{fmt(f.get('train_mean'))}</td></tr>"
        for f in summary["features"])
    error = summary["error"]
    pictures = "".join(_bars(f, f"{f['feature']}: PSI {f['psi']:.3f}") for f in summary["features"])
    pictures += _bars(summary["output"], f"output ({summary['output']['name']}): PSI {summary['output']['psi']:.3f}")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Drift report: {fmt(summary['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:right}}.bad{{color:#b00}}
.ok{{color:#070}}</style></head><body>
<h1>Drift report: {fmt(summary['model'])} v{fmt(summary['model_version'])}</h1>{verdict_text}
<p>{summary['rows']} served rows ({fmt(summary['extrapolated_rate'])} outside the training range);
output PSI {fmt(summary['output']['psi'])}; feedback: {error['matched_rows']} labelled rows,
live {fmt(error.get('metric'))} {fmt(error.get('live'))} against test {fmt(error.get('test'))}.
{fmt(summary.get('note', ''))}</p>
<table><tr><th>feature</th><th>PSI</th><th>KS statistic</th><th>KS p-value</th><th>served mean</th>
<th>training mean</th></tr>{rows}</table>
<p>Thresholds (params.yaml monitor): {html.escape(json.dumps(summary['thresholds']))}</p>
{pictures}</body></html>
"""


def read_card(path: Path) -> ModelCard:
    """The packaged card, with the MLflow version from provenance.json when that describes this model.onnx."""
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
        provenance = path.with_name("provenance.json")
        if provenance.is_file() and (path.with_name("model.onnx")).is_file():
            extra = json.loads(provenance.read_text(encoding="utf-8"))
            if extra.get("model_sha256") == file_sha256(path.with_name("model.onnx")):
                card["mlflow"] = extra.get("mlflow")
        return ModelCard.model_validate(card)
    except FileNotFoundError:
        raise PipelineError(f"monitor: no model card at {path}; run `dvc repro` first (monitor reads the served model's card)") from None
    except ValueError as exc:
        raise PipelineError(f"monitor: model card {path} is invalid: {str(exc).splitlines()[0]}") from None


def main(cfg: MonitorConfig, log_dir: Path, card_path: Path, train_path: Path, out_dir: Path) -> int:
    """Write the report; 1 when a threshold is crossed (retrain), else 0."""
    card = read_card(card_path)
    served, feedback, bad = read_log(log_dir)
    train = pd.read_parquet(train_path) if train_path.is_file() else None
    summary, labelled = summarize(card, served, feedback, train, cfg)
    summary["unreadable_log_lines"] = bad
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "summary.json", summary)
    (out_dir / "report.html").write_text(render_html(summary), encoding="utf-8")
    labelled.to_csv(out_dir / "labelled.csv", index=False)
    drifted = [f"{f['feature']} {f['psi']:.3f}" for f in summary["features"]]
    print(f"monitor: {summary['rows']} served rows, PSI {', '.join(drifted)}, output {summary['output']['psi']:.3f};"
          f" {summary['error']['matched_rows']} labelled rows -> {out_dir}/report.html, summary.json, labelled.csv")
    for reason in summary["reasons"]:
        print(f"  retrain: {reason}")
    return 1 if summary["retrain"] else 0
