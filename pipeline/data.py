"""The generate and split stages: a data set from one of three sources, and a seeded split.

Sources: `synthetic` (the tutorial's noisy line, or scikit-learn's make_classification),
`file` (the user's CSV or Parquet table) and `sklearn` (a data set that ships with scikit-learn).
Whatever the source, the stage writes one table plus a schema naming the task, the target, the
feature columns in model-input order and the class labels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from pipeline import categories as cats
from pipeline.artifacts import atomic_path, write_json
from pipeline.config import DataConfig, SplitConfig
from pipeline.errors import PipelineError

SPLIT_NAMES = ("train", "val", "test")
MAX_AUTO_CLASSES = 20  # an integer target with at most this many values is read as class labels
MIN_ROWS = 6  # two each for train, validation and test
ROW_ID = "row_id"  # the split frames' index: see row_ids
ROW_GROUP_ROWS = 16_384  # a Parquet row group: what a streamed training split is read in


class DataError(PipelineError):
    """Data that cannot be trained on; the message names the column or row."""


@dataclass(frozen=True)
class Schema:
    task: str  # regression | binary | multiclass
    target: str
    features: list[str]
    class_labels: list | None  # in model-output order; None for regression
    impute: str = "none"  # none | mean | median: how missing feature values are filled
    # Per feature, the value a missing one is filled with: fitted by `split` on the training rows only,
    # so no test row shapes what the model learns. None before the split, and when impute is none.
    fill_values: dict[str, float] | None = None
    # Categorical feature -> its vocabulary, learnt by `split` on the training rows: the category at
    # position i has model input index i + 1, index 0 is out-of-vocabulary (pipeline/categories.py).
    # Empty before the split and when no feature is categorical.
    categories: dict[str, list[str]] = field(default_factory=dict)
    # Categorical features the model embeds, with the embedding's width; the others are one-hot encoded.
    embedding_dims: dict[str, int] = field(default_factory=dict)
    # Features `split` dropped as (near-)constant on the training rows, with why.
    dropped: dict[str, str] = field(default_factory=dict)
    task_reason: str = ""  # why the task is what it is (generate prints it)

    @property
    def n_outputs(self) -> int:
        return len(self.class_labels) if self.task == "multiclass" else 1

    def write(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> Schema:
        return cls(**json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class Splits:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    schema: Schema


# --- sources -------------------------------------------------------------------------------------


def line(x: np.ndarray, cfg: DataConfig, rng: np.random.Generator) -> pd.DataFrame:
    """y = slope * x + intercept + N(0, noise^2) at the given x."""
    y = cfg.slope * x + cfg.intercept + rng.normal(0.0, cfg.noise, size=x.shape)
    return pd.DataFrame({"x": x, "y": y})


def generate_line(cfg: DataConfig) -> pd.DataFrame:
    """The tutorial's data set: `n_samples` points on [x_min, x_max], evenly spaced or uniform."""
    rng = np.random.default_rng(cfg.seed)
    if cfg.x_spacing == "linspace":
        x = np.linspace(cfg.x_min, cfg.x_max, cfg.n_samples)
    else:
        x = rng.uniform(cfg.x_min, cfg.x_max, cfg.n_samples)
    return line(x, cfg, rng)


def sample_fresh(cfg: DataConfig, n: int, seed: int) -> pd.DataFrame:
    """New points from the line's generating distribution (x uniform over the same range)."""
    rng = np.random.default_rng(seed)
    return line(rng.uniform(cfg.x_min, cfg.x_max, n), cfg, rng)


def generate_classification(cfg: DataConfig) -> pd.DataFrame:
    from sklearn.datasets import make_classification

    c = cfg.classification
    x, y = make_classification(
        n_samples=cfg.n_samples, n_features=c.n_features, n_informative=c.n_informative,
        n_redundant=0, n_classes=c.n_classes, class_sep=c.class_sep, random_state=cfg.seed,
    )
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(c.n_features)])
    frame["label"] = y
    return frame


def load_sklearn(name: str) -> pd.DataFrame:
    """A data set bundled with scikit-learn (no download)."""
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{name}")(as_frame=True)
    frame = bunch.frame.copy()
    if frame.columns[-1] != "target":
        frame = frame.rename(columns={frame.columns[-1]: "target"})
    if getattr(bunch, "target_names", None) is not None and name != "diabetes":
        frame["target"] = [str(bunch.target_names[i]) for i in frame["target"]]
    frame.columns = [str(c).replace(" ", "_").replace("(", "").replace(")", "") for c in frame.columns]
    return frame


def load_file(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"data.file.path: {path} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    elif path.suffix.lower() in (".csv", ".txt"):
        try:
            frame = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            raise DataError(f"data.file.path: {path} is empty; it needs a header row and data rows") from None
    else:
        raise DataError(f"data.file.path: {path} must be a .csv or .parquet file")
    if frame.empty:
        raise DataError(f"data.file.path: {path} has a header but no data rows")
    return frame


# --- checks ----------------------------------------------------------------------------------------


def infer_task(target: pd.Series, requested: str) -> tuple[str, str]:
    """The task and why, in words: `auto` reads text or few whole-number values as classes (binary or
    multi-class) and anything else as a regression target; any other setting is taken as it is."""
    if requested != "auto":
        return requested, "set by data.task"
    values = target.dropna()
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    integral = numeric and np.all(np.mod(values.to_numpy(dtype=float), 1) == 0)
    distinct = values.nunique()
    if numeric and not integral:
        return "regression", f"{distinct} distinct values, not all whole numbers"
    if numeric and distinct > MAX_AUTO_CLASSES:
        return "regression", (f"{distinct} distinct whole numbers, more than the {MAX_AUTO_CLASSES} that auto reads"
                              " as classes")
    kind = "whole numbers" if numeric else "values"
    return ("binary" if distinct <= 2 else "multiclass"), f"{distinct} distinct {kind}"


def task_line(schema: Schema) -> str:
    """The console's one line on the task: what it is and why, and how to choose another."""
    if schema.task_reason == "set by data.task":
        return f"task: {schema.task} (set by data.task)"
    return f"task: {schema.task} (target {schema.target!r}: {schema.task_reason}; set data.task to override)"


def _first_bad_row(mask: pd.Series) -> int:
    return int(np.flatnonzero(mask.to_numpy())[0])


def prepare(frame: pd.DataFrame, target: str, features: list[str] | None, task: str, impute: str,
            categorical: list[str] = ()) -> tuple[pd.DataFrame, Schema]:
    """Check the table and return it (feature columns, then the target) with its schema.

    Text columns, and the whole-number columns named in `categorical`, become categorical features held as
    strings (their vocabulary is learnt by `split`); every other feature becomes float64.
    """
    if target not in frame.columns:
        raise DataError(f"target column {target!r} not found; columns are: {', '.join(map(str, frame.columns))}")
    features = list(features) if features is not None else [c for c in frame.columns if c != target]
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise DataError(f"feature column(s) {missing} not found; columns are: {', '.join(map(str, frame.columns))}")
    if not features:
        raise DataError("no feature columns: the table has only the target")
    if target in features:
        raise DataError(f"column {target!r} is both the target and a feature")
    unknown = [c for c in categorical if c not in features]
    if unknown:
        raise DataError(f"data.file.categorical: {unknown} are not feature columns; features are: {', '.join(features)}")
    frame = frame[features + [target]].copy()
    if len(frame) < MIN_ROWS:
        raise DataError(f"the table has {len(frame)} row(s); training needs at least {MIN_ROWS} "
                        "(two each for train, validation and test)")
    text = []
    for column in features:
        if column in categorical:
            frame[column] = cats.as_category_text(frame[column], column)
            text.append(column)
        elif not pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(frame[column]):
            converted = pd.to_numeric(frame[column], errors="coerce")
            bad = converted.isna() & frame[column].notna()
            if not bad.any():
                frame[column] = converted
            elif bad.sum() * 2 < frame[column].notna().sum():  # mostly numbers: a typo, not categories
                row = _first_bad_row(bad)
                raise DataError(f"feature column {column!r} holds numbers but row {row} holds "
                                f"{frame[column].iloc[row]!r}; fix the value, or list the column in "
                                "data.file.categorical to read every value as a category")
            else:
                frame[column] = cats.as_category_text(frame[column], column)
                text.append(column)
    if frame[target].isna().any():
        raise DataError(f"target column {target!r} has a missing value in row {_first_bad_row(frame[target].isna())}"
                        " (impute fills features only: drop the row or fill the target)")
    if pd.api.types.is_numeric_dtype(frame[target]) and np.isinf(frame[target]).any():
        row = _first_bad_row(np.isinf(frame[target]))
        raise DataError(f"target column {target!r} holds {frame[target].iloc[row]} in row {row}; targets must be "
                        "finite numbers (drop the row or fix the value)")
    for column in features:
        holes = frame[column].isna() if column in text else frame[column].isna() | np.isinf(frame[column])
        if holes.any():
            if impute == "none":
                fill = ("read as out-of-vocabulary" if column in text else "filled")
                raise DataError(f"feature column {column!r} has a missing value in row {_first_bad_row(holes)} "
                                f"(set data.file.impute to mean or median to have missing values {fill})")
            if column not in text:
                frame.loc[holes, column] = np.nan  # filled by `split`, from the training rows only
            if holes.all():
                raise DataError(f"feature column {column!r} has no values at all; drop it from data.file.features")
    numeric = [c for c in features if c not in text]
    frame[numeric] = frame[numeric].astype("float64")
    task, why = infer_task(frame[target], task)
    labels = None
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(frame[target]):
            raise DataError(f"task regression needs a numeric target, but column {target!r} holds text")
        frame[target] = frame[target].astype("float64")
    else:
        labels = sorted(frame[target].unique().tolist(), key=lambda v: (str(type(v)), v))
        labels = [v.item() if hasattr(v, "item") else v for v in labels]
        if len(labels) < 2:
            raise DataError(f"target column {target!r} has a single class ({labels[0]!r}); classification needs two or more")
        if task == "binary" and len(labels) != 2:
            raise DataError(f"task binary needs exactly 2 classes, target {target!r} has {len(labels)}")
    return frame.reset_index(drop=True), Schema(task, target, features, labels, impute, task_reason=why)


def load(cfg: DataConfig) -> tuple[pd.DataFrame, Schema]:
    """The data set that `data.source` names, checked, with its schema."""
    if cfg.source == "synthetic" and cfg.synthetic == "line":
        frame, schema = prepare(generate_line(cfg), "y", ["x"], "regression" if cfg.task == "auto" else cfg.task, "none")
        return frame, (replace(schema, task_reason="the tutorial's line") if cfg.task == "auto" else schema)
    if cfg.source == "synthetic":
        return prepare(generate_classification(cfg), "label", None, cfg.task, "none")
    if cfg.source == "sklearn":
        return prepare(load_sklearn(cfg.sklearn.name), "target", None, cfg.task, "none")
    return prepare(load_file(Path(cfg.file.path)), cfg.file.target, cfg.file.features, cfg.task, cfg.file.impute,
                   cfg.file.categorical)


# --- split -----------------------------------------------------------------------------------------


def split(frame: pd.DataFrame, schema: Schema, cfg: SplitConfig) -> Splits:
    """Seeded train / validation / test split; stratified by class for classification."""
    stratify = schema.task != "regression"
    try:
        rest, test = train_test_split(frame, test_size=cfg.test, random_state=cfg.seed,
                                      stratify=frame[schema.target] if stratify else None)
        train, val = train_test_split(rest, test_size=cfg.val / (cfg.train + cfg.val), random_state=cfg.seed,
                                      stratify=rest[schema.target] if stratify else None)
    except ValueError as exc:
        raise DataError(f"split: {len(frame)} rows cannot be split {cfg.train:g}/{cfg.val:g}/{cfg.test:g} "
                        f"({exc}); add rows or change the fractions") from None
    if min(len(train), len(val), len(test)) < 2:
        raise DataError(
            f"split: {len(frame)} rows give train/val/test = {len(train)}/{len(val)}/{len(test)}; "
            "each part needs at least 2 rows (add rows or change the fractions)"
        )
    ids = row_ids(frame, schema)
    parts = (part.sort_index().set_axis(pd.Index(ids[part.sort_index().index], name=ROW_ID)) for part in (train, val, test))
    splits = impute(fit_categories(drop_near_constant(Splits(*parts, schema), cfg.near_constant), cfg))
    development_folds(splits, cfg.folds, cfg.seed)  # too few rows for the folds: fail here, before anything is written
    return splits


def row_ids(frame: pd.DataFrame, schema: Schema) -> np.ndarray:
    """A content hash per row (features and target, before imputation): the same row has the same id
    in every split of the same data, so the registry can tell which test rows a model learnt from."""
    return pd.util.hash_pandas_object(frame[schema.features + [schema.target]], index=False).to_numpy()


def drop_near_constant(splits: Splits, threshold: float) -> Splits:
    """Without the features that (nearly) never change on the training rows (`split.near_constant`);
    the schema records each with why. None left is an error: there is nothing to learn from."""
    schema = splits.schema
    dropped = cats.near_constant(splits.train, schema.features, threshold)
    if not dropped:
        return splits
    kept = [name for name in schema.features if name not in dropped]
    if not kept:
        raise DataError(f"every feature is constant or near-constant on the training rows "
                        f"({'; '.join(f'{k}: {v}' for k, v in dropped.items())}; split.near_constant: {threshold:g}): "
                        "there is nothing to learn from; add varied feature columns or rows")
    columns = kept + [schema.target]
    parts = (part[columns] for part in (splits.train, splits.val, splits.test))
    return Splits(*parts, replace(schema, features=kept, dropped=dropped))


def fit_categories(splits: Splits, cfg: SplitConfig) -> Splits:
    """The vocabulary of each categorical (text) feature, learnt on the training rows, and which of them
    the model embeds (more than `split.embed_above` categories) rather than one-hot encodes."""
    schema = splits.schema
    vocabularies = {name: cats.vocabulary(splits.train[name], cfg.max_categories)
                    for name in schema.features if cats.is_text(splits.train[name])}
    empty = [name for name, vocab in vocabularies.items() if not vocab]
    if empty:
        raise DataError(f"categorical feature {empty[0]!r} has no values in the training rows, so it has no "
                        "categories to learn; add rows or drop the column")
    dims = {name: cats.embedding_dim(len(vocab)) for name, vocab in vocabularies.items() if len(vocab) > cfg.embed_above}
    return Splits(splits.train, splits.val, splits.test, replace(schema, categories=vocabularies, embedding_dims=dims))


def categories_line(splits: Splits) -> str | None:
    """One console line on the categorical features and how the model encodes them; None without any."""
    schema = splits.schema
    if not schema.categories:
        return None
    parts = []
    for name, vocab in schema.categories.items():
        seen = splits.train[name].nunique()
        folded = f", {seen - len(vocab)} rarer ones out-of-vocabulary" if seen > len(vocab) else ""
        encoding = (f"embedded in {schema.embedding_dims[name]} dims" if name in schema.embedding_dims else "one-hot")
        parts.append(f"{name} ({len(vocab)} categories{folded}, {encoding})")
    return f"categorical feature(s): {'; '.join(parts)}"


def dropped_line(schema: Schema, threshold: float) -> str | None:
    """One console line on the features `split` dropped as near-constant; None when it dropped none."""
    if not schema.dropped:
        return None
    reasons = "; ".join(f"{name}: {why}" for name, why in schema.dropped.items())
    return f"dropped near-constant feature(s) (split.near_constant: {threshold:g}): {reasons}"


def impute(splits: Splits) -> Splits:
    """Fill missing feature values with the schema's statistic of the *training* rows, in all three
    parts; the values travel with the model (its card) so the service fills the same way."""
    schema = splits.schema
    if schema.impute == "none":
        return splits
    numeric = [name for name in schema.features if name not in schema.categories]
    values = splits.train[numeric].agg(schema.impute)
    empty = values[values.isna()]
    if len(empty):
        raise DataError(f"feature column {empty.index[0]!r} has no values in the training rows, so there is "
                        f"nothing to fill its missing values with (data.file.impute: {schema.impute}); add rows "
                        "or drop the column")
    fill = {name: float(value) for name, value in values.items()}
    filled = (part.fillna(fill) for part in (splits.train, splits.val, splits.test))
    # A missing category stays missing in the table; its model index is 0, out-of-vocabulary.
    fill |= {name: 0.0 for name in schema.categories}
    return Splits(*filled, replace(schema, fill_values={name: fill[name] for name in schema.features}))


@dataclass(frozen=True)
class Fold:
    """One fold of the development rows: fit on `train`, early-stop on (and calibrate with) `val`. `train` is a
    pipeline.model.BatchStream instead when the training split is streamed from disk (pipeline/streaming.py)."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]


def development_rows(splits: Splits, folds: int) -> pd.DataFrame:
    """The rows a model learns from: the training split, or train + val when it is cross-validated."""
    return splits.train if folds == 1 else pd.concat([splits.train, splits.val])


def development_folds(splits: Splits, folds: int, seed: int) -> list[Fold]:
    """`folds` = 1: the split's own train and validation parts. k >= 2: train and validation pooled and
    cut into k shuffled folds (stratified by class for classification), so every development row is
    held out exactly once."""
    schema = splits.schema
    if folds == 1:
        return [Fold(features_and_target(splits.train, schema), features_and_target(splits.val, schema))]
    pooled = development_rows(splits, folds)
    x, y = features_and_target(pooled, schema)
    if schema.task == "regression":
        if len(pooled) < 2 * folds:
            raise DataError(f"split.folds ({folds}): train + val have {len(pooled)} rows; each fold needs at least "
                            f"2, so at most {len(pooled) // 2} folds (lower split.folds or add rows)")
        parts = KFold(folds, shuffle=True, random_state=seed).split(x)
    else:
        counts = pooled[schema.target].value_counts()
        if counts.min() < folds:
            raise DataError(f"split.folds ({folds}): class {counts.idxmin()!r} has {counts.min()} rows in train + val; "
                            "every fold needs one of each class (lower split.folds or add rows)")
        parts = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y[:, 0])
    return [Fold((x[fit_rows], y[fit_rows]), (x[held_out], y[held_out])) for fit_rows, held_out in parts]


def features_and_target(frame: pd.DataFrame, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """float32 (n, n_features) inputs and (n, 1) targets: the value, or the class index. A categorical
    feature's input is its category's index (pipeline/categories.py)."""
    encoded = {name: cats.encode(frame[name], vocab) for name, vocab in schema.categories.items()}
    x = frame[schema.features].assign(**encoded).to_numpy(dtype=np.float32)
    if schema.class_labels is None:
        y = frame[[schema.target]].to_numpy(dtype=np.float32)
    else:
        index = {label: i for i, label in enumerate(schema.class_labels)}
        y = frame[schema.target].map(index).to_numpy(dtype=np.float32).reshape(-1, 1)
    return x, y


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    """Parquet in row groups of ROW_GROUP_ROWS, each readable alone (pipeline/streaming.py); a named index (the
    splits' row ids) is kept, a plain range index is not."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=frame.index.name is not None, row_group_size=ROW_GROUP_ROWS)


def read_splits(directory: Path) -> Splits:
    frames = (pd.read_parquet(directory / f"{name}.parquet") for name in SPLIT_NAMES)
    return Splits(*frames, Schema.read(directory / "schema.json"))


def write_splits(splits: Splits, directory: Path) -> None:
    for name in SPLIT_NAMES:
        write_frame(getattr(splits, name), directory / f"{name}.parquet")
    splits.schema.write(directory / "schema.json")


# --- split files read in parts: the stages after `split` never need a whole table in memory -------------


def drawn(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """`k` of the positions 0..n-1, drawn without replacement, in ascending order (a sample keeps the rows' order)."""
    return np.sort(rng.choice(n, size=k, replace=False))


def sampled(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """At most `max_rows` of `frame`'s rows by a seeded draw; within the limit, the frame itself."""
    if max_rows is None or len(frame) <= max_rows:
        return frame
    return frame.iloc[drawn(len(frame), max_rows, np.random.default_rng(seed))]


def parquet_rows(path: Path) -> int:
    """The number of rows in a Parquet file, from its footer."""
    return pq.ParquetFile(path).metadata.num_rows


def read_rows(path: Path, positions: np.ndarray) -> pd.DataFrame:
    """The rows at the sorted `positions` of a Parquet file, reading only the row groups that hold them."""
    file = pq.ParquetFile(path)
    starts = np.cumsum([0] + [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)])
    groups = np.searchsorted(starts, positions, side="right") - 1
    parts = [file.read_row_group(int(group)).take(positions[groups == group] - starts[group])
             for group in np.unique(groups)]
    return (pa.concat_tables(parts) if parts else file.schema_arrow.empty_table()).to_pandas()


def read_sample(path: Path, max_rows: int | None, seed: int) -> pd.DataFrame:
    """At most `max_rows` rows of a Parquet file by a seeded draw (rows keep their order); within the limit, all."""
    n = parquet_rows(path)
    if max_rows is None or n <= max_rows:
        return pd.read_parquet(path)
    return read_rows(path, drawn(n, max_rows, np.random.default_rng(seed)))


def read_development_sample(directory: Path, max_rows: int | None, seed: int) -> Splits:
    """The split's train and validation rows, or at most `max_rows` of them: each part cut in its own proportion by
    a seeded draw (rows keep their order), reading only the row groups that hold the drawn rows. Its test part has
    no rows."""
    paths = {name: directory / f"{name}.parquet" for name in SPLIT_NAMES}
    n_train, n_val = parquet_rows(paths["train"]), parquet_rows(paths["val"])
    if max_rows is None or n_train + n_val <= max_rows:
        train, val = pd.read_parquet(paths["train"]), pd.read_parquet(paths["val"])
    else:
        rng = np.random.default_rng(seed)
        keep_train = max(2, round(max_rows * n_train / (n_train + n_val)))
        train = read_rows(paths["train"], drawn(n_train, keep_train, rng))
        val = read_rows(paths["val"], drawn(n_val, max(2, max_rows - keep_train), rng))
    test = pq.ParquetFile(paths["test"]).schema_arrow.empty_table().to_pandas()
    return Splits(train, val, test, Schema.read(directory / "schema.json"))


def read_row_ids(path: Path) -> np.ndarray:
    """A split file's row ids (its index column) alone."""
    return pq.read_table(path, columns=[ROW_ID]).column(ROW_ID).to_numpy()


def numeric_ranges(path: Path, columns: list[str]) -> dict[str, tuple[float, float]]:
    """Each column's minimum and maximum over the whole file, read one row group at a time."""
    file = pq.ParquetFile(path)
    low, high = np.full(len(columns), np.inf), np.full(len(columns), -np.inf)
    for group in range(file.num_row_groups):
        values = file.read_row_group(group, columns=columns).to_pandas()[columns].to_numpy(np.float64)
        low, high = np.minimum(low, values.min(axis=0)), np.maximum(high, values.max(axis=0))
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(columns, low, high, strict=True)}
