"""The configs of the data stages.

Typed, frozen, validated on construction (`pbi_ml.config.fields.check_fields`) with messages
naming the field. Defaults are the paper's recipe (docs/method.md) where the paper published a
number, and documented choices (marked "calibrate") where it did not. A stage's parameters come
from the `stages:` section of `pbi.yaml` and from Dagster run config; docs/configuration.md lists
them all (`python -m pbi_ml.config.reference`).

The other stages' configs live beside their code (`DescribeConfig`, `InstructConfig`,
`ExportConfig`, `TrainConfig`, `EvaluationConfig`); `pbi_ml.config.reference.STAGE_CONFIGS`
names every one.
"""

from __future__ import annotations

from dataclasses import dataclass

from pbi_ml.config.fields import check_fields
from pbi_ml.config.project import DEFAULT_NUM_SHARDS
from pbi_ml.devices import DTYPES
from pbi_ml.errors import ConfigError

REMOVAL_BACKENDS = ("opencv", "diffusers")
CONTEXT_MODES = ("crop", "full")  # removal: pbi_ml/removal/context.py
SCORING_BACKENDS = ("stats", "clip")
CLASS_FILTER_BACKENDS = ("off", "clip")
AUDIT_BACKENDS = ("stats", "clip")


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
    drop_crowd: bool = True  # reject COCO / LVIS crowd annotations (one mask over several objects)
    excluded_classes: tuple[str, ...] = ()  # class names rejected as excluded_class
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


@dataclass(frozen=True)
class ClassFilterConfig:
    """The paper's third pre-removal filter (Paint by Inpaint §3.1, Fig. 4a, Fig. S14): the CLIP
    similarity between the isolated object and "a photo of a <class>"; a low value means a blurred
    or occluded, uninformative view. `off` (the embedded default: no weights) skips the filter and
    says so in the data (clip_class_sim null with the reason); `clip` is the paper's recipe."""

    backend: str = "off"  # "off" (embedded: no weights, filter skipped) or "clip" (open_clip)
    clip_model: str = "ViT-L-14"  # open_clip model name
    clip_pretrained: str = "openai"  # open_clip pretrained tag, or a path to a checkpoint file
    device: str = "auto"  # "auto" = a leased device of the node (pbi_ml.devices), else cuda if available, else cpu
    batch_size: int = 32  # objects per chunk
    isolation_dilation_px: int = 10  # the object is isolated as the scoring stage does: mask dilated by this ...
    isolation_blur_sigma: float = 5.0  # ... and everything outside it blurred with this sigma
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
    num_candidates: int = 3  # inpaintings per object; the scoring stage keeps the best passing one
    dilation_px: int = 15  # calibrate: masks are dilated so no object part stays visible
    steps: int = 10  # denoising steps
    guidance_scale: float = 7.5  # classifier-free guidance
    resolution: int = 512  # the side the inpainting model works at
    prompt: str = "a photo of a background, a photo of an empty place"
    negative_prompt: str = "an object, a {category}"  # {category}: the object's class name
    seed: int = 0  # candidate k uses seed + k
    batch_size: int = 4  # inpaintings per model call
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
    """Filter scores on removal candidates (docs/method.md: consensus, multimodal CLIP, importance)."""

    backend: str = "stats"  # "stats" (embedded, no weights) or "clip" (open_clip)
    clip_model: str = "ViT-L-14"  # open_clip model name
    clip_pretrained: str = "openai"  # open_clip pretrained tag, or a path to a checkpoint file
    device: str = "auto"  # "auto" = a leased device of the node (pbi_ml.devices), else cuda if available, else cpu
    batch_size: int = 32  # images per CLIP call
    isolation_dilation_px: int = 10  # the inpainted region: the mask dilated by this ...
    isolation_blur_sigma: float = 5.0  # ... and everything outside it blurred with this sigma
    # clip thresholds (paper swept: consensus 0.11-0.20, multimodal 0.26-0.295)
    clip_max_consensus_std: float = 0.15  # candidates disagree above this: consensus_disagreement
    clip_max_removal_sim: float = 0.28  # the region still looks like the class above this: object_still_present
    clip_before_min_sim: float = 0.28  # exception: high before removal ...
    clip_min_sim_drop: float = 0.03  # ... and dropped clearly -> keep
    clip_max_importance_sim: float = 0.98  # whole-image similarity above this: edit too small
    # stats thresholds (embedded backend; columns measure pixel statistics, not semantics)
    stats_max_consensus_std: float = 0.12  # candidates disagree above this: consensus_disagreement
    stats_max_boundary_contrast: float = 0.25  # the fill stands out from its surroundings above this
    stats_min_change: float = 0.02  # the image changed less than this: edit_too_small
    # calibrate: on the demo, the two visibly smeared classical removals (motorcycle 33 %, cup 22 %
    # of the image) score 0.13-0.22 on every candidate; every other object has a candidate >= 0.30
    stats_min_texture_ratio: float = 0.25
    # the widest hole (hole_radius_px of the dilated mask: half its width) each removal method is
    # trusted to fill; a wider one is rejected before scoring (hole_too_large_for_inpainter); None: no
    # limit; the diffusers backend (method "sd") has none. From 390 removals labelled by eye
    # (benchmarks/labels/): the widest clean Telea/NS fill had 61.5 px, none of the 35 objects over 64 px
    telea_max_hole_radius_px: float | None = 64.0
    ns_max_hole_radius_px: float | None = 64.0

    @property
    def uses_device(self) -> bool:
        """Whether this config runs a model on a device (stats does not)."""
        return self.backend == "clip"

    def hole_too_large(self, method: str, hole_radius_px: float) -> bool:
        """Whether a hole this wide is beyond what the removal `method` (its candidate label: "telea
        r=3", "ns r=5", "sd seed=1") can fill; methods without a limit fill any hole."""
        limits = {"telea": self.telea_max_hole_radius_px, "ns": self.ns_max_hole_radius_px}
        limit = limits.get(method.split(" ", 1)[0])
        return limit is not None and hole_radius_px > limit

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
            telea_max_hole_radius_px="positive",
            ns_max_hole_radius_px="positive",
        )


@dataclass(frozen=True)
class PairConfig:
    """How a pair's object-removed image is composed from the chosen removal candidate."""

    feather_sigma: float = 3.0  # Gaussian feather of the dilated mask, inside the dilated mask only

    def __post_init__(self):
        check_fields(self, feather_sigma="non_negative")


@dataclass(frozen=True)
class ArtifactAuditConfig:
    """Can a classifier tell each pair's inpainted region (in the source) from the same region of
    the real photo (the target)? Out-of-fold probabilities by pair, their ROC AUC per partition
    (docs/method.md#artifact-audit)."""

    backend: str = "stats"  # "stats" (noise-residual statistics, no weights) or "clip" (CLIP features of the region)
    clip_model: str = "ViT-L-14"  # open_clip model name (backend: clip)
    clip_pretrained: str = "openai"  # open_clip pretrained tag, or a path to a checkpoint file
    device: str = "auto"  # "auto" = a leased device of the node (pbi_ml.devices), else cuda if available, else cpu
    batch_size: int = 32  # images per CLIP call
    ring_px: int = 16  # the ring around the edited region the stats features compare it with
    folds: int = 5  # cross-validation folds, by pair (fewer when the partition has fewer pairs)
    # fewer ok pairs than this: no AUC and no detectability, with the reason (the AUC of n pairs
    # under no signal has a standard deviation of about 0.3 / sqrt(n): 0.09 at 10)
    min_pairs: int = 10
    max_auc: float = 0.8  # the artifact_audit_auc check warns above this AUC

    @property
    def uses_device(self) -> bool:
        """Whether this config runs a model on a device (stats does not)."""
        return self.backend == "clip"

    def __post_init__(self):
        check_fields(
            self,
            backend=AUDIT_BACKENDS,
            batch_size="positive",
            ring_px="positive",
            min_pairs="positive",
            max_auc="fraction",
        )
        if self.folds < 2:
            raise ConfigError(f"ArtifactAuditConfig.folds: {self.folds!r} is not a number >= 2")


@dataclass(frozen=True)
class SplitConfig:
    """Train/test assignment. Sources with role: test go to test; an image that appears in any
    test source (same image_id, e.g. COCO val under both COCO and LVIS) is test everywhere; the
    rest by a seeded hash of the image id (a source may override test_fraction). Paper: test =
    752 pairs from COCO val only: declare COCO val with role: test and set test_fraction: 0.
    Beyond the paper, `min_judge_score` leaves out the pairs the pair judge scored lower
    (docs/method.md#pair-judge): split "excluded", in neither train nor test nor the exports."""

    test_fraction: float = 0.05  # the share of images (by a seeded hash of the image id) in test
    seed: int = 0  # the hash's seed
    # leave out ("excluded") the pairs whose pair_judgments judge_score (1-5) is under this; off when
    # null; a pair the judge did not score (backend off, unparsed answer) is kept
    min_judge_score: float | None = None

    def __post_init__(self):
        check_fields(self, test_fraction="fraction", min_judge_score="positive")
