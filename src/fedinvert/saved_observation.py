"""The metadata of a saved observation (``observation.safetensors``), checked with pydantic on reading.

Apart from `fedinvert.observation` so that a run which reads no observation file does not build these
models (docs/speed.md, "Fixed cost").
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, NonNegativeInt, PositiveInt, ValidationError

from fedinvert.errors import CheckpointError

_PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    # JSON types as written (no "1" for 1, no 1.0 for an integer, no true for a number); unknown keys refused
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class SavedModel(BaseModel):
    """The victim's registry name and its options (checked by `fedinvert.models.build_model`)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    name: str


class SavedLocalTraining(_Strict):
    """`LocalTraining` as saved: epochs and batch size ≥ 1, learning rate > 0, momentum in [0, 1)."""

    epochs: PositiveInt
    batch_size: PositiveInt
    lr: _PositiveFinite
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    shuffle_seed: NonNegativeInt | None = None


class SavedDefense(_Strict):
    """A declared defence: its registry name and public parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ObservationMetadata(_Strict):
    """The ``fedinvert`` metadata of an ``observation.safetensors`` file: everything of an `Observation`
    but its tensors (the update, the model's weights and buffers, the granted labels).

    Attributes:
        model: the victim's name and options.
        model_training: the mode (train or eval) the client ran the victim in.
        kind: ``gradient`` or ``weight_delta``.
        image_shape: (C, H, W) of the client's inputs, each ≥ 1.
        num_classes: size of the label space, ≥ 2.
        normalization: (mean, std) per channel; stds > 0, all finite.
        batch_size: number of private images (≥ 1), or None when the threat model hid it.
        loss: the client's loss.
        local_training: FedAvg hyper-parameters, if the server knew them.
        defenses: the declared defences.
        data: where the private batch came from (data set, split, indices, ...), for evaluation only.
    """

    model: SavedModel
    model_training: bool
    kind: Literal["gradient", "weight_delta"]
    image_shape: tuple[PositiveInt, PositiveInt, PositiveInt]
    num_classes: Annotated[int, Field(ge=2)]
    normalization: tuple[list[FiniteFloat], list[_PositiveFinite]]
    batch_size: PositiveInt | None
    loss: Literal["cross_entropy"] = "cross_entropy"
    local_training: SavedLocalTraining | None = None
    defenses: list[SavedDefense] = Field(default_factory=list)
    data: dict[str, Any] | None = None

    @classmethod
    def read(cls, text: str | bytes, *, source: str) -> ObservationMetadata:
        """Validate the metadata JSON ``text``; CheckpointError naming ``source`` and the first bad field."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as err:
            first = err.errors()[0]
            field_name = ".".join(str(part) for part in first["loc"]) or "(top level)"
            more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
            given = "" if first["type"] in ("missing", "json_invalid") else f", got {_short(first.get('input'))}"
            raise CheckpointError(
                f"{source}: metadata field {field_name}: {first['msg'].lower()}{given}{more}"
            ) from None


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."

