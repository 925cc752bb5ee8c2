"""The instructions stage: three kinds of "add" instruction per pair, as in the PIPE release.

    instruction_class     class template: "add a <class>"
    instruction_vlm_llm   the description rewritten as an instruction (LLM with the paper's 5-shot
                          prompt, or the embedded template writer), after the INSTRUCTION CHECK:
                          a rewrite that does not name its object or drifts from the class and
                          description is replaced by the class template, the reason kept in
                          `instruction_check` ("passed" or the reason) and the raw text in
                          `instruction_vlm_llm_raw`
    instruction_ref       "add a <referring expression>" when a RefCOCO-style file is configured
                          for the source, else empty

The 3x3 object_location is stored, never baked in: the trainer appends " at the <location>"
with probability 0.25.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pbi_ml.config import SourceConfig
from pbi_ml.errors import ConfigError
from pbi_ml.stages.common import Progress, ProgressReporter, StageResult, chunks_to_run, fingerprint
from pbi_ml.storage import Storage, table_from_records

STAGE = "instructions"

INSTRUCTION_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("source", pa.string()),
        ("shard", pa.string()),
        ("image_id", pa.string()),
        ("annotation_id", pa.string()),
        ("category", pa.string()),
        ("object_location", pa.string()),
        ("instruction_class", pa.string()),
        ("instruction_vlm_llm", pa.string()),
        ("instruction_vlm_llm_raw", pa.string()),
        ("instruction_ref", pa.string()),
        ("instruction_check", pa.string()),  # "passed", or why the rewrite was replaced
        ("instruction_check_similarity", pa.float64()),
        ("instruct_backend", pa.string()),
    ]
)


def instructions_config_id(config) -> str:
    """What the stored instructions depend on: the config, and beyond it the few-shot file's
    content (llm backend) and the instruction check's rules (CHECK_VERSION)."""
    import hashlib

    from pbi_ml.instruct.base import FEWSHOT_DEFAULT
    from pbi_ml.instruct.check import CHECK_VERSION

    parts = [fingerprint(config, exclude=("batch_size", "device"))]
    if config.backend == "llm":
        fewshot = Path(config.fewshot_file) if config.fewshot_file else FEWSHOT_DEFAULT
        try:
            content = fewshot.read_bytes()
        except OSError as exc:
            raise ConfigError(f"instructions: fewshot file {fewshot}: {exc}") from None
        parts.append("fewshot-" + hashlib.blake2b(content, digest_size=4).hexdigest())
    if config.check:
        parts.append("check-" + CHECK_VERSION)
    return "-".join(parts)


def run_instructions(
    storage: Storage,
    source: SourceConfig,
    shard: str,
    config,
    writer=None,
    checker=None,
    progress: Progress | None = None,
) -> StageResult:
    from pbi_ml.instruct import (
        InstructionChecker,
        class_instruction,
        load_refs,
        make_instruction_writer,
        ref_instruction,
    )

    pairs = storage.read_table("pairs", source.name, shard).to_pylist()
    descriptions = {r["pair_id"]: r for r in storage.read_table("descriptions", source.name, shard).to_pylist()}
    refs = load_refs(source.refs) if source.refs else {}
    config_id = instructions_config_id(config)

    done: dict[str, dict] = {}
    todo = []
    for row in pairs:
        record = storage.read_item_record(STAGE, source.name, shard, row["annotation_id"])
        description = (descriptions.get(row["pair_id"]) or {}).get("description")
        if record and record.get("config_id") == config_id and record.get("description") == description:
            done[row["pair_id"]] = record
        else:
            todo.append(row)

    reporter = ProgressReporter(len(pairs), progress)
    reporter.advance(len(done))
    if todo:
        writer = writer or make_instruction_writer(config)
        if config.check and checker is None:
            checker = InstructionChecker(config)
    finished = set(done)
    # fixed chunks, recomputed whole: batched generation pads to the longest prompt of the batch
    for batch in chunks_to_run(pairs, config.batch_size, lambda row: row["pair_id"] in finished):
        descs = [(descriptions.get(r["pair_id"]) or {}).get("description") for r in batch]
        categories = [r["category"] for r in batch]
        with_desc = [i for i, d in enumerate(descs) if d]
        raw: list[str | None] = [None] * len(batch)
        if with_desc:
            answers = writer.rewrite(
                [descs[i] for i in with_desc],
                [categories[i] for i in with_desc],
                [batch[i]["pair_id"] for i in with_desc],
            )
            for i, answer in zip(with_desc, answers):
                raw[i] = (answer or "").strip() or None
        checks: list = [None] * len(batch)
        if checker is not None:
            idx = [i for i in range(len(batch)) if raw[i]]
            if idx:
                results = checker.check(
                    [raw[i] for i in idx],
                    [categories[i] for i in idx],
                    [descs[i] for i in idx],
                    [list(batch[i]["category_synonyms"] or [categories[i]]) for i in idx],
                )
                for i, result in zip(idx, results):
                    checks[i] = result
        for i, row in enumerate(batch):
            if row["pair_id"] in finished:
                continue  # computed only to keep the chunk whole
            template = class_instruction(row["category"])
            if not descs[i]:
                status, final, similarity = "no_description", template, None
            elif not raw[i]:
                status, final, similarity = "empty_instruction", template, None
            elif checks[i] is None:
                status, final, similarity = "passed" if not config.check else "not_checked", raw[i], None
            elif checks[i].ok:  # a pass with a reason = passed the lexical test only (no embedding model)
                status = f"passed:{checks[i].reason}" if checks[i].reason else "passed"
                final, similarity = raw[i], checks[i].similarity
            else:
                status, final, similarity = checks[i].reason or "rejected", template, checks[i].similarity
            ref_list = refs.get(str(row["annotation_id"])) or []
            record = {
                "config_id": config_id,
                "description": descs[i],
                "instruction_class": template,
                "instruction_vlm_llm": final,
                "instruction_vlm_llm_raw": raw[i],
                "instruction_ref": ref_instruction(ref_list[0]) if ref_list else "",
                "instruction_check": status,
                "instruction_check_similarity": similarity,
            }
            storage.write_item_record(STAGE, source.name, shard, row["annotation_id"], record)
            done[row["pair_id"]] = record
        reporter.advance(sum(1 for row in batch if row["pair_id"] not in finished))

    rows = []
    for row in pairs:
        record = done[row["pair_id"]]
        rows.append(
            {
                **{
                    k: row[k]
                    for k in ("pair_id", "source", "shard", "image_id", "annotation_id", "category", "object_location")
                },
                **{
                    k: record[k]
                    for k in (
                        "instruction_class",
                        "instruction_vlm_llm",
                        "instruction_vlm_llm_raw",
                        "instruction_ref",
                        "instruction_check",
                        "instruction_check_similarity",
                    )
                },
                "instruct_backend": config.backend,
            }
        )
    table = table_from_records(rows, INSTRUCTION_SCHEMA)
    path = storage.write_table(STAGE, source.name, shard, table)
    counts = {"pairs": len(rows), "computed_this_run": len(todo)}
    for r in rows:
        key = f"check_{r['instruction_check']}"
        counts[key] = counts.get(key, 0) + 1
    counts["with_ref"] = sum(1 for r in rows if r["instruction_ref"])
    return StageResult(table=table, path=path, counts=counts)
