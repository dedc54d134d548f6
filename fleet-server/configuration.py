"""Configuration documents as plain data: layering, validation and the diff a preview shows.

No database here, so the rules can be read (and tested) on their own. A device's effective document
is the fleet's layer, then its group's, then its own, merged the way the agent merges a document
over its file (docs/protocol.md "config"): objects key by key, anything else (numbers, strings,
lists such as `cameras`) replaced whole; a top-level null means "not set by this layer". The server
merges the layers itself so that the box only ever sees one document and one version.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from polewatch.protocol import AgentSettings

Scope = Literal["fleet", "group", "device"]
SCOPES: tuple[Scope, ...] = ("fleet", "group", "device")
Document = dict[str, Any]


class ConfigInvalid(ValueError):
    """A document (a layer, or a device's merged result) that the agent would refuse.

    `field` is the first field at fault, dotted (`cameras.0.rules.1.labels`), as the agent names it
    in its refusal, so the operator sees the same words before publishing as the box would say after.
    """

    def __init__(self, field: str, problem: str, *, device_id: str | None = None) -> None:
        where = f"device {device_id}: " if device_id else ""
        super().__init__(f"{where}{field}: {problem}" if field else f"{where}{problem}")
        self.field = field
        self.problem = problem
        self.device_id = device_id


def merge(base: Document, over: Document) -> Document:
    """`over` laid on `base`: objects merge key by key, every other value replaces the base's."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def effective(layers: list[Document | None]) -> Document:
    """The layers, least specific first (fleet, group, device), merged; top-level nulls are unset."""
    out: Document = {}
    for layer in layers:
        if layer:
            out = merge(out, {k: v for k, v in layer.items() if v is not None})
    return out


def validate(document: Document, *, device_id: str | None = None) -> AgentSettings:
    """The document as the agent will read it; ConfigInvalid with the first field at fault."""
    try:
        return AgentSettings.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        problem = str(first["msg"]).removeprefix("Value error, ")
        if not field and ": " in problem:
            # Cross-field checks (rule labels against detect.labels) name their field in the text.
            field, _, problem = problem.partition(": ")
        raise ConfigInvalid(field, problem, device_id=device_id) from None


def canonical(document: Document) -> str:
    """One spelling per document, to tell whether a change changes anything."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Change:
    """One difference between two documents, at a dotted path (`detect.fps`, `cameras`)."""

    path: str
    before: Any
    after: Any


def diff(before: Document, after: Document, prefix: str = "") -> list[Change]:
    """Differences by path; objects are walked, other values (lists included) compared whole."""
    out: list[Change] = []
    for key in sorted(set(before) | set(after)):
        path = f"{prefix}{key}"
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out.extend(diff(old, new, f"{path}."))
        elif canonical({"v": old}) != canonical({"v": new}):
            out.append(Change(path, old, new))
    return out
