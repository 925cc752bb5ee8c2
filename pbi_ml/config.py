"""Configuration dataclasses for the project and for every stage.

Defaults are the paper's recipe (docs/method.md) where the paper published a number, and documented
choices (marked "calibrate") where it did not. The project file `pbi.yaml` declares the data root,
the shard count and the sources; stage parameters come from Dagster run config or from the
`stages:` section of `pbi.yaml`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbi_ml.cluster import K8sConfig
from pbi_ml.errors import ConfigError

SOURCE_FORMATS = ("coco", "lvis", "openimages")
SOURCE_ROLES = ("train", "test")
DEMO_SOURCE_NAME = "demo"
DEFAULT_NUM_SHARDS = 4
REMOVAL_BACKENDS = ("opencv", "diffusers")
CONTEXT_MODES = ("crop", "full")  # removal: pbi_ml/removal/context.py
SCORING_BACKENDS = ("stats", "clip")
DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class SourceConfig:
    """One instance-segmentation dataset.

    `images` is the images root: every image path from the annotations must resolve inside it.
    `annotations` is one file (COCO / LVIS JSON, Open Images segmentation CSV) or, for Open Images,
    a list of CSV files. Open Images also needs `masks` (root of the mask PNGs) and
    `class_descriptions` (the class-descriptions CSV). `refs` optionally points at a
    RefCOCO-style referring-expressions file (JSON list of {"ann_id", "sentences"}).
    `test_fraction` overrides the hashed test fraction of the splits stage for this source.
    """

    name: str
    format: str
    images: str
    annotations: str | tuple[str, ...]
    role: str = "train"
    masks: str | None = None
    class_descriptions: str | None = None
    refs: str | None = None
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

    data_root: str
    num_shards: int = DEFAULT_NUM_SHARDS
    sources: tuple[SourceConfig, ...] = ()
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    devices: tuple[str, ...] = ("auto",)  # this node's lease slots (pbi_ml.devices); $PBI_DEVICES overrides
    executor: str = "multiprocess"  # how launched runs execute steps (pbi_ml.cluster); $PBI_EXECUTOR overrides
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
# Stage configs: typed, frozen, validated on construction with messages naming the field


def check_fields(config, **rules) -> None:
    """Validate fields of a config dataclass; raises ConfigError naming the class and the field.

    rules: field=("positive" | "non_negative" | "fraction" | tuple of allowed values)."""
    name = type(config).__name__
    for field_name, rule in rules.items():
        value = getattr(config, field_name)
        if value is None:
            continue
        if rule == "positive":
            ok, want = _is_number(value) and value > 0, "a number > 0"
        elif rule == "non_negative":
            ok, want = _is_number(value) and value >= 0, "a number >= 0"
        elif rule == "fraction":
            ok, want = _is_number(value) and 0 <= value <= 1, "a number in [0, 1]"
        else:
            ok, want = value in rule, f"one of {tuple(rule)}"
        if not ok:
            raise ConfigError(f"{name}.{field_name}: {value!r} is not {want}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SourceIndexConfig:
    """How a source is sharded: `num_shards` partitions per source (from pbi.yaml)."""

    num_shards: int = DEFAULT_NUM_SHARDS

    def __post_init__(self):
        check_fields(self, num_shards="positive")


@dataclass(frozen=True)
class CandidateConfig:
    """Pre-removal filters. Paper: 4,646K instances -> 1,494K candidates (thresholds unpublished)."""

    min_area_fraction: float = 0.005  # calibrate: objects under 0.5 % of the image are too small
    max_area_fraction: float = 0.5  # calibrate: objects over 50 % leave too little context
    border_margin_fraction: float = 0.005  # calibrate: bbox closer than this fraction of the side to an edge: cut off
    drop_crowd: bool = True
    excluded_classes: tuple[str, ...] = ()
    check_images: bool = True  # stat + header-read each image; off for annotation-only benchmarks

    def __post_init__(self):
        check_fields(
            self, min_area_fraction="fraction", max_area_fraction="fraction", border_margin_fraction="fraction"
        )
        if self.min_area_fraction > self.max_area_fraction:
            raise ConfigError(
                f"CandidateConfig.min_area_fraction: {self.min_area_fraction} is above max_area_fraction "
                f"{self.max_area_fraction}"
            )


CLASS_FILTER_BACKENDS = ("off", "clip")


@dataclass(frozen=True)
class ClassFilterConfig:
    """The paper's third pre-removal filter (Paint by Inpaint §3.1, Fig. 4a, Fig. S14): the CLIP
    similarity between the isolated object and "a photo of a <class>"; a low value means a blurred
    or occluded, uninformative view. `off` (the embedded default: no weights) skips the filter and
    says so in the data (clip_class_sim null with the reason); `clip` is the paper's recipe."""

    backend: str = "off"  # "off" (embedded: no weights, filter skipped) or "clip" (open_clip)
    clip_model: str = "ViT-L-14"
    clip_pretrained: str = "openai"
    device: str = "auto"
    batch_size: int = 32  # objects per chunk
    isolation_dilation_px: int = 10  # the scoring stage's region isolation
    isolation_blur_sigma: float = 5.0
    # calibrate: read off the paper's Fig. S14 examples; with ViT-L/14 "a photo of a <class>" a clear
    # view of the class scores about 0.22-0.30, a blurred or occluded one under about 0.2
    min_class_sim: float = 0.20

    @property
    def uses_device(self) -> bool:
        """Whether this config runs a model on a device (the embedded backend does not)."""
        return self.backend == "clip"

    def __post_init__(self):
        check_fields(
            self,
            backend=CLASS_FILTER_BACKENDS,
            batch_size="positive",
            isolation_dilation_px="non_negative",
            isolation_blur_sigma="non_negative",
        )


@dataclass(frozen=True)
class RemovalConfig:
    """Object removal by inpainting. Paper: SD 1.5 inpainting, 10 steps, 3 candidates per object."""

    backend: str = "opencv"  # "opencv" (embedded, CPU) or "diffusers" (the paper's recipe)
    model: str = (
        "stable-diffusion-v1-5/stable-diffusion-inpainting"  # ex runwayml/ (repo moved 2024); Hub id or local dir
    )
    num_candidates: int = 3
    dilation_px: int = 15  # calibrate: masks are dilated so no object part stays visible
    steps: int = 10
    guidance_scale: float = 7.5
    resolution: int = 512
    prompt: str = "a photo of a background, a photo of an empty place"
    negative_prompt: str = "an object, a {category}"
    seed: int = 0  # candidate k uses seed + k
    batch_size: int = 4
    device: str = "auto"  # "auto" = a leased device of the node (pbi_ml.devices), else cuda if available, else cpu
    dtype: str = "auto"  # "auto" = bfloat16 on a GPU that has it (else float16), float32 on cpu
    # diffusers backend: inpaint an object-centred window (crop, default) or the whole image (full);
    # see pbi_ml/removal/context.py
    context: str = "crop"
    min_context_px: int = 384  # the window's smallest side, in original pixels
    context_scale: float = 3.0  # the window's side over the dilated mask's box side
    compile: bool = False  # torch.compile the UNet on CUDA (falls back to eager, saying so, where it cannot)

    @property
    def uses_device(self) -> bool:
        """Whether this config runs a model on a device (opencv does not)."""
        return self.backend == "diffusers"

    def __post_init__(self):
        check_fields(
            self,
            backend=REMOVAL_BACKENDS,
            num_candidates="positive",
            dilation_px="non_negative",
            steps="positive",
            guidance_scale="non_negative",
            resolution="positive",
            seed="non_negative",
            batch_size="positive",
            dtype=DTYPES,
            context=CONTEXT_MODES,
            min_context_px="positive",
        )
        if self.context_scale < 1:
            raise ConfigError(
                f"RemovalConfig.context_scale: {self.context_scale!r} must be >= 1 (the window holds the whole mask)"
            )


@dataclass(frozen=True)
class ScoringConfig:
    """Filter scores on removal candidates (docs/method.md#removal-filters)."""

    backend: str = "stats"  # "stats" (embedded, no weights) or "clip" (open_clip)
    clip_model: str = "ViT-L-14"
    clip_pretrained: str = "openai"  # open_clip pretrained tag, or a path to a checkpoint file
    device: str = "auto"
    batch_size: int = 32
    isolation_dilation_px: int = 10
    isolation_blur_sigma: float = 5.0
    # clip thresholds (paper swept: consensus 0.11-0.20, multimodal 0.26-0.295)
    clip_max_consensus_std: float = 0.15
    clip_max_removal_sim: float = 0.28
    clip_before_min_sim: float = 0.28  # exception: high before removal ...
    clip_min_sim_drop: float = 0.03  # ... and dropped clearly -> keep
    clip_max_importance_sim: float = 0.98  # whole-image similarity above this: edit too small
    # stats thresholds (embedded backend; columns measure pixel statistics, not semantics)
    stats_max_consensus_std: float = 0.12
    stats_max_boundary_contrast: float = 0.25
    stats_min_change: float = 0.02
    # calibrate: on the demo, the two visibly smeared classical removals (motorcycle 33 %, cup 22 %
    # of the image) score 0.13-0.22 on every candidate; every other object has a candidate >= 0.30
    stats_min_texture_ratio: float = 0.25

    @property
    def uses_device(self) -> bool:
        """Whether this config runs a model on a device (stats does not)."""
        return self.backend == "clip"

    def __post_init__(self):
        check_fields(
            self,
            backend=SCORING_BACKENDS,
            batch_size="positive",
            isolation_dilation_px="non_negative",
            isolation_blur_sigma="non_negative",
            clip_max_consensus_std="non_negative",
            clip_min_sim_drop="non_negative",
            stats_max_consensus_std="non_negative",
            stats_max_boundary_contrast="non_negative",
            stats_min_change="non_negative",
            stats_min_texture_ratio="non_negative",
        )


@dataclass(frozen=True)
class PairConfig:
    feather_sigma: float = 3.0  # Gaussian feather of the dilated mask, inside the dilated mask only

    def __post_init__(self):
        check_fields(self, feather_sigma="non_negative")


@dataclass(frozen=True)
class SplitConfig:
    """Train/test assignment. Sources with role: test go to test; an image that appears in any
    test source (same image_id, e.g. COCO val under both COCO and LVIS) is test everywhere; the
    rest by a seeded hash of the image id (a source may override test_fraction). Paper: test =
    752 pairs from COCO val only: declare COCO val with role: test and set test_fraction: 0."""

    test_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self):
        check_fields(self, test_fraction="fraction")


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when torch sees a GPU, else "cpu". Imports torch lazily."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str):
    """ "auto" -> bfloat16 on a CUDA GPU that supports it (Ampere and later), else float16 on CUDA,
    float32 elsewhere. Returns a torch dtype."""
    import torch

    if dtype == "auto":
        if not device.startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ConfigError(f"dtype {dtype!r} not one of auto, float32, float16, bfloat16") from None


def config_from_dict(cls, values: dict[str, Any] | None):
    """Build a stage dataclass from a plain dict, rejecting unknown keys by name."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; known: {sorted(names)}")
    for f in dataclasses.fields(cls):
        if f.name in values and isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


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


def load_project_config(path: str | os.PathLike | None = None) -> ProjectConfig:
    """Read `pbi.yaml` (or `$PBI_CONFIG`); `$PBI_DATA_ROOT` overrides `data_root`.

    A missing ./pbi.yaml is fine: the project then has only the bundled demo source. A file named
    explicitly (`path`, or `$PBI_CONFIG`) must exist: a typo must not silently run the demo-only
    project. A file that exists but cannot be read fails, naming it. Relative paths in the file
    are resolved against the file's folder.
    """
    import yaml

    named = path is not None or bool(os.environ.get("PBI_CONFIG"))
    config_path = Path(path) if path is not None else default_config_path()
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if config_path.exists():
        try:
            raw = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_path}: not valid YAML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{config_path}: cannot be read ({exc.__class__.__name__}: {exc})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{config_path}: top level must be a mapping")
        base = config_path.resolve().parent
    elif named:
        via = "" if path is not None else " (named by $PBI_CONFIG)"
        raise ConfigError(f"{config_path}: config file not found{via}")

    def resolve(p: str) -> str:
        return str((base / os.path.expanduser(p)).resolve())

    data_root = os.environ.get("PBI_DATA_ROOT") or raw.get("data_root") or ".pbi-data"
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
    from pbi_ml.devices import parse_devices

    try:
        devices = parse_devices(raw.get("devices", "auto"))
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    from pbi_ml.cluster import parse_executor, parse_k8s

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
