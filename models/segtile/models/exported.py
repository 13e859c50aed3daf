"""``torch.export`` archives (``.pt2``) as networks segtile runs, with their model card.

``torch.export.save(program, "model.pt2", extra_files={"card.json": card.to_json()})`` writes a
program segtile loads with its card; without ``card.json`` the card is made from the program's
input and output shapes (bands, classes; classes numbered, no normalisation).

An exported program says which input shapes it was traced for: each dimension is fixed (an
``int``) or a symbol with a range, possibly a derived one (``8*k + 1``, what PSPNet needs, with
``k`` from 2 to 256). :class:`ExportedNetwork` holds to them:

- a fixed batch size is met by running the batch in slices (the last one padded with zeros);
- a tile whose height or width the program does not take is refused in one line naming the sizes
  it takes (and the ``--tile-size`` to use); the card's tiling suggests one it takes: the fixed
  size, else the largest size up to 512 px, tiles of ``a*k + 1`` px with the network's alignment
  ``a`` (see :class:`~segtile.models.card.ModelCard`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import sympy
import torch
from torch import nn

from segtile.errors import CheckpointError, one_line
from segtile.models.card import ModelCard, default_card
from segtile.models.checkpoint import check_card_fits

CARD_FILE = "card.json"  # the extra file holding the card, as in TorchScript files
_PREFERRED_TILE = 512  # the card's tile size when the program takes any size up to it
_LARGEST = 1 << 20  # the bound of a symbol exported without one


@dataclass(frozen=True)
class Extent:
    """The sizes one input dimension takes: ``step * k + offset`` for ``k`` from ``lowest`` to
    ``highest`` (a fixed size: step 1, offset 0, ``lowest == highest``)."""

    step: int
    offset: int
    lowest: int
    highest: int

    @classmethod
    def fixed(cls, size: int) -> Extent:
        return cls(1, 0, size, size)

    @property
    def size(self) -> int | None:
        """The one size the dimension takes, or ``None`` when it takes several."""
        return self.offset + self.step * self.lowest if self.lowest == self.highest else None

    def takes(self, size: int) -> bool:
        """Whether the dimension takes ``size``."""
        k, rest = divmod(size - self.offset, self.step)
        return rest == 0 and self.lowest <= k <= self.highest

    @property
    def smallest(self) -> int:
        return self.step * self.lowest + self.offset

    def alignment(self) -> int:
        """``step`` for sizes ``step * k + 1`` (a lattice of ``step`` px, as PSPNet's), else 1."""
        return self.step if self.offset == 1 and self.size is None else 1

    def __str__(self) -> str:
        if self.size is not None:
            return str(self.size)
        return f"{self.smallest}, {self.smallest + self.step}, ... {self.step * self.highest + self.offset}"


class ExportedNetwork(nn.Module):
    """An exported program as a ``torch.nn.Module``: ``(N, bands, h, w)`` in, its
    ``(N, classes, h, w)`` logits out, the shapes it was exported for held to (see the module)."""

    def __init__(self, program: torch.export.ExportedProgram, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = os.path.abspath(path)
        self.network = program.module()
        self.batch, self.bands, self.height, self.width = _input_extents(program, path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        if not (self.height.takes(height) and self.width.takes(width)):
            raise CheckpointError(
                f"{self.path}: the exported program takes tiles of height {self.height} and width {self.width} px, "
                f"not {height}x{width}: use --tile-size {self.suggested_tile()} (Python: tile_size=)"
            )
        step = self.batch.size or batch
        outputs = [self.network(_padded_batch(x[start:start + step], step)) for start in range(0, batch, step)]
        return torch.cat(outputs)[:batch]

    def train(self, mode: bool = True) -> ExportedNetwork:
        """Set this module's flag only: an exported program runs as it was exported (its batch
        norms and dropouts in the mode they were traced in) and refuses ``train()`` itself."""
        self.training = mode
        return self

    def suggested_tile(self) -> int:
        """The largest square tile up to 512 px the program takes, else its smallest square tile."""
        limit = max(_PREFERRED_TILE, self.height.smallest, self.width.smallest)
        common = next((size for size in range(limit, 0, -1) if self.height.takes(size) and self.width.takes(size)),
                      None)
        if common is None:
            raise CheckpointError(f"{self.path}: the exported program takes no square tile (height {self.height}, "
                                  f"width {self.width} px)")
        return common

    def extra_repr(self) -> str:
        return f"path={self.path!r}"


def load_exported(path: str | os.PathLike) -> tuple[ExportedNetwork, ModelCard]:
    """The network of a ``.pt2`` archive and its card (``card.json``, else made from its shapes).

    Raises:
        CheckpointError: not an archive ``torch.export.load`` reads, or not one image input
            ``(N, bands, H, W)`` with a fixed band count.
        CardError: the card is malformed or disagrees with the program's bands or classes.
    """
    extra = {CARD_FILE: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:  # a damaged or foreign archive fails in many ways; report one line
        raise CheckpointError(f"{path}: not a torch.export archive torch can load ({one_line(exc)})") from None
    network = ExportedNetwork(program, path).eval()
    classes = _output_classes(program, path)
    if extra[CARD_FILE]:
        card = ModelCard.from_json(extra[CARD_FILE])
    else:
        tile = network.suggested_tile()
        card = replace(default_card(classes, network.bands.size), tile_size=tile, overlap=min(64, tile // 4),
                       alignment=network.height.alignment() if network.height.alignment() == network.width.alignment()
                       else 1)
    check_card_fits(card, classes, network.bands.size)
    return network, card


def _input_extents(program: torch.export.ExportedProgram, path: str | os.PathLike) -> tuple[Extent, ...]:
    """The extents of the program's one image input's four dimensions."""
    names = program.graph_signature.user_inputs
    if len(names) != 1:
        raise CheckpointError(f"{path}: the exported program takes {len(names)} inputs; segtile feeds one image batch")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == names[0])
    shape = node.meta["val"].shape
    if len(shape) != 4 or not isinstance(shape[1], int):
        raise CheckpointError(f"{path}: the exported program takes an input of shape {tuple(shape)}; segtile feeds "
                              "(N, bands, H, W) with a fixed band count")
    return tuple(_extent(dim, program.range_constraints, path) for dim in shape)


def _extent(dim: int | torch.SymInt, ranges: dict[Any, Any], path: str | os.PathLike) -> Extent:
    """The extent of a fixed dimension, or of a symbolic one ``step * k + offset``."""
    if isinstance(dim, int):
        return Extent.fixed(dim)
    expression = dim.node.expr
    symbols = expression.free_symbols
    polynomial = sympy.Poly(expression, *symbols) if len(symbols) == 1 else None
    if polynomial is None or polynomial.degree() != 1:
        raise CheckpointError(f"{path}: an input dimension of the exported program is {expression}; segtile runs "
                              "dimensions that are fixed or of the form step * k + offset")
    step, offset = (int(c) for c in polynomial.all_coeffs())
    found = ranges[next(iter(symbols))]
    return Extent(step, offset, int(found.lower), int(min(found.upper, _LARGEST)))


def _output_classes(program: torch.export.ExportedProgram, path: str | os.PathLike) -> int:
    """The class count of the program's first output, ``(N, classes, H, W)``."""
    output = next(n for n in program.graph.nodes if n.op == "output").args[0][0]
    shape = output.meta["val"].shape
    if len(shape) != 4 or not isinstance(shape[1], int):
        raise CheckpointError(f"{path}: the exported program gives an output of shape {tuple(shape)}; segtile needs "
                              "(N, classes, H, W) with a fixed class count")
    return shape[1]


def _padded_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` with zero tiles appended up to ``size`` tiles."""
    if len(x) == size:
        return x
    return torch.cat([x, x.new_zeros((size - len(x), *x.shape[1:]))])
