"""Run config (dg.Config) for each stage, derived from the pbi_ml stage dataclasses.

Every field is optional: left empty, the value comes from pbi.yaml's `stages:` section, else from
the dataclass default (the paper's recipe). The UI's launchpad shows each field with its default.
"""

from __future__ import annotations

import typing

import dagster as dg
from pydantic import Field, create_model

from pbi_ml.config.fields import describe_fields


def stage_run_config(name: str, cls, extra: dict | None = None) -> type[dg.Config]:
    """A dg.Config whose fields mirror dataclass `cls`, all optional (None = not set here)."""
    hints = typing.get_type_hints(cls)
    fields = dict(extra or {})
    for f in describe_fields(cls):
        hint = hints[f.name]
        if typing.get_origin(hint) is tuple:
            hint = list[str]
        description = "; ".join(part for part in (f"default: {f.default}", f.doc) if part)
        fields[f.name] = (hint | None, Field(default=None, description=description))
    return create_model(name, __base__=dg.Config, **fields)
