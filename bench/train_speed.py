"""Train the tutorial's configuration two ways in one process and print the ratio.

Same 100 points (y = 2x + 1 + N(0, 0.1^2) on [-1, 1]), same initial weights, 200 epochs, batch 32,
Adam: the tutorial's plain `model.fit` against the project's `pipeline.model.fit`. Quality is the
final training MSE on all 100 points. Each path is warmed up once so neither pays TensorFlow's
one-off start-up cost; the figures are medians over the seeds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from pathlib import Path

from pipeline.config import load_params
from pipeline.data import generate_line
from pipeline.evaluate import TUTORIAL, TUTORIAL_EPOCHS
from pipeline.model import build_model, fit, predict, seed_everything

DATA = load_params(Path(__file__).resolve().parents[1] / "params.yaml").data  # the tutorial's line


def plain_fit(model, x, y, seed):
    model.fit(x, y, epochs=TUTORIAL_EPOCHS, batch_size=TUTORIAL.batch_size, verbose=0)


def project_fit(model, x, y, seed):
    fit(model, TUTORIAL, (x, y), None, epochs=TUTORIAL_EPOCHS, patience=0)


def measure(train_fn, x, y, seed) -> tuple[float, float]:
    seed_everything(seed)
    model = build_model(TUTORIAL, n_features=1)
    start = time.perf_counter()
    train_fn(model, x, y, seed)
    seconds = time.perf_counter() - start
    return seconds, float(np.mean((predict(model, x) - y) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=7)
    args = parser.parse_args()
    frame = generate_line(DATA)
    x, y = frame[["x"]].to_numpy(np.float32), frame[["y"]].to_numpy(np.float32)
    for train_fn in (plain_fit, project_fit):
        measure(train_fn, x, y, seed=99)
    results = {fn.__name__: [] for fn in (plain_fit, project_fit)}
    for seed in range(args.seeds):
        for train_fn in (plain_fit, project_fit):  # interleaved, so machine noise hits both alike
            results[train_fn.__name__].append(measure(train_fn, x, y, seed))
    med = {name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
           for name, runs in results.items()}
    (ours_s, ours_loss), (base_s, base_loss) = med["project_fit"], med["plain_fit"]
    print(f"tutorial config, 200 epochs, batch 32, median of {args.seeds} seeds")
    print(f"{'figure':<28}{'ours':>12}{'model.fit':>12}{'ratio':>10}")
    print(f"{'training wall time (s)':<28}{ours_s:>12.3f}{base_s:>12.3f}{base_s / ours_s:>9.1f}x")
    print(f"{'final training MSE':<28}{ours_loss:>12.5f}{base_loss:>12.5f}{ours_loss / base_loss:>10.3f}")
    for name, runs in results.items():
        print(f"  {name}: " + ", ".join(f"seed {s}: {t:.3f}s mse {m:.5f}" for s, (t, m) in enumerate(runs)))


if __name__ == "__main__":
    main()
