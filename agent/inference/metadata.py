"""The sidecar JSON that travels with every model file.

Everything a decoder needs to know about a model (input name and size, channel order, normalisation,
resize mode, head layout, class names) lives in `<model>.json` beside `<model>.onnx`, so that shipping
or bringing another model of a known family is a configuration change, not a code change.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ModelError

SIDECAR_SUFFIX = ".json"


class InputSpec(BaseModel):
    """How a BGR uint8 frame becomes the model's input.

    float32 NCHW (NanoDet, YOLO): `(pixel - mean) / std` per channel. uint8 NHWC (TF Object
    Detection API graphs, which normalise inside the graph): the resized pixels as they are, with
    mean and std unused.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "uint8"] = "float32"
    channel_order: Literal["BGR", "RGB"]
    # In the model's channel order (mean[0] is blue for a BGR model).
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # "letterbox" keeps the aspect ratio and pads; "stretch" resizes the frame to the input size.
    resize: Literal["letterbox", "stretch"] = "letterbox"
    pad_value: int = Field(default=114, ge=0, le=255)

    @field_validator("std")
    @classmethod
    def _std_positive(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError(f"every std must be > 0, got {value}")
        return value

    @model_validator(mode="after")
    def _known_combination(self) -> InputSpec:
        if (self.layout, self.dtype) not in (("NCHW", "float32"), ("NHWC", "uint8")):
            raise ValueError(
                f"input layout {self.layout} with dtype {self.dtype} is not supported: use NCHW float32 or NHWC uint8"
            )
        return self


class ModelMetadata(BaseModel):
    """One model's sidecar: what it is, where it came from, and how to feed and decode it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sidecar_version: Literal[1] = 1
    family: str = Field(min_length=1)
    name: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    input: InputSpec
    # Family-specific settings (e.g. NanoDet strides); each decoder validates its own.
    head: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(min_length=1)
    licence: str = Field(min_length=1)
    provenance: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, value: list[str]) -> list[str]:
        duplicates = sorted(label for label, count in Counter(value).items() if count > 1)
        if duplicates:
            raise ValueError(f"labels must be unique; repeated: {duplicates}")
        if any(not label for label in value):
            raise ValueError("labels must be non-empty strings")
        return value


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(SIDECAR_SUFFIX)


def load_metadata(path: Path) -> ModelMetadata:
    """Parse and validate a sidecar, turning every failure into a ModelError that names the file."""
    if not path.is_file():
        raise ModelError(
            f"model sidecar {path} is missing: every model needs a JSON file beside it describing its "
            "family, input and labels (see agent/inference/models/nanodet-m-416.json for an example)"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"model sidecar {path} cannot be read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"model sidecar {path} is not valid JSON: {exc}") from exc
    try:
        return ModelMetadata.model_validate(raw)
    except ValidationError as exc:
        raise ModelError(f"model sidecar {path} is invalid: {_summarise(exc)}") from exc


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _summarise(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
