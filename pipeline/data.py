"""The generate and split stages: the tutorial's noisy line, and a seeded train/val/test split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from pipeline.artifacts import atomic_path
from pipeline.config import DataConfig, SplitConfig

TARGET = "y"
RAW_PATH = Path("data/raw.parquet")
SPLIT_DIR = Path("data/split")
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Splits:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame


def line(x: np.ndarray, cfg: DataConfig, rng: np.random.Generator) -> pd.DataFrame:
    """y = slope * x + intercept + N(0, noise^2) at the given x."""
    y = cfg.slope * x + cfg.intercept + rng.normal(0.0, cfg.noise, size=x.shape)
    return pd.DataFrame({"x": x, TARGET: y})


def generate(cfg: DataConfig) -> pd.DataFrame:
    """The tutorial's data set: `n_samples` points on [x_min, x_max], evenly spaced or uniform."""
    rng = np.random.default_rng(cfg.seed)
    if cfg.x_spacing == "linspace":
        x = np.linspace(cfg.x_min, cfg.x_max, cfg.n_samples)
    else:
        x = rng.uniform(cfg.x_min, cfg.x_max, cfg.n_samples)
    return line(x, cfg, rng)


def sample_fresh(cfg: DataConfig, n: int, seed: int) -> pd.DataFrame:
    """New points from the generating distribution (x uniform over the same range)."""
    rng = np.random.default_rng(seed)
    return line(rng.uniform(cfg.x_min, cfg.x_max, n), cfg, rng)


def split(frame: pd.DataFrame, cfg: SplitConfig) -> Splits:
    """Seeded train / validation / test split with the fractions from params."""
    rest, test = train_test_split(frame, test_size=cfg.test, random_state=cfg.seed)
    train, val = train_test_split(rest, test_size=cfg.val / (cfg.train + cfg.val), random_state=cfg.seed)
    if min(len(train), len(val), len(test)) < 2:
        raise ValueError(
            f"split: {len(frame)} rows give train/val/test = {len(train)}/{len(val)}/{len(test)}; "
            "each part needs at least 2 rows (raise data.n_samples or change the fractions)"
        )
    return Splits(train.sort_index(), val.sort_index(), test.sort_index())


def features_and_target(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """float32 (n, n_features) and (n, 1) arrays, features in column order."""
    x = frame.drop(columns=[TARGET]).to_numpy(dtype=np.float32)
    y = frame[[TARGET]].to_numpy(dtype=np.float32)
    return x, y


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def read_splits(directory: Path = SPLIT_DIR) -> Splits:
    return Splits(*(pd.read_parquet(directory / f"{name}.parquet") for name in SPLIT_NAMES))


def write_splits(splits: Splits, directory: Path = SPLIT_DIR) -> None:
    for name in SPLIT_NAMES:
        write_frame(getattr(splits, name), directory / f"{name}.parquet")
