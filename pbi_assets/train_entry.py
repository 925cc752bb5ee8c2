"""What every training process of the `checkpoint` step runs: `python -m pbi_assets.train_entry
FOLDER`, by itself or under `accelerate launch` (pbi_ml.train.launch). Rank 0 sends its log lines
to the step's log through Dagster Pipes; the other ranks print to the step's stdout.

Only `dagster_pipes` is imported, not `dagster` (a training image needs pbi, not the orchestrator).
"""

from __future__ import annotations

import os
import sys

from pbi_ml.train.launch import die_with_parent, train_from_spec


def main(argv: list[str] | None = None) -> None:
    folder = (sys.argv[1:] if argv is None else argv)[0]
    die_with_parent()
    rank = int(os.environ.get("RANK") or 0)
    if rank != 0:
        train_from_spec(folder, log=lambda line: print(f"[rank {rank}] {line}", flush=True))
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        train_from_spec(folder, log=pipes.log.info)


if __name__ == "__main__":
    main()
