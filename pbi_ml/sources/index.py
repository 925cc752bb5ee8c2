"""Building, caching and sharding the normalised instance index (INDEX_SCHEMA) of a source.

Readers (coco.py, lvis.py, openimages.py) feed rows into an `IndexBuilder`, which keeps columns as
plain Python lists for one chunk at a time and turns every full chunk into an Arrow record batch,
so a million-instance source never holds a million Python row objects. Rows whose area and box
come from an RLE are summarised in bulk per chunk (one pycocotools `area` / `toBbox` call each).

`load_source_index` parses a source once and caches the result as

    <data root>/index/<source>/<fingerprint>/instances.parquet

where the fingerprint changes whenever an input file (size, mtime), the shard count, the source's
roots or the reader code (`READER_VERSION`) changes. Open Images rows also depend on the image
and mask files (sizes, areas): replacing those without touching the CSVs needs the cache folder
deleted. Stale fingerprints stay on disk; delete them to reclaim the space.

The shards of one source are separate Dagster runs, often concurrent (a backfill), and on
Kubernetes separate pods on separate nodes sharing the data root over NFS-like storage. The first
one to need the index builds it under a lock file next to it, taken by creating the file
atomically (`pbi_ml.shared_lock`: O_CREAT | O_EXCL holds across nodes where flock may not); the
others wait and read the result instead of each parsing the same large annotation file at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pbi_ml.errors import AnnotationFileError
from pbi_ml.sources.base import INDEX_SCHEMA, shard_of
from pbi_ml.sources.checks import coco_mask, short_repr
from pbi_ml.storage import Storage, write_parquet

if TYPE_CHECKING:  # the readers take a SourceConfig; the config package imports the demo source
    from pbi_ml.config import SourceConfig

# Bump when a reader's output for the same input files changes: it invalidates every cached index.
READER_VERSION = "2"

CHUNK_ROWS = 16_384  # rows held as Python objects at a time

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


_KEY_FIELDS = [pa.field("_image_int", pa.int64()), pa.field("_annotation_int", pa.int64())]
_BATCH_SCHEMA = pa.schema(list(INDEX_SCHEMA) + _KEY_FIELDS)


class IndexBuilder:
    """Collects index rows chunk by chunk and returns one sorted INDEX_SCHEMA table.

    `add` takes one row; pass `rle=` (a pycocotools RLE dict with bytes/str counts) instead of
    `area`/`bbox` to have them computed in bulk when the chunk is flushed. A row whose RLE area
    is 0 and that has no other error gets index_error "zero_area".

    Flushed chunks are split by shard at once, so the final sort works one shard at a time and
    never holds more than the index plus one shard's copy.
    """

    def __init__(self, source_name: str, num_shards: int, chunk_rows: int | None = None):
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self.source_name = source_name
        self.num_shards = num_shards
        self.chunk_rows = chunk_rows or CHUNK_ROWS
        self._shard_batches: dict[str, list[pa.RecordBatch]] = {}
        self._shard_of_image: dict[str, str] = {}
        # ids sort numerically while every id seen is an int, else lexically as strings
        self._image_ids_numeric = True
        self._annotation_ids_numeric = True
        self.num_rows = 0
        self._new_chunk()

    def _new_chunk(self) -> None:
        self._columns: dict[str, list] = {name: [] for name in _BATCH_SCHEMA.names}
        self._pending_rles: list[tuple[int, dict]] = []  # (row in chunk, rle)

    def add(
        self,
        *,
        image_id,
        annotation_id,
        category: str,
        category_id: str,
        category_synonyms: list[str],
        image_file: str | None,
        width: int | None,
        height: int | None,
        category_frequency: str | None = None,
        category_not_exhaustive: bool | None = None,
        bbox: tuple[float, float, float, float] | None = None,
        area: float | None = None,
        rle: dict | None = None,
        iscrowd: bool = False,
        segmentation: str | None = None,
        mask_file: str | None = None,
        index_error: str | None = None,
    ) -> None:
        image_key = str(image_id)
        shard = self._shard_of_image.get(image_key)
        if shard is None:
            shard = f"{shard_of(image_key, self.num_shards):03d}"
            self._shard_of_image[image_key] = shard
        image_int = _as_int64(image_id)
        if image_int is None:
            self._image_ids_numeric = False
        annotation_int = _as_int64(annotation_id)
        if annotation_int is None:
            self._annotation_ids_numeric = False

        c = self._columns
        if rle is not None:
            self._pending_rles.append((len(c["source"]), rle))
        c["source"].append(self.source_name)
        c["shard"].append(shard)
        c["image_id"].append(image_key)
        c["annotation_id"].append(str(annotation_id))
        c["category"].append(category)
        c["category_id"].append(category_id)
        c["category_frequency"].append(category_frequency)
        c["category_synonyms"].append(category_synonyms)
        c["category_not_exhaustive"].append(category_not_exhaustive)
        c["image_file"].append(image_file)
        c["width"].append(width)
        c["height"].append(height)
        x, y, w, h = bbox if bbox is not None else (None, None, None, None)
        c["bbox_x"].append(x)
        c["bbox_y"].append(y)
        c["bbox_w"].append(w)
        c["bbox_h"].append(h)
        c["area"].append(area)
        c["iscrowd"].append(bool(iscrowd))
        c["segmentation"].append(segmentation)
        c["mask_file"].append(mask_file)
        c["index_error"].append(index_error)
        c["_image_int"].append(image_int)
        c["_annotation_int"].append(annotation_int)
        self.num_rows += 1
        if len(c["source"]) >= self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        c = self._columns
        if not c["source"]:
            return
        if self._pending_rles:
            mask_utils = coco_mask()
            rows = [row for row, _ in self._pending_rles]
            rles = [rle for _, rle in self._pending_rles]
            # pycocotools.mask.area fails on lists longer than 255 under numpy 2 (a uint8 size bug)
            areas = [
                a for start in range(0, len(rles), 255) for a in mask_utils.area(rles[start : start + 255]).tolist()
            ]
            boxes = mask_utils.toBbox(rles).tolist()
            for row, area, (x, y, w, h) in zip(rows, areas, boxes, strict=True):
                c["area"][row] = float(area)
                c["bbox_x"][row], c["bbox_y"][row], c["bbox_w"][row], c["bbox_h"][row] = x, y, w, h
                if area == 0 and c["index_error"][row] is None:
                    c["index_error"][row] = "zero_area"
        batch = pa.RecordBatch.from_pydict(c, schema=_BATCH_SCHEMA)
        self._new_chunk()
        shards = batch.column("shard")
        for shard in map(str, pc.unique(shards).to_pylist()):  # never null: every row has a shard key
            part = batch.filter(pc.equal(shards, pa.scalar(shard))) if self.num_shards > 1 else batch
            self._shard_batches.setdefault(shard, []).append(part)
        del batch, shards
        pa.default_memory_pool().release_unused()  # let the allocator reuse / return the chunk's memory

    def finish(self, path_for_errors: str | os.PathLike = "") -> pa.Table:
        """All rows as one table sorted by (shard, image_id, annotation_id)."""
        self._flush()
        all_batches = [b for batches in self._shard_batches.values() for b in batches]
        _check_unique_annotation_ids(pa.Table.from_batches(all_batches, schema=_BATCH_SCHEMA), path_for_errors)
        del all_batches
        image_key = "_image_int" if self._image_ids_numeric else "image_id"
        annotation_key = "_annotation_int" if self._annotation_ids_numeric else "annotation_id"
        sorted_shards = []
        for shard in sorted(self._shard_batches):
            table = pa.Table.from_batches(self._shard_batches.pop(shard), schema=_BATCH_SCHEMA)
            order = pc.sort_indices(table, sort_keys=[(image_key, "ascending"), (annotation_key, "ascending")])
            sorted_shards.append(table.select(INDEX_SCHEMA.names).take(order))
            del table  # the unsorted rows of this shard are released before the next shard's copy
            pa.default_memory_pool().release_unused()
        if not sorted_shards:
            return INDEX_SCHEMA.empty_table()
        return pa.concat_tables(sorted_shards)


def _as_int64(value) -> int | None:
    if type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
        return value
    return None


def _check_unique_annotation_ids(table: pa.Table, path) -> None:
    if table.num_rows == 0:
        return
    ids = table.column("annotation_id")
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return
    counts = pc.value_counts(ids)
    dupes = counts.filter(pc.greater(counts.field("counts"), pa.scalar(1))).field("values").to_pylist()
    raise AnnotationFileError(
        path, f"annotation id {short_repr(dupes[0])} is used more than once ({len(dupes)} duplicated ids)"
    )


# --------------------------------------------------------------------------------------------
# the public entry points


def read_source_index(source: SourceConfig, num_shards: int) -> pa.Table:
    """Parse a source's annotation file(s) into the normalised index (no caching).

    One row per annotation, INDEX_SCHEMA columns in order, ids as strings, `shard` = the image's
    shard key, rows sorted by (shard, image_id, annotation_id) - numerically when the file's ids
    are integers. Images without annotations give no rows. A malformed file raises
    AnnotationFileError naming the file and the problem.
    """
    if source.format == "coco":
        from pbi_ml.sources.coco import read_coco_index

        return read_coco_index(source, num_shards)
    if source.format == "lvis":
        from pbi_ml.sources.lvis import read_lvis_index

        return read_lvis_index(source, num_shards)
    if source.format == "openimages":
        from pbi_ml.sources.openimages import read_openimages_index

        return read_openimages_index(source, num_shards)
    raise ValueError(f"source {source.name!r}: unknown format {source.format!r}")


def source_fingerprint(source: SourceConfig, num_shards: int) -> str:
    """A short hash of everything the parsed index depends on (inputs' size + mtime, not contents)."""
    files = list(source.annotation_files)
    if source.class_descriptions:
        files.append(source.class_descriptions)
    stats = []
    for name in files:
        try:
            st = os.stat(name)
        except OSError as exc:
            raise AnnotationFileError(name, f"cannot read annotation file: {exc.strerror or exc}") from None
        stats.append([str(Path(name).resolve()), st.st_size, st.st_mtime_ns])
    blob = {
        "format": source.format,
        "files": stats,
        "num_shards": num_shards,
        "reader_version": READER_VERSION,
        "name": source.name,
    }
    if source.format == "openimages":  # its sizes and areas come from the image and mask files
        blob["images"] = str(Path(source.images).resolve())
        blob["masks"] = str(Path(source.masks).resolve()) if source.masks else None
    data = json.dumps(blob, sort_keys=True).encode()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def index_path(source: SourceConfig, num_shards: int, storage: Storage) -> Path:
    """Where the cached index of `source` lives for the current state of its files."""
    return storage.index_dir(source.name) / source_fingerprint(source, num_shards) / "instances.parquet"


def ensure_source_index(source: SourceConfig, num_shards: int, storage: Storage) -> Path:
    """Build the cached index file if it does not exist yet; return its path.

    One builder at a time per index, across processes and pods (`create_lock` on a lock file
    beside it, waited on without a timeout: a builder that dies frees it, at once on the same
    host, after the lock's stale time elsewhere). The write is atomic (temp file, then rename) in
    any case, so if two builders ever ran at once they would only repeat work.
    """
    from pbi_ml.shared_lock import create_lock

    path = index_path(source, num_shards, storage)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with create_lock(path.parent / "build.lock"):
        if not path.exists():  # another run may have built it while this one waited
            write_parquet(read_source_index(source, num_shards), path)
    return path


def load_source_index(source: SourceConfig, num_shards: int, storage: Storage) -> pa.Table:
    """The whole source's index, parsed once and cached under storage.index_dir(source.name)."""
    path = ensure_source_index(source, num_shards, storage)
    return pq.read_table(path).cast(INDEX_SCHEMA)


def shard_index(source: SourceConfig, shard: str, num_shards: int, storage: Storage) -> pa.Table:
    """The index rows of one shard ("003"); an empty INDEX_SCHEMA table when it has no images."""
    path = ensure_source_index(source, num_shards, storage)
    table = pq.read_table(path, filters=pc.field("shard") == shard)
    return table.cast(INDEX_SCHEMA)
