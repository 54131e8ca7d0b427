"""Where the stages read and write: the one place that knows a workspace's layout.

`python -m pipeline <stage>` hands each stage a `Workspace` rooted at the current directory (where
DVC runs it); tests and benches pass one rooted anywhere else instead of changing directory.
dvc.yaml names the same files as deps and outs: tests/pipeline/test_paths.py fails when a file
dvc.yaml names is not one of these, or the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path = Path(".")

    # generate
    @property
    def raw(self) -> Path:
        return self.root / "data/raw.parquet"

    @property
    def schema(self) -> Path:
        return self.root / "data/schema.json"

    # split
    @property
    def split_dir(self) -> Path:
        return self.root / "data/split"

    # tune
    @property
    def best_params(self) -> Path:
        return self.root / "models/best_params.yaml"

    # train
    @property
    def model(self) -> Path:
        return self.root / "models/model.keras"

    @property
    def learning_curve(self) -> Path:
        return self.root / "plots/learning_curve.csv"

    # evaluate
    @property
    def metrics(self) -> Path:
        return self.root / "metrics/evaluate.json"

    @property
    def registry(self) -> Path:
        return self.root / "models/registry.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots/evaluate"

    # package
    @property
    def package(self) -> Path:
        return self.root / "models/package"

    @property
    def bento_info(self) -> Path:
        """The bento's tag, for `make serve`; outside DVC, like the package's provenance.json."""
        return self.root / "models/bento.json"

    @property
    def service(self) -> Path:
        return self.root / "service"

    @property
    def bentoml_home(self) -> Path:
        """The project's BentoML store (models and bentos), which `make serve` serves from."""
        return self.root / "bentoml"
