"""The instructions stage: three kinds of "add" instruction per pair, as in the PIPE release.

    instruction_class     class template: "add a <class>"
    instruction_vlm_llm   the description rewritten as an instruction (LLM with the paper's 5-shot
                          prompt, or the embedded template writer), after the INSTRUCTION CHECK:
                          a rewrite that does not name its object or drifts from the class and
                          description is replaced by the class template, the reason kept in
                          `instruction_check` ("passed" or the reason) and the raw text in
                          `instruction_vlm_llm_raw`; with `spatial_check`, a rewrite whose
                          position words contradict the object's box ("contradicts_location")
                          is replaced the same way
    instruction_ref       "add a <referring expression>" when a RefCOCO-style file is configured
                          for the source, else empty

The 3x3 object_location is stored, never baked in: the trainer appends " at the <location>"
with probability 0.25. Every ok pair enters (one without a description gets the class template);
runs through the item-stage mechanism (`item_stage.py`): fixed chunks recomputed whole, because
batched generation pads to the longest prompt of the batch; a changed description redoes its pair.
"""

from __future__ import annotations

from pathlib import Path

from pbi_ml.config import SourceConfig
from pbi_ml.devices import device_of
from pbi_ml.errors import ConfigError
from pbi_ml.instruct.base import InstructConfig
from pbi_ml.stages.common import Progress, StageResult, fingerprint, fingerprint_of, ok_pairs
from pbi_ml.stages.item_stage import ItemOutput, ItemStage, StageItem, run_item_stage
from pbi_ml.storage import Storage
from pbi_ml.tables import DESCRIPTIONS, INSTRUCTIONS

PAIR_FIELDS = ("pair_id", "source", "shard", "image_id", "annotation_id", "category", "object_location")
PLACE_FIELDS = ("bbox_x", "bbox_y", "bbox_w", "bbox_h", "width", "height")  # what the spatial check reads
INSTRUCTION_FIELDS = (
    "instruction_class",
    "instruction_vlm_llm",
    "instruction_vlm_llm_raw",
    "instruction_ref",
    "instruction_check",
    "instruction_check_similarity",
)


def instructions_config_id(config: InstructConfig) -> str:
    """What the stored instructions depend on: the config, and beyond it the few-shot file's
    content (llm backend) and the instruction check's rules (CHECK_VERSION, SPATIAL_CHECK_VERSION).
    `spatial_check` enters only as the spatial part, so turning it off keeps the ids from before it."""
    import hashlib

    from pbi_ml.instruct.base import FEWSHOT_DEFAULT
    from pbi_ml.instruct.check import CHECK_VERSION
    from pbi_ml.instruct.spatial import SPATIAL_CHECK_VERSION

    parts = [fingerprint(config, exclude=("batch_size", "device", "spatial_check"))]
    if config.backend == "llm":
        fewshot = Path(config.fewshot_file) if config.fewshot_file else FEWSHOT_DEFAULT
        try:
            content = fewshot.read_bytes()
        except OSError as exc:
            raise ConfigError(f"instructions: fewshot file {fewshot}: {exc}") from None
        parts.append("fewshot-" + hashlib.blake2b(content, digest_size=4).hexdigest())
    if config.check:
        parts.append("check-" + CHECK_VERSION)
    if spatial_check_on(config):
        parts.append("spatial-" + SPATIAL_CHECK_VERSION)
    return "-".join(parts)


def spatial_check_on(config: InstructConfig) -> bool:
    """The spatial check runs inside the instruction check."""
    return config.check and config.spatial_check


class InstructionStage(ItemStage):
    table = INSTRUCTIONS

    def __init__(
        self, storage: Storage, source: SourceConfig, shard: str, config: InstructConfig, writer=None, checker=None
    ):
        self.storage, self.source, self.shard, self.config = storage, source, shard, config
        self.batch_size = config.batch_size
        self.config_id = instructions_config_id(config)
        self.device = device_of(config)
        self._writer, self._checker = writer, checker

    def items(self) -> list[StageItem]:
        from pbi_ml.instruct import load_refs

        name = self.source.name
        descriptions = {
            r["pair_id"]: r["description"] for r in self.storage.read_table(DESCRIPTIONS, name, self.shard).to_pylist()
        }
        refs = load_refs(self.source.refs) if self.source.refs else {}
        items = []
        for row in ok_pairs(self.storage, name, self.shard):
            prepared = {
                **{k: row[k] for k in PAIR_FIELDS},
                "synonyms": list(row["category_synonyms"] or [row["category"]]),
                "description": descriptions.get(row["pair_id"]),
                "refs": list(refs.get(str(row["annotation_id"])) or []),
            }
            if spatial_check_on(self.config):  # only then does the box change the result
                prepared["place"] = [row[k] for k in PLACE_FIELDS]
            items.append(StageItem(key=row["pair_id"], row=prepared, upstream=fingerprint_of(prepared)))
        return items

    def compute(self, prepared: list) -> list:
        from pbi_ml.instruct import InstructionChecker, class_instruction, make_instruction_writer, ref_instruction

        if self._writer is None:
            self._writer = make_instruction_writer(self.config)
        if self.config.check and self._checker is None:
            self._checker = InstructionChecker(self.config)
        descs = [row["description"] for row in prepared]
        categories = [row["category"] for row in prepared]
        with_desc = [i for i, d in enumerate(descs) if d]
        raw: list[str | None] = [None] * len(prepared)
        if with_desc:
            answers = self._writer.rewrite(
                [descs[i] for i in with_desc],
                [categories[i] for i in with_desc],
                [prepared[i]["pair_id"] for i in with_desc],
            )
            for i, answer in zip(with_desc, answers, strict=True):
                raw[i] = (answer or "").strip() or None
        checks: list = [None] * len(prepared)
        if self._checker is not None:
            idx = [i for i in range(len(prepared)) if raw[i]]
            if idx:
                results = self._checker.check(
                    [raw[i] for i in idx],
                    [categories[i] for i in idx],
                    [descs[i] for i in idx],
                    [prepared[i]["synonyms"] for i in idx],
                    [self._cells(prepared[i]) for i in idx],
                )
                for i, result in zip(idx, results, strict=True):
                    checks[i] = result
        out = []
        for i, row in enumerate(prepared):
            template = class_instruction(row["category"])
            check = checks[i]
            if not descs[i]:
                status, final, similarity = "no_description", template, None
            elif not raw[i]:
                status, final, similarity = "empty_instruction", template, None
            elif check is None:
                status, final, similarity = "passed" if not self.config.check else "not_checked", raw[i], None
            elif check.ok:  # a pass with a reason = passed the lexical test only (no embedding model)
                status = f"passed:{check.reason}" if check.reason else "passed"
                final, similarity = raw[i], check.similarity
            else:
                status, final, similarity = check.reason or "rejected", template, check.similarity
            out.append(
                {
                    "instruction_class": template,
                    "instruction_vlm_llm": final,
                    "instruction_vlm_llm_raw": raw[i],
                    "instruction_ref": ref_instruction(row["refs"][0]) if row["refs"] else "",
                    "instruction_check": status,
                    "instruction_check_similarity": similarity,
                }
            )
        return out

    def _cells(self, row: dict):
        """Where the object is, for the spatial check (None when it is off)."""
        from pbi_ml.instruct.spatial import object_cells

        if "place" not in row:
            return None
        x, y, w, h, width, height = row["place"]
        return object_cells((x, y, w, h), width, height, row["object_location"])

    def write(self, item: StageItem, result: dict, directory: Path) -> ItemOutput:
        return ItemOutput(data=result)

    def _base(self, item: StageItem, record: dict) -> dict:
        return {
            **{k: item.row[k] for k in PAIR_FIELDS},
            "instruct_backend": self.config.backend,
            "status": record["status"],
            "error": record["error"],
        }

    def rows(self, item: StageItem, record: dict) -> list[dict]:
        return [{**self._base(item, record), **{k: record["data"][k] for k in INSTRUCTION_FIELDS}}]

    def failed_rows(self, item: StageItem, record: dict) -> list[dict]:
        return [self._base(item, record)]

    def counts(self, rows: list[dict]) -> dict:
        counts = {"pairs": len(rows), "with_ref": sum(1 for r in rows if r.get("instruction_ref"))}
        for r in rows:
            key = f"check_{r.get('instruction_check')}"
            counts[key] = counts.get(key, 0) + 1
        return counts


def run_instructions(
    storage: Storage,
    source: SourceConfig,
    shard: str,
    config: InstructConfig,
    *,
    progress: Progress | None = None,
    writer=None,
    checker=None,
) -> StageResult:
    """Write the instructions of one partition; writes tables/instructions/<source>/<shard>.parquet."""
    stage = InstructionStage(storage, source, shard, config, writer, checker)
    return run_item_stage(storage, stage, source.name, shard, progress)
