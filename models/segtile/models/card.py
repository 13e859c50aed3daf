"""The model card: what a network expects as input and what its outputs mean.

The card travels inside every checkpoint (and as ``card.json`` inside TorchScript files), so a
mask can always be coloured, named and normalised exactly as the network was trained.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from segtile.errors import CardError

_HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")

# A palette for cards that name no colours: distinct, readable on imagery (Tableau 10, then grey).
_DEFAULT_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)


TTA_MODES = (None, "flip", "d4")
_UNITS = {"m": "m", "um": "µm"}  # resolution_unit -> how a summary writes it


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to feed a network and to read its output.

    Attributes:
        classes: class names, one per output channel.
        colors: one ``"#rrggbb"`` colour per class (used for palettes and legends).
        bands: 1-based indices of the source bands to read, in the order the network wants
            them; ``None`` means "the first ``in_channels`` bands".
        in_channels: how many bands the network takes.
        mean, std: per-band normalisation applied after dividing by ``scale``.
        scale: pixel values are divided by this first (255 for 8-bit imagery).
        resolution: native pixel size the network was trained at, or ``None``.
        resolution_unit: ``"m"`` (metres per pixel, rasters) or ``"um"`` (µm per pixel, slides).
        resolution_range: ``(smallest, largest)`` pixel sizes, in ``resolution_unit``, the network
            serves as they are (a network trained on images of several pixel sizes, or with scale
            augmentation); ``None``: only ``resolution``. Images inside it run on their own grid
            (see :mod:`segtile.sources.working_grid`).
        tile_size, overlap: suggested tiling for inference.
        alignment: the network's logits line up pixel for pixel from one tile to the next only
            when tiles start at multiples of ``alignment`` pixels and are ``k * alignment +
            tile_extra`` pixels wide (PSPNet: 8, for its ``align_corners=True`` upsampling from
            stride 8; a patch classifier: its patch size); 1 for networks that take any size and
            offset.
        tile_extra: 1 (tiles of ``k * alignment + 1`` px: PSPNet's features sit on the corners of
            its 8 px cells) or 0 (tiles of whole cells: a patch classifier's patches).
        tta: the test-time augmentation the network was evaluated with (``"flip"``, ``"d4"``),
            suggested to the tiler; ``None`` for none.
    """

    classes: tuple[str, ...]
    colors: tuple[str, ...] = ()
    in_channels: int = 3
    bands: tuple[int, ...] | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    scale: float = 1.0
    resolution: float | None = None
    resolution_unit: str | None = None
    resolution_range: tuple[float, float] | None = None
    tile_size: int = 512
    overlap: int = 64
    alignment: int = 1
    tile_extra: int = 1
    tta: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("classes", "colors"):
            if isinstance(getattr(self, name), str):
                raise CardError(f"model card: '{name}' must be a list of strings, not one string")
        set_(self, "classes", tuple(str(c) for c in self.classes))
        if not self.colors:
            set_(self, "colors", default_colours(len(self.classes)))
        set_(self, "colors", tuple(str(c) for c in self.colors))
        if self.bands is not None:
            set_(self, "bands", tuple(int(b) for b in self.bands))
        if not self.mean:
            set_(self, "mean", (0.0,) * self.in_channels)
        if not self.std:
            set_(self, "std", (1.0,) * self.in_channels)
        set_(self, "mean", tuple(float(m) for m in self.mean))
        set_(self, "std", tuple(float(s) for s in self.std))
        set_(self, "scale", float(self.scale))
        if self.resolution_range is not None:
            set_(self, "resolution_range", _range(self.resolution_range))
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def validate(self) -> None:
        """Raise :class:`CardError` naming the first inconsistency found."""
        if not self.classes:
            raise CardError("model card: 'classes' is empty")
        if len(self.colors) != len(self.classes):
            raise CardError(
                f"model card: {len(self.colors)} colours for {len(self.classes)} classes"
            )
        bad = [c for c in self.colors if not _HEX_COLOUR.match(c)]
        if bad:
            raise CardError(f"model card: colour {bad[0]!r} is not of the form '#rrggbb'")
        if self.in_channels < 1:
            raise CardError("model card: 'in_channels' must be at least 1")
        if self.bands is not None:
            if len(self.bands) != self.in_channels:
                raise CardError(
                    f"model card: {len(self.bands)} band indices for {self.in_channels} input channels"
                )
            if min(self.bands) < 1:
                raise CardError("model card: band indices are 1-based and must be >= 1")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != self.in_channels:
                raise CardError(
                    f"model card: {len(values)} '{name}' values for {self.in_channels} input channels"
                )
        for name, values in (("mean", self.mean), ("std", self.std), ("scale", (self.scale,))):
            bad = next((value for value in values if not math.isfinite(value)), None)
            if bad is not None:
                raise CardError(f"model card: '{name}' holds {bad}: normalising pixels needs finite numbers")
        if any(s == 0 for s in self.std):
            raise CardError("model card: 'std' values must be non-zero")
        if self.scale == 0:
            raise CardError("model card: 'scale' must be non-zero")
        if self.resolution is not None and not 0 < self.resolution < math.inf:
            raise CardError(f"model card: 'resolution' must be a positive number, not {self.resolution}")
        if self.resolution_unit not in (None, "m", "um"):
            raise CardError("model card: 'resolution_unit' must be 'm' or 'um'")
        self._validate_range()
        if self.tile_size < 1 or self.overlap < 0 or self.overlap >= self.tile_size:
            raise CardError("model card: need tile_size >= 1 and 0 <= overlap < tile_size")
        if not isinstance(self.alignment, int) or self.alignment < 1:
            raise CardError("model card: 'alignment' must be a positive integer")
        if self.tile_extra not in (0, 1) or isinstance(self.tile_extra, bool):
            raise CardError("model card: 'tile_extra' must be 0 or 1")
        if self.tta not in TTA_MODES:
            raise CardError(f"model card: 'tta' must be one of {', '.join(str(m) for m in TTA_MODES)}")

    def _validate_range(self) -> None:
        """The resolution range: two positive sizes in order, with a unit, holding ``resolution``."""
        if self.resolution_range is None:
            return
        smallest, largest = self.resolution_range
        if not 0 < smallest <= largest < float("inf"):
            raise CardError("model card: 'resolution_range' must be [smallest, largest], two positive numbers")
        if self.resolution_unit is None:
            raise CardError("model card: 'resolution_range' needs a 'resolution_unit' ('m' or 'um')")
        if self.resolution is not None and not smallest <= self.resolution <= largest:
            raise CardError(f"model card: 'resolution' {self.resolution:g} lies outside 'resolution_range' "
                            f"[{smallest:g}, {largest:g}]")

    def summary(self) -> str:
        """One line saying what the network does and what it takes: its description (the
        ``description`` extra field) when the card has one, its classes, bands, pixel size and tiling."""
        names = self.extra.get("band_names")
        bands = f"{self.in_channels} band(s)" + (f" ({', '.join(map(str, names))})" if names else "")
        parts = [f"{self.num_classes} classes ({', '.join(self.classes)})", bands]
        if self.resolution is not None:
            parts.append(f"{self.resolution:g} {_UNITS[self.resolution_unit or 'm']} per pixel")
        parts.append(f"tiles of {self.tile_size} px overlapping by {self.overlap}")
        description = self.extra.get("description")
        return "; ".join([str(description)] * bool(description) + parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists, not tuples)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Build a card from a dict (a checkpoint's card, or a TorchScript ``card.json``).

        Accepts the ``card.json`` spellings too: ``bands`` as a count or as a list of 1-based
        band indices, ``mpp`` (µm/px) or ``resolution`` (m/px).
        """
        data = dict(data)
        if "classes" not in data:
            raise CardError("model card: field 'classes' is missing")
        known = set(cls.__dataclass_fields__)
        if "mpp" in data:
            data["resolution"] = data.pop("mpp")
            data["resolution_unit"] = "um"
        elif (data.get("resolution") is not None or data.get("resolution_range") is not None) \
                and "resolution_unit" not in data:
            data["resolution_unit"] = "m"
        bands = data.get("bands")
        if isinstance(bands, int) and not isinstance(bands, bool):
            data["in_channels"] = bands
            data["bands"] = None
        elif isinstance(bands, Sequence) and not isinstance(bands, str):
            data.setdefault("in_channels", len(bands))
        elif bands is not None:
            raise CardError("model card: 'bands' must be a count or a list of band indices")
        if "in_channels" not in data and data.get("mean"):
            data["in_channels"] = len(data["mean"])
        extra = {k: v for k, v in data.items() if k not in known}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["extra"] = {**(kwargs.get("extra") or {}), **extra}
        try:
            return cls(**kwargs)
        except CardError:
            raise
        except (TypeError, ValueError) as exc:  # a field of the wrong type, e.g. classes=3
            raise CardError(f"model card: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CardError(f"model card: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise CardError("model card: expected a JSON object")
        return cls.from_dict(data)


def _range(values: Any) -> tuple[float, float]:
    """``[smallest, largest]`` as a pair of floats (checked by :meth:`ModelCard.validate`)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 2:
        raise CardError("model card: 'resolution_range' must be [smallest, largest], two positive numbers")
    try:
        return float(values[0]), float(values[1])
    except (TypeError, ValueError):
        raise CardError("model card: 'resolution_range' must be [smallest, largest], two positive numbers") from None


def default_colours(count: int) -> tuple[str, ...]:
    """``count`` distinct colours, cycling a fixed palette."""
    return tuple(_DEFAULT_COLOURS[i % len(_DEFAULT_COLOURS)] for i in range(count))


def default_card(num_classes: int, in_channels: int) -> ModelCard:
    """The card given to a network that brings none: no normalisation, classes numbered."""
    return ModelCard(
        classes=tuple(f"class_{i}" for i in range(num_classes)),
        in_channels=in_channels,
    )


def bands_by_name(image_names: Sequence[str], names: Sequence[str]) -> list[int] | None:
    """The 1-based positions in ``image_names`` (an image's band names) of ``names`` (those a
    card's model was trained on), in the order of ``names``, compared without case (``NIR`` is
    ``nir``); ``None`` unless each name is found on exactly one band."""
    image = [str(name).casefold() for name in image_names]
    wanted = [str(name).casefold() for name in names]
    if not wanted or any(image.count(name) != 1 for name in wanted):
        return None
    return [image.index(name) + 1 for name in wanted]
