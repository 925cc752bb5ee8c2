"""Data checks behind the Dagster asset checks. Each returns (passed, details)."""

from __future__ import annotations

import os

import numpy as np

from pbi_ml.errors import ItemError
from pbi_ml.imageio import load_gray, load_mask_png, load_rgb_path
from pbi_ml.stages.common import ok_pairs
from pbi_ml.storage import Storage
from pbi_ml.tables import CANDIDATES, REMOVAL_SCORES, SPLITS

PAIR_FILE_COLUMNS = ("source_image", "target_image", "mask", "edit_mask")


def check_pair_files(storage: Storage, source: str, shard: str) -> tuple[bool, dict]:
    """Every file a pair row names exists and decodes."""
    rows = ok_pairs(storage, source, shard)
    bad = []
    for row in rows:
        for column in PAIR_FILE_COLUMNS:
            try:
                (load_gray if column in ("mask", "edit_mask") else load_rgb_path)(row[column])
            except ItemError as exc:
                bad.append(f"{row['pair_id']}:{column}:{exc.reason}")
    return not bad, {"pairs": len(rows), "bad_files": len(bad), "examples": bad[:5]}


def check_pairs_equal_outside_mask(storage: Storage, source: str, shard: str) -> tuple[bool, dict]:
    """Outside the dilated (edit) mask, the object-removed image equals the original exactly."""
    rows = ok_pairs(storage, source, shard)
    bad, max_diff = [], 0
    for row in rows:
        removed = load_rgb_path(row["source_image"])
        original = load_rgb_path(row["target_image"])
        edit = load_mask_png(row["edit_mask"])
        if removed.shape != original.shape or edit.shape != original.shape[:2]:
            bad.append(f"{row['pair_id']}: size mismatch")
            continue
        diff = np.abs(removed.astype(int) - original.astype(int))[~edit]
        worst = int(diff.max()) if diff.size else 0
        max_diff = max(max_diff, worst)
        if worst:
            bad.append(f"{row['pair_id']}: differs outside the mask by up to {worst}")
    return not bad, {"pairs": len(rows), "max_abs_diff_outside_mask": max_diff, "examples": bad[:5]}


def check_pairs_from_passing_candidates(storage: Storage, source: str, shard: str) -> tuple[bool, dict]:
    """Every pair comes from a kept instance and from its chosen, passing removal candidate."""
    pairs = ok_pairs(storage, source, shard)
    kept = {r["annotation_id"] for r in storage.read_table(CANDIDATES, source, shard).to_pylist() if r["kept"]}
    chosen = {
        (r["annotation_id"], r["candidate"])
        for r in storage.read_table(REMOVAL_SCORES, source, shard).to_pylist()
        if r["chosen"] and r["passed"]
    }
    bad = [
        p["pair_id"]
        for p in pairs
        if p["annotation_id"] not in kept or (p["annotation_id"], p["candidate"]) not in chosen
    ]
    return not bad, {"pairs": len(pairs), "pairs_not_from_a_passing_candidate": len(bad), "examples": bad[:5]}


def check_catalog_files_exist(storage: Storage) -> tuple[bool, dict]:
    """Every file path in the catalog's pairs and removals views exists."""
    from pbi_ml.catalog import query

    frame = query(
        storage,
        "SELECT source_image AS p FROM pairs WHERE status = 'ok' UNION ALL SELECT target_image FROM pairs "
        "WHERE status = 'ok' UNION ALL SELECT mask FROM pairs WHERE status = 'ok' "
        "UNION ALL SELECT edit_mask FROM pairs WHERE status = 'ok' "
        "UNION ALL SELECT removal_image FROM removals WHERE status = 'ok'",
    )
    missing = [p for p in frame["p"].tolist() if not os.path.exists(p)]
    return not missing, {"files": len(frame), "missing": len(missing), "examples": missing[:5]}


def check_splits_disjoint(storage: Storage) -> tuple[bool, dict]:
    """No image (by image_id) has pairs in both train and test, across all sources."""
    from pbi_ml.catalog import read_view

    rows = read_view(storage, SPLITS.name).select(["image_id", "split"]).to_pylist()
    splits: dict[str, set] = {}
    for r in rows:
        splits.setdefault(r["image_id"], set()).add(r["split"])
    both = sorted(i for i, s in splits.items() if len(s) > 1)
    return not both, {"images": len(splits), "images_in_both_splits": len(both), "examples": both[:5]}
