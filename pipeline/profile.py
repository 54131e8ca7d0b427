"""The reference profile the evaluate stage puts in each model's card (package ships the champion's):
how the training inputs, and the model's outputs on them, are distributed. The service counts live
traffic in the same bins (service/drift.py); `python -m pipeline monitor` compares logged traffic with it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.categories import encode

OUT_OF_VOCABULARY = "<out of vocabulary>"  # a categorical profile's bin 0
PROFILE_BINS = 10  # deciles: PSI's usual resolution; fewer for a feature with fewer distinct values


def numeric_column(name: str, values: np.ndarray, bins: int = PROFILE_BINS) -> dict:
    """Quantile bins of `values` (ties merged) and the share of values in each."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    # Cut points at observed values (inverted_cdf), so a discrete feature gets one bin per value, never
    # an empty bin between two; a cut at the maximum would leave the last bin empty.
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1], method="inverted_cdf"))
    edges = edges[edges < values.max()]
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return {"name": name, "kind": "numeric", "edges": edges.tolist(), "expected": (counts / counts.sum()).tolist()}


def index_column(name: str, indices: np.ndarray, categories: list[str]) -> dict:
    """One bin per index 0..len(categories) - 1 (cut points at i + 0.5) and the share of rows in each."""
    counts = np.bincount(np.asarray(indices, dtype=np.int64), minlength=len(categories))
    return {"name": name, "kind": "categorical", "edges": [i + 0.5 for i in range(len(categories) - 1)],
            "expected": (counts / counts.sum()).tolist(), "categories": categories}


def categorical_column(name: str, indices: np.ndarray, vocabulary: list[str]) -> dict:
    """A categorical feature by its model input index: 0 out of vocabulary, then vocabulary[i] at i + 1."""
    return index_column(name, indices, [OUT_OF_VOCABULARY, *map(str, vocabulary)])


def reference_profile(frame: pd.DataFrame, features: list[str], outputs: np.ndarray, task: str,
                      class_labels: list | None, categories: dict[str, list[str]] | None = None) -> dict:
    """The card's `profile`: per feature (card order) its bins, and the model's `outputs` on these rows
    (regression: predictions [n]; classification: class probabilities or P(class 1) [n, k])."""
    categories = categories or {}
    columns = [categorical_column(name, encode(frame[name], categories[name]), categories[name])
               if name in categories else numeric_column(name, frame[name].to_numpy())
               for name in features]
    outputs = np.asarray(outputs, dtype=np.float64)
    if task == "regression":
        output = numeric_column("prediction", outputs.reshape(-1))
    else:
        picks = (outputs.reshape(-1) >= 0.5).astype(int) if outputs.ndim == 1 or outputs.shape[1] == 1 \
            else outputs.argmax(axis=1)
        output = index_column("predicted_class", picks, [str(label) for label in class_labels])
    return {"rows": len(frame), "features": columns, "output": output}
