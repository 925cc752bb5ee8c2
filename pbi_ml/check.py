"""`pbi check`: validate the project config and its sources in seconds, before a long run.

For the config: every `stages:` section builds its stage's dataclass (unknown stages or fields, bad
values fail here, not hours later in that step). For each declared source (or one):

- the images root (and, for Open Images, the masks root) exists;
- the annotation file(s) parse with the reader the graph uses (`pbi_ml.sources.read_source_index`,
  streamed; read-only: when the graph has already cached the index for the files as they are now,
  that cache is read instead, and nothing is ever written); a `refs:` file parses too;
- the counts of images, instances and categories (those with at least one instance, as indexed),
  and the instances' `index_error` values (`pbi_ml.sources.checks.INDEX_ERRORS`);
- a seeded sample of images opens and has its annotated size, checked exactly as the candidates
  stage checks every image (`pbi_ml.candidates.image_problems`: image_missing, image_unreadable,
  path_escapes_root, image_size_mismatch).

A problem is *fatal* when the graph cannot run the source at all: a config error, a missing or
malformed annotation (or refs) file, a missing images or masks folder. Everything else (bad
instances, bad images) the graph rejects item by item with the same reason codes; they are
reported, with the first few examples, but are not fatal.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pbi_ml.config import ProjectConfig, SourceConfig, config_from_dict
from pbi_ml.errors import AnnotationFileError, ConfigError

# problem codes of the check itself (the per-item codes are pbi_ml.reasons' and INDEX_ERRORS' values)
CONFIG_ERROR = "config_error"
ANNOTATION_FILE_ERROR = "annotation_file_error"
IMAGES_FOLDER_MISSING = "images_folder_missing"
MASKS_FOLDER_MISSING = "masks_folder_missing"

DEFAULT_SAMPLE = 20
MAX_EXAMPLES = 5  # problems listed per source (all are counted)


@dataclass(frozen=True)
class Problem:
    code: str  # a reason code (image_missing, ...), an index_error value, or one of the codes above
    detail: str  # what and where: the file, the annotation or image id
    fatal: bool = False

    def line(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


@dataclass
class SourceReport:
    name: str
    format: str
    images: int = 0  # distinct images with at least one instance
    instances: int = 0
    categories: int = 0  # distinct categories with at least one instance
    index_errors: dict[str, int] = field(default_factory=dict)  # index_error value -> instances
    sampled: int = 0  # images whose file was checked
    image_problems: dict[str, int] = field(default_factory=dict)  # reason -> sampled images
    problems: list[Problem] = field(default_factory=list)  # fatal ones, then the first examples
    index_from_cache: bool = False
    seconds: float = 0.0

    @property
    def fatal(self) -> bool:
        return any(p.fatal for p in self.problems)

    @property
    def status(self) -> str:
        if self.fatal:
            return "FATAL"
        return "warnings" if self.problems else "ok"


@dataclass
class CheckReport:
    config_problems: list[Problem] = field(default_factory=list)
    sources: list[SourceReport] = field(default_factory=list)

    @property
    def fatal(self) -> bool:
        return any(p.fatal for p in self.config_problems) or any(s.fatal for s in self.sources)


# --------------------------------------------------------------------------------------------
# the config's stage sections


def _stage_builders() -> dict:
    """stage name -> a function building that stage's config from its pbi.yaml section."""
    from pbi_ml.config.reference import STAGE_CONFIGS
    from pbi_ml.stages.training import train_config_for

    def of(cls):
        return lambda values: config_from_dict(cls, values)

    return {stage: train_config_for if stage == "checkpoint" else of(cls) for stage, cls in STAGE_CONFIGS.items()}


def check_stages(project: ProjectConfig) -> list[Problem]:
    """One fatal problem per `stages:` section that its stage would refuse; a warning for a section
    named after no stage (the graph ignores it: a typo?)."""
    builders = _stage_builders()
    problems = []
    for stage, values in project.stages.items():
        where = f"stages.{stage}"
        if stage not in builders:
            problems.append(Problem(CONFIG_ERROR, f"{where}: no such stage, ignored; stages: {', '.join(builders)}"))
            continue
        if values is not None and not isinstance(values, dict):
            problems.append(Problem(CONFIG_ERROR, f"{where}: must be a mapping of parameters", True))
            continue
        try:
            builders[stage](dict(values or {}))
        except (ConfigError, TypeError, ValueError) as exc:
            problems.append(Problem(CONFIG_ERROR, f"{where}: {exc}", True))
    return problems


# --------------------------------------------------------------------------------------------
# one source


def read_index_read_only(source: SourceConfig, num_shards: int, data_root: str | None) -> tuple[pa.Table, bool]:
    """The source's index as the graph sees it, less its masks (`segmentation`, the bulk of it,
    which the check never reads), writing nothing: the graph's cached index when it exists for the
    files as they are now, else a fresh streamed parse. Returns (table, from_cache)."""
    from pbi_ml.sources import INDEX_SCHEMA, read_source_index

    columns = [name for name in INDEX_SCHEMA.names if name != "segmentation"]
    if data_root:
        import pyarrow.parquet as pq

        from pbi_ml.sources.index import index_path
        from pbi_ml.storage import Storage

        cached = index_path(source, num_shards, Storage(data_root))  # stats the files: raises when one is missing
        if cached.is_file():
            schema = pa.schema([INDEX_SCHEMA.field(name) for name in columns])
            try:
                return pq.read_table(cached, columns=columns).cast(schema), True
            except (OSError, pa.ArrowException):
                pass  # a damaged cache: the graph would trip on it too, but parse to check the files
    return read_source_index(source, num_shards).select(columns), False


def check_source(
    source: SourceConfig,
    num_shards: int,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    data_root: str | None = None,
    max_examples: int = MAX_EXAMPLES,
) -> SourceReport:
    """Validate one source (see the module docstring); never raises for a problem in its files."""
    started = time.monotonic()
    report = SourceReport(name=source.name, format=source.format)
    fatal = report.problems
    if not Path(source.images).is_dir():
        fatal.append(Problem(IMAGES_FOLDER_MISSING, f"images: {source.images} is not a folder", True))
    if source.format == "openimages" and source.masks and not Path(source.masks).is_dir():
        fatal.append(Problem(MASKS_FOLDER_MISSING, f"masks: {source.masks} is not a folder", True))
    if source.refs:
        from pbi_ml.instruct.refs import load_refs

        try:
            load_refs(source.refs)
        except AnnotationFileError as exc:
            fatal.append(Problem(ANNOTATION_FILE_ERROR, f"refs: {exc}", True))
    index = None
    if not (source.format == "openimages" and report.fatal):  # its reader opens the images and masks
        try:
            index, report.index_from_cache = read_index_read_only(source, num_shards, data_root)
        except AnnotationFileError as exc:
            fatal.append(Problem(ANNOTATION_FILE_ERROR, str(exc), True))
    if index is not None:  # the first few examples of each kind: bad instances, bad images
        report.problems.extend(_count(report, index, max_examples))
        if sample > 0 and Path(source.images).is_dir():
            report.problems.extend(_sample_images(report, index, source, sample, seed)[:max_examples])
    report.seconds = time.monotonic() - started
    return report


def _count(report: SourceReport, index: pa.Table, max_examples: int) -> list[Problem]:
    report.instances = index.num_rows
    report.images = len(pc.unique(index.column("image_id")))
    report.categories = len(pc.unique(index.column("category")))
    errors = index.column("index_error")
    bad = index.filter(pc.is_valid(errors))
    report.index_errors = {str(k): n for k, n in sorted(Counter(bad.column("index_error").to_pylist()).items())}
    return [
        Problem(
            row["index_error"],
            f"annotation {row['annotation_id']} ({row['category']}) of image {row['image_id']} ({row['image_file']})",
        )
        for row in bad.slice(0, max_examples).to_pylist()
    ]


def _sample_images(
    report: SourceReport, index: pa.Table, source: SourceConfig, sample: int, seed: int
) -> list[Problem]:
    from pbi_ml.candidates import image_problems

    # a null file name is an image too (the candidates stage rejects it as image_missing)
    files: list[str | None] = sorted(
        pc.unique(index.column("image_file")).to_pylist(), key=lambda f: (f is None, f or "")
    )
    if len(files) > sample:
        picks = np.random.default_rng(seed).choice(len(files), size=sample, replace=False)
        files = [files[i] for i in sorted(picks.tolist())]
    chosen = index.filter(pc.is_in(index.column("image_file"), value_set=pa.array(files, pa.string())))
    problems = image_problems(chosen, source)  # the candidates stage's own check, on the sample
    report.sampled = len(files)
    report.image_problems = dict(sorted(Counter(problems.values()).items()))
    return [
        Problem(
            problems[rel], f"image {Path(source.images) / rel}" if rel else "an annotation without an image file name"
        )
        for rel in files
        if rel in problems
    ]


# --------------------------------------------------------------------------------------------
# the project


def check_project(
    project: ProjectConfig,
    source: str | None = None,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    max_examples: int = MAX_EXAMPLES,
) -> CheckReport:
    """Validate the config's stage sections and every declared source (or only `source`).
    An unknown `source` raises ConfigError."""
    sources = [project.source(source)] if source is not None else list(project.sources)
    report = CheckReport(config_problems=check_stages(project))
    for s in sources:
        report.sources.append(
            check_source(
                s, project.num_shards, sample=sample, seed=seed, data_root=project.data_root, max_examples=max_examples
            )
        )
    return report


def report_lines(report: CheckReport) -> list[str]:
    """The report as the CLI prints it: one line per source, then its first problems indented."""
    lines = [f"config: {'FATAL ' if p.fatal else 'warning: '}{p.line()}" for p in report.config_problems]
    for s in report.sources:
        if s.fatal and not s.instances:
            lines.append(f"source {s.name} ({s.format}): FATAL")
        else:
            sampled = f"{s.sampled} sampled images checked" if s.sampled else "no image checked"
            lines.append(
                f"source {s.name} ({s.format}): {s.status}: {s.images} images, {s.instances} instances, "
                f"{s.categories} categories; {sampled} ({s.seconds:.1f}s)"
            )
            if s.index_errors:
                lines.append("  index errors: " + ", ".join(f"{k} {v}" for k, v in s.index_errors.items()))
            if s.image_problems:
                lines.append(
                    f"  image problems in the sample of {s.sampled}: "
                    + ", ".join(f"{k} {v}" for k, v in s.image_problems.items())
                )
        lines.extend(f"  {'FATAL ' if p.fatal else ''}{p.line()}" for p in s.problems)
    n_fatal = sum(s.fatal for s in report.sources)
    n_warn = sum(s.status == "warnings" for s in report.sources)
    summary = f"{len(report.sources)} source(s): {len(report.sources) - n_fatal - n_warn} ok, {n_warn} with warnings, {n_fatal} fatal"
    if report.config_problems:
        summary += f"; {len(report.config_problems)} config problem(s)"
    lines.append(summary)
    return lines
