"""The project file: `pbi.yaml` (or `$PBI_CONFIG`) declares the data root, the shard count, the
sources, this node's devices, the executor and the stages' parameters (`stages:`, built into the
stage configs of `pbi_ml.config.stages`). docs/configuration.md lists every key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbi_ml.cluster import DEFAULT_EXECUTOR, K8sConfig, parse_executor, parse_k8s
from pbi_ml.devices import parse_devices
from pbi_ml.errors import ConfigError

SOURCE_FORMATS = ("coco", "lvis", "openimages")
SOURCE_ROLES = ("train", "test")
DEMO_SOURCE_NAME = "demo"
DEFAULT_NUM_SHARDS = 4
DEFAULT_DATA_ROOT = ".pbi-data"


@dataclass(frozen=True)
class SourceConfig:
    """One instance-segmentation dataset: an entry of `sources:` in pbi.yaml. Relative paths are
    resolved against the folder of pbi.yaml."""

    name: str  # the partition's source part: non-empty, without '|' or '/'
    format: str  # coco, lvis or openimages
    images: str  # the images root: every image path from the annotations must resolve inside it
    # one file (COCO / LVIS JSON, Open Images segmentation CSV) or, for Open Images, a list of CSV files
    annotations: str | tuple[str, ...]
    role: str = "train"  # train, or test: every pair of the source goes to the test split
    masks: str | None = None  # Open Images: the root of the mask PNGs
    class_descriptions: str | None = None  # Open Images: the class-descriptions CSV
    refs: str | None = None  # a RefCOCO-style referring-expressions file (JSON list of {"ann_id", "sentences"})
    test_fraction: float | None = None  # overrides splits.test_fraction for this source

    def __post_init__(self):
        if not self.name or "|" in self.name or "/" in self.name:
            raise ConfigError(f"source name {self.name!r} must be non-empty, without '|' or '/'")
        if self.format not in SOURCE_FORMATS:
            raise ConfigError(f"source {self.name!r}: format {self.format!r} not one of {SOURCE_FORMATS}")
        if self.role not in SOURCE_ROLES:
            raise ConfigError(f"source {self.name!r}: role {self.role!r} not one of {SOURCE_ROLES}")
        if self.format == "openimages" and (not self.masks or not self.class_descriptions):
            raise ConfigError(f"source {self.name!r}: openimages needs 'masks' and 'class_descriptions'")

    @property
    def annotation_files(self) -> tuple[str, ...]:
        if isinstance(self.annotations, str):
            return (self.annotations,)
        return tuple(self.annotations)


@dataclass(frozen=True)
class ProjectConfig:
    """What `pbi.yaml` declares: where data lives, how many shards, which sources."""

    data_root: str = DEFAULT_DATA_ROOT  # every table, image and checkpoint lies under it; $PBI_DATA_ROOT overrides
    num_shards: int = DEFAULT_NUM_SHARDS  # partitions per source (an image's shard: a hash of its id)
    sources: tuple[SourceConfig, ...] = ()  # the datasets (below); the bundled demo source is always first
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage name -> its parameters (below)
    devices: tuple[str, ...] = ("auto",)  # this node's lease slots (pbi_ml.devices); $PBI_DEVICES overrides
    executor: str = DEFAULT_EXECUTOR  # how launched runs execute steps (pbi_ml.cluster); $PBI_EXECUTOR overrides
    k8s: K8sConfig = field(default_factory=K8sConfig)  # the pod of every stage under executor k8s

    def source(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.name == name:
                return source
        raise ConfigError(f"unknown source {name!r}; declared: {[s.name for s in self.sources]}")

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.sources]

    @property
    def shard_keys(self) -> list[str]:
        return [shard_key(i) for i in range(self.num_shards)]


def shard_key(shard: int) -> str:
    return f"{shard:03d}"


# --------------------------------------------------------------------------------------------
# pbi.yaml


def demo_source() -> SourceConfig:
    """The bundled demo source: real scikit-image photos with hand-drawn instance polygons."""
    from pbi_ml.sources import demo

    return SourceConfig(
        name=DEMO_SOURCE_NAME,
        format="coco",
        images=str(demo.images_dir()),
        annotations=str(demo.annotations_path()),
        role="train",
        test_fraction=0.3,  # 6 photos: keep two (camera, coffee) for the demo's evaluation
    )


def default_config_path() -> Path:
    return Path(os.environ.get("PBI_CONFIG", "pbi.yaml"))


_PROJECT_CACHE: dict[str, ProjectConfig] = {}


def project_config(path: str | os.PathLike | None = None) -> ProjectConfig:
    """The project config, loaded once per process and path (`load_project_config` re-reads).

    The Dagster code location's partitions and its `PBIProject` resource both come from this one
    load, so they cannot disagree within a process."""
    config_path = Path(path) if path is not None else default_config_path()
    key = f"{config_path.resolve()}|{path is not None}|{os.environ.get('PBI_DATA_ROOT', '')}|{os.environ.get('PBI_EXECUTOR', '')}"
    if key not in _PROJECT_CACHE:
        _PROJECT_CACHE[key] = load_project_config(path)
    return _PROJECT_CACHE[key]


def read_yaml_mapping(path: Path, shape: str = "") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty: {}); a ConfigError naming the file and the
    problem otherwise (`shape` says what the mapping should look like)."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping{shape}")
    return raw


def load_project_config(path: str | os.PathLike | None = None) -> ProjectConfig:
    """Read `pbi.yaml` (or `$PBI_CONFIG`); `$PBI_DATA_ROOT` overrides `data_root`.

    A missing ./pbi.yaml is fine: the project then has only the bundled demo source. A file named
    explicitly (`path`, or `$PBI_CONFIG`) must exist: a typo must not silently run the demo-only
    project. A file that exists but cannot be read fails, naming it. Relative paths in the file
    are resolved against the file's folder.
    """

    named = path is not None or bool(os.environ.get("PBI_CONFIG"))
    config_path = Path(path) if path is not None else default_config_path()
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if config_path.exists():
        raw = read_yaml_mapping(config_path)
        base = config_path.resolve().parent
    elif named:
        via = "" if path is not None else " (named by $PBI_CONFIG)"
        raise ConfigError(f"{config_path}: config file not found{via}")

    def resolve(p: str) -> str:
        return str((base / os.path.expanduser(p)).resolve())

    data_root = os.environ.get("PBI_DATA_ROOT") or raw.get("data_root") or DEFAULT_DATA_ROOT
    num_shards = int(raw.get("num_shards", DEFAULT_NUM_SHARDS))
    if num_shards < 1:
        raise ConfigError(f"{config_path}: num_shards must be >= 1")
    sources = [demo_source()]
    for i, entry in enumerate(raw.get("sources") or []):
        if not isinstance(entry, dict):
            raise ConfigError(f"{config_path}: sources[{i}] must be a mapping")
        entry = dict(entry)
        for key in ("images", "masks", "class_descriptions", "refs"):
            if entry.get(key):
                entry[key] = resolve(entry[key])
        ann = entry.get("annotations")
        if isinstance(ann, list):
            entry["annotations"] = tuple(resolve(a) for a in ann)
        elif ann:
            entry["annotations"] = resolve(ann)
        try:
            source = SourceConfig(**entry)
        except (TypeError, ConfigError) as exc:
            raise ConfigError(f"{config_path}: sources[{i}]: {exc}") from None
        if source.name in {s.name for s in sources}:
            raise ConfigError(f"{config_path}: duplicate source name {source.name!r}")
        sources.append(source)
    stages = raw.get("stages") or {}
    if not isinstance(stages, dict):
        raise ConfigError(f"{config_path}: 'stages' must be a mapping of stage name to parameters")
    try:
        devices = parse_devices(raw.get("devices", "auto"))
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    try:
        executor = parse_executor(raw.get("executor"))
        k8s = parse_k8s(raw.get("k8s"))
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    return ProjectConfig(
        data_root=str(Path(resolve(data_root))),
        num_shards=num_shards,
        sources=tuple(sources),
        stages=stages,
        devices=devices,
        executor=executor,
        k8s=k8s,
    )
