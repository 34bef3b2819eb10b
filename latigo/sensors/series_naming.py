"""How predictions are named as Time Series API series: the `naming` presets of the data_api sink.

- `latigo`: `{name_prefix}.{model}.{output}.{tag}` (`{name_prefix}.{model}.{output}` without a tag), e.g.
  `latigo.pump-a1.model-output.1903.R-29TT3018.MA_Y`; a model of a project other than the default one is
  `{name_prefix}.{project}.{model}.{output}.{tag}` (the same model name in two projects is two models).
  Read left to right, so a project, model or output group containing a "." would make two series share a
  name: such rows are not nameable.
- `prevent`: the names production latigo gave and the Metadata API ("Prevent") expects,
  `{tag}|{model}|{output}`, e.g. `1903.R-29TT3018.MA_Y|pump-a1|model-output`, and for an output without a
  tag of its own (total-anomaly-scaled, total-anomaly-confidence) `{asset}.INDICATOR|{model}|{output}`.
  A "|" inside a part is replaced by "-", so every part stays one part. The model part is the model's
  name, which Prevent issues unique across projects.

A name is chosen once per series and never rewritten: changing the preset starts new series under the new
names and leaves the old ones (and their history) as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from latigo.types import DEFAULT_PROJECT

PRESETS = ("latigo", "prevent")
SEPARATOR = "|"
INDICATOR = "INDICATOR"
"""Prevent's tag for an output that belongs to the model, not to one of its tags."""

DESCRIPTIONS = {
    "latigo": "Gordo prediction by latigo: model {model}, output {output}, tag {tag}",
    "prevent": "Gordo {output} - {tag}",
}
"""Each preset's description of a created series ({model}, {output}, {tag}, {name} are replaced)."""


def latigo_name(prefix: str, model: str, output: str, tag: str, project: str = DEFAULT_PROJECT) -> str:
    """The `latigo` preset's name of (model, output, tag); the project is named outside the default one."""
    parts = [prefix] if prefix else []
    if project and project != DEFAULT_PROJECT:
        parts.append(project)
    parts += [model, output]
    if tag:
        parts.append(tag)
    return ".".join(parts)


def latigo_nameable(model: str, output: str, project: str = DEFAULT_PROJECT) -> bool:
    """Whether rows of this model and output group get a `latigo` name no other (project, model, output, tag)
    gets."""
    return bool(model) and bool(output) and "." not in model and "." not in output and "." not in project


def tagless(output: str, tag: str) -> bool:
    """An output of the model as a whole: Gordo's JSON answer gives it no tag, its parquet answer the group's
    own name."""
    return not tag or tag == output


def asset_of(tags: Sequence[str]) -> str:
    """The asset of a model's tags, as production latigo read it: the part of the first tag before its first
    "." ("1903.R-29TT3018.MA_Y" -> "1903")."""
    for tag in tags:
        if tag:
            return tag.split(".", 1)[0]
    return ""


def _part(text: str) -> str:
    return text.replace(SEPARATOR, "-")


def prevent_name(model: str, output: str, tag: str, asset: str) -> str:
    """The `prevent` preset's name of (model, output, tag); `asset` names the tagless outputs."""
    subject = f"{asset}.{INDICATOR}" if tagless(output, tag) else tag
    return SEPARATOR.join(_part(part) for part in (subject, model, output))


@dataclass(frozen=True)
class SeriesNaming:
    """One preset with its options: the name of every (model, output, tag), or None when it has none."""

    preset: str = "latigo"
    prefix: str = "latigo"
    """`latigo` only: the first part of every name (empty: none)."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"series naming {self.preset!r} is not one of {', '.join(PRESETS)}")

    def name(self, model: str, output: str, tag: str, asset: str = "", project: str = DEFAULT_PROJECT) -> str | None:
        if self.preset == "prevent":
            if not model or not output or (tagless(output, tag) and not asset):
                return None
            return prevent_name(model, output, tag, asset)
        if not latigo_nameable(model, output, project):
            return None
        return latigo_name(self.prefix, model, output, tag, project)

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.preset]
