"""Every reason code PBI stores in its tables, in one place.

A reason is a short snake_case string. Three kinds:

- ITEM reasons: why one item (an image, a mask, an object, a pair) could not be processed. Raised
  as `ItemError(<code>, detail)` and stored in the stage table's `error` column with
  `status = "failed"`; the partition goes on.
- CANDIDATE reasons: why the pre-removal filters rejected an instance (`candidates.reject_reason`).
- SCORE reasons: why a removal candidate failed the filter scores (`removal_scores.reject_reason`,
  several joined with "+").

The README's "Reason codes" table is generated from the descriptions here (and a test checks it).
"""

from __future__ import annotations

# ---- item reasons (status = "failed", error = <code>)
IMAGE_MISSING = "image_missing"
IMAGE_UNREADABLE = "image_unreadable"
PATH_ESCAPES_ROOT = "path_escapes_root"
BAD_IMAGE = "bad_image"
MASK_MISSING = "mask_missing"
MASK_UNREADABLE = "mask_unreadable"
BAD_MASK = "bad_mask"
INVALID_MASK = "invalid_mask"
EMPTY_MASK = "empty_mask"
MASK_SIZE_MISMATCH = "mask_size_mismatch"
REMOVAL_SIZE_MISMATCH = "removal_size_mismatch"
PAIR_SIZE_MISMATCH = "pair_size_mismatch"
UPSTREAM_FAILED = "upstream_failed"
NO_CANDIDATES = "no_candidates"
NO_CATEGORY = "no_category"
NO_INSTRUCTION = "no_instruction"
EMPTY_DESCRIPTION = "empty_description"

ITEM_REASONS: dict[str, str] = {
    IMAGE_MISSING: "the image file named by the annotation (or a stage output) does not exist",
    IMAGE_UNREADABLE: "the image file exists but does not decode (corrupt, truncated, not an image)",
    PATH_ESCAPES_ROOT: "an annotation's file name is absolute or resolves outside the dataset root",
    BAD_IMAGE: "the decoded image is not HxWx3 uint8 (or has zero size)",
    MASK_MISSING: "the mask file (Open Images PNG, or a stage's mask) does not exist",
    MASK_UNREADABLE: "the mask file exists but does not decode",
    BAD_MASK: "the decoded mask is not a HxW array",
    INVALID_MASK: "the annotation's segmentation cannot be decoded (degenerate polygon, bad RLE, none)",
    EMPTY_MASK: "the mask decodes to zero pixels",
    MASK_SIZE_MISMATCH: "the mask's size differs from its image's",
    REMOVAL_SIZE_MISMATCH: "an inpainted candidate's size differs from the original's",
    PAIR_SIZE_MISMATCH: "a pair's object-removed and original images differ in size",
    UPSTREAM_FAILED: "the item failed in an earlier stage (that stage's row has the first reason)",
    NO_CANDIDATES: "an object reached scoring without any removal candidate",
    NO_CATEGORY: "the object has no class name to describe",
    NO_INSTRUCTION: "a training pair has no instruction text",
    EMPTY_DESCRIPTION: "the describer returned an empty text",
}

# ---- candidate reasons (candidates.kept = false, reject_reason = <code>)
IMAGE_SIZE_MISMATCH = "image_size_mismatch"
CROWD = "crowd"
EXCLUDED_CLASS = "excluded_class"
TOO_SMALL = "too_small"
TOO_LARGE = "too_large"
TOUCHES_BORDER = "touches_border"
LOW_CLASS_SIMILARITY = "low_class_similarity"

CANDIDATE_REASONS: dict[str, str] = {  # in the order the filters apply (the first that applies wins)
    PATH_ESCAPES_ROOT: ITEM_REASONS[PATH_ESCAPES_ROOT],
    IMAGE_MISSING: ITEM_REASONS[IMAGE_MISSING],
    IMAGE_UNREADABLE: ITEM_REASONS[IMAGE_UNREADABLE],
    IMAGE_SIZE_MISMATCH: "the image file's size differs from the annotated width/height",
    INVALID_MASK: ITEM_REASONS[INVALID_MASK],
    CROWD: "a crowd annotation (iscrowd = 1), dropped by `drop_crowd`",
    EXCLUDED_CLASS: "the class is in `excluded_classes`",
    TOO_SMALL: "mask area under `min_area_fraction` of the image",
    TOO_LARGE: "mask area over `max_area_fraction` of the image",
    TOUCHES_BORDER: "the box is within `border_margin_fraction` of an image edge (object cut off)",
    LOW_CLASS_SIMILARITY: "CLIP similarity of the isolated object to its class under `min_class_sim` "
    "(class_scores stage: a blurred or occluded view)",
}

# ---- score reasons (removal_scores.passed = false, reject_reason = <code>[+<code>...])
CONSENSUS_DISAGREEMENT = "consensus_disagreement"
OBJECT_STILL_PRESENT = "object_still_present"
BOUNDARY_MISMATCH = "boundary_mismatch"
EDIT_TOO_SMALL = "edit_too_small"
SMEARED_FILL = "smeared_fill"
HOLE_TOO_LARGE_FOR_INPAINTER = "hole_too_large_for_inpainter"

SCORE_REASONS: dict[str, str] = {
    HOLE_TOO_LARGE_FOR_INPAINTER: "the hole is wider than the removal method can fill "
    "(`<method>_max_hole_radius_px`); the candidate is not scored",
    CONSENSUS_DISAGREEMENT: "the K candidates disagree (consensus std above the maximum)",
    OBJECT_STILL_PRESENT: "clip: the region still looks like the class after removal",
    BOUNDARY_MISMATCH: "stats: the fill stands out from its surroundings",
    EDIT_TOO_SMALL: "the edit changes too little of the image",
    SMEARED_FILL: "stats: the fill is much smoother than its textured surroundings",
    "<column>_missing": "a score the decision needs is null",
}
