"""The fields of a config dataclass: validated, built from a plain mapping, described.

Every stage config calls `check_fields` in its `__post_init__`, so a bad value fails at once with
a `ConfigError` naming the class and the field; `config_from_dict` builds one from a `pbi.yaml`
section or a run config, naming unknown keys; `describe_fields` reads each field's name, type,
default and comment, for docs/configuration.md, the Dagster asset descriptions and the run
config's field descriptions.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
from typing import Any

from pbi_ml.errors import ConfigError


def check_fields(config, **rules) -> None:
    """Validate fields of a config dataclass; raises ConfigError naming the class and the field.

    rules: field=("positive" | "non_negative" | "fraction" | tuple of allowed values). None passes
    (an unset optional field); a list or tuple value passes when each of its items does."""
    name = type(config).__name__
    for field_name, rule in rules.items():
        value = getattr(config, field_name)
        for item in value if isinstance(value, (list, tuple)) else (value,):
            problem = _rule_problem(item, rule)
            if problem:
                raise ConfigError(f"{name}.{field_name}: {item!r} is not {problem}")


def _rule_problem(value, rule) -> str | None:
    """What `value` should be under `rule`, or None when it is that (or None)."""
    if value is None:
        return None
    if rule == "positive":
        ok, want = _is_number(value) and value > 0, "a number > 0"
    elif rule == "non_negative":
        ok, want = _is_number(value) and value >= 0, "a number >= 0"
    elif rule == "fraction":
        ok, want = _is_number(value) and 0 <= value <= 1, "a number in [0, 1]"
    else:
        ok, want = value in rule, f"one of {tuple(rule)}"
    return None if ok else want


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def config_from_dict(cls, values: dict[str, Any] | None):
    """Build a config dataclass from a plain dict, rejecting unknown keys by name."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; known: {sorted(names)}")
    for f in dataclasses.fields(cls):
        if f.name in values and isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    """One field of a config dataclass as a reader sees it."""

    name: str
    type: str  # as annotated: "float", "str | None", "tuple[str, ...]"
    default: str  # repr of the default; "required" when there is none
    doc: str  # the field's comment in the class: on its line(s) and the comment lines right above


def describe_fields(cls) -> list[FieldDoc]:
    """Every field of config dataclass `cls`: name, type, default and its comment in the source
    (so a field is documented where it is declared, once)."""
    comments = _field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = _default_text(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _default_text(f.default_factory())
        else:
            default = "required"
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", repr(f.type))
        out.append(FieldDoc(f.name, kind, default, comments.get(f.name, "")))
    return out


MAX_DEFAULT_CHARS = 160


def _default_text(value) -> str:
    """repr of a default; a config dataclass with its own defaults reads `K8sConfig()`, a long
    value is cut at MAX_DEFAULT_CHARS (its field's comment says where the whole value is)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and value == type(value)():
        return f"{type(value).__name__}()"
    text = repr(value)
    return text if len(text) <= MAX_DEFAULT_CHARS else text[: MAX_DEFAULT_CHARS - 3] + "..."


def _field_comments(cls) -> dict[str, str]:
    """field name -> its comments in the class body: the comment lines right above the field
    (no blank line between) and the comments on the field's own lines, joined."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    (node,) = ast.parse(source).body
    assert isinstance(node, ast.ClassDef)
    docs = {}
    for statement in node.body:
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        above = []
        line = statement.lineno - 1
        while line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        own = [
            comments[n]
            for n in range(statement.lineno, (statement.end_lineno or statement.lineno) + 1)
            if n in comments
        ]
        docs[statement.target.id] = "; ".join(part for part in (" ".join(above), " ".join(own)) if part)
    return docs


def fields_table(cls) -> str:
    """The fields of config dataclass `cls` as a markdown table: parameter, type, default, meaning."""
    rows = ["| parameter | type | default | meaning |", "|---|---|---|---|"]
    for f in describe_fields(cls):
        cells = (f"`{f.name}`", f"`{f.type}`", f"`{f.default}`", markdown_text(f.doc))
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def markdown_text(text: str) -> str:
    """`text` (a docstring or comment) safe in markdown: "<class>" outside `code` reads as text,
    not as an HTML tag."""
    parts = text.split("`")
    return "`".join(part if i % 2 else part.replace("<", "\\<") for i, part in enumerate(parts))


def stage_description(run, config_class: type, name: str) -> str:
    """A stage asset's description: its pbi_ml stage module's docstring (what the artifact is, which
    backends make it), then its parameters (type, default, meaning) as docs/configuration.md
    lists them, generated from the config dataclass, so a default is written in one place."""
    module = inspect.getdoc(inspect.getmodule(run)) or ""
    return (
        f"{module}\n\nParameters, set in pbi.yaml `stages.{name}` or the run config "
        f"(docs/configuration.md):\n\n{fields_table(config_class)}"
    )
