"""Descriptions of removed objects (docs/method.md#descriptions). Importing this loads no torch."""

from pbi_ml.describe.base import (
    DESCRIBE_BACKENDS,
    PAPER_PROMPT,
    DescribeConfig,
    DescribeItem,
    Describer,
    make_describer,
    masked_object_view,
)

__all__ = [
    "DESCRIBE_BACKENDS",
    "PAPER_PROMPT",
    "DescribeConfig",
    "DescribeItem",
    "Describer",
    "make_describer",
    "masked_object_view",
]
