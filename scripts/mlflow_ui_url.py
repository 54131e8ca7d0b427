"""Print the MLflow UI path of this project's runs view (pipeline/runs_view.py), or "/" before the first run.

Reads the SQLite store directly: importing MLflow would add seconds to `make ui`'s start.
  python scripts/mlflow_ui_url.py [mlflow.db] [params.yaml]
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import yaml

from pipeline.runs_view import path


def experiment_id(db: Path, name: str) -> str | None:
    if not db.exists():
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        row = connection.execute("SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'",
                                 (name,)).fetchone()
    return None if row is None else str(row[0])


def main(argv: list[str]) -> int:
    db = Path(argv[0] if argv else "mlflow.db")
    params = yaml.safe_load(Path(argv[1] if len(argv) > 1 else "params.yaml").read_text())
    found = experiment_id(db, params["tracking"]["experiment"])
    print(path(found) if found else "/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
