"""The pair_judgments stage: a VLM judge's scores of every finished pair, beyond the paper.

The judge sees the source (the object removed), the pair's "add" instruction (instruction_vlm_llm)
and the target (the original photo), and scores the edit on ImgEdit's "add" rubric
(docs/method.md#pair-judge): judge_compliance, judge_naturalness, judge_coherence (1-5, the last
two capped by the first), their mean judge_score and a one-sentence judge_reason. Backends: `off`
(embedded default: null scores, `judge_null_reason` says why) or `vlm` (a transformers Qwen2-VL /
Qwen2.5-VL chat model). An answer the parser cannot read is a row with null scores and
`judge_null_reason` = "unparsed_answer", never a failure. `splits` leaves out the pairs scored
under `min_judge_score` when it is set. Every ok pair with an instruction enters; runs through the
item-stage mechanism (`item_stage.py`), so a changed pair or instruction is judged again.
"""

from __future__ import annotations

from pathlib import Path

from pbi_ml.config import SourceConfig
from pbi_ml.devices import device_of
from pbi_ml.imageio import load_rgb_path
from pbi_ml.judge import JUDGE_OFF_REASON, UNPARSED_ANSWER, JudgeConfig, JudgeItem, judgment
from pbi_ml.stages.common import Progress, StageResult, fingerprint, fingerprint_of, ok_pairs
from pbi_ml.stages.item_stage import ItemOutput, ItemStage, StageItem, portable, run_item_stage
from pbi_ml.storage import Storage
from pbi_ml.tables import INSTRUCTIONS, PAIR_JUDGMENTS

PAIR_FIELDS = ("pair_id", "source", "shard", "image_id", "annotation_id", "category")
# what a judgment depends on, from its pairs row (and the instruction)
UPSTREAM_FIELDS = ("pair_id", "source_image", "target_image", "output_digest")


class PairJudgmentStage(ItemStage):
    table = PAIR_JUDGMENTS

    def __init__(self, storage: Storage, source: SourceConfig, shard: str, config: JudgeConfig, judge=None):
        self.storage, self.source, self.shard, self.config = storage, source, shard, config
        self.batch_size = config.batch_size
        self.config_id = fingerprint(config, exclude=("batch_size", "device"))
        self.device = device_of(config)
        self.model = config.model if config.backend == "vlm" else None
        self._judge = judge

    def items(self) -> list[StageItem]:
        instructions = {
            r["pair_id"]: r["instruction_vlm_llm"]
            for r in self.storage.read_table(INSTRUCTIONS, self.source.name, self.shard).to_pylist()
            if r["status"] == "ok" and r["instruction_vlm_llm"]
        }
        items = []
        for row in ok_pairs(self.storage, self.source.name, self.shard):
            if row["pair_id"] not in instructions:
                continue
            row = {**row, "instruction": instructions[row["pair_id"]]}
            upstream = portable(
                self.storage, {**{k: row[k] for k in UPSTREAM_FIELDS}, "instruction": row["instruction"]}
            )
            items.append(
                StageItem(
                    key=row["pair_id"],
                    row=row,
                    upstream=fingerprint_of(upstream),
                    input_files=(row["source_image"], row["target_image"]) if self.model else (),
                )
            )
        return items

    def prepare(self, item: StageItem):
        row = item.row
        if self.model is None:  # backend off: no pixels needed
            return None
        return JudgeItem(load_rgb_path(row["source_image"]), load_rgb_path(row["target_image"]), row["instruction"])

    def compute(self, prepared: list) -> list:
        if self.model is None:
            return [judgment(null_reason=JUDGE_OFF_REASON) for _ in prepared]
        if self._judge is None:
            from pbi_ml.judge import make_judge

            self._judge = make_judge(self.config)
        return self._judge.judge(prepared)

    def write(self, item: StageItem, result: dict, directory: Path) -> ItemOutput:
        return ItemOutput(data=result)

    def _base(self, item: StageItem, record: dict) -> dict:
        return {
            **{k: item.row[k] for k in PAIR_FIELDS},
            "instruction": item.row["instruction"],
            "judge_backend": self.config.backend,
            "judge_model": self.model,
            "status": record["status"],
            "error": record["error"],
        }

    def rows(self, item: StageItem, record: dict) -> list[dict]:
        return [{**self._base(item, record), **record["data"]}]

    def failed_rows(self, item: StageItem, record: dict) -> list[dict]:
        return [self._base(item, record)]

    def counts(self, rows: list[dict]) -> dict:
        scores = [r["judge_score"] for r in rows if r.get("judge_score") is not None]
        counts: dict[str, int | float] = {"pairs": len(rows), "judged": len(scores)}
        if scores:
            counts["mean_judge_score"] = round(sum(scores) / len(scores), 4)
        counts["unparsed_answers"] = sum(1 for r in rows if r.get("judge_null_reason") == UNPARSED_ANSWER)
        return counts


def run_pair_judgments(
    storage: Storage,
    source: SourceConfig,
    shard: str,
    config: JudgeConfig,
    *,
    progress: Progress | None = None,
    judge=None,
) -> StageResult:
    """Judge the pairs of one partition; writes tables/pair_judgments/<source>/<shard>.parquet."""
    stage = PairJudgmentStage(storage, source, shard, config, judge)
    return run_item_stage(storage, stage, source.name, shard, progress)
