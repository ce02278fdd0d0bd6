"""The facts every part of deepergat shares, written once (docs/design.md §4, §5, §8, §9, §11).

The model's element table, the graph and screening defaults (checks, chunk size, how the top K
are ranked), the model's inputs and outputs
(names, dtypes, dynamic axes), the status codes and flags of predictions files, and the
registry of exported-file formats. Numpy only, no torch: the screening path, the exported-file
readers and the CLI import it alike. Other modules import these names from here (some re-export
them where they always lived); nothing restates a value.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import PurePosixPath
from typing import Literal, get_args

import numpy as np

__all__ = [
    "CHECKPOINT_KIND",
    "COMPOSITION_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CUTOFF",
    "DEFAULT_GRAPH",
    "DEFAULT_GROUP_SECONDS",
    "DEFAULT_MATCH_TOL",
    "DEFAULT_MAX_ATOMS",
    "DEFAULT_MAX_NEIGHBORS",
    "DEFAULT_OVERLAP_THRESHOLD",
    "DEFAULT_RANK_BY",
    "DEFAULT_RANK_K",
    "DEFAULT_RANK_ORDER",
    "DYNAMIC_AXES",
    "ENSEMBLE_OUTPUT_NAMES",
    "FLAG_TRANSLATIONS_UNTESTED",
    "FLAG_UNSEEN_ELEMENT",
    "GRAPH_CONSTRUCTIONS",
    "INPUT_DTYPES",
    "INPUT_NAMES",
    "INPUT_NDIM",
    "MAX_ARCHIVE_EXPANSION",
    "MAX_ARCHIVE_MEMBER_BYTES",
    "MAX_ATOM_CANDIDATES",
    "MAX_STRUCTURE_CANDIDATES",
    "MAX_TRANSLATION_ATOMS",
    "MAX_Z",
    "MODEL_FORMATS",
    "OUTPUT_NAMES",
    "RANK_BY",
    "RANK_ORDERS",
    "STATUS_CODES",
    "TIE_ALLOWANCE",
    "TRANSLATION_TOLERANCE",
    "GraphConstruction",
    "ModelFormat",
    "RankBy",
    "RankOrder",
    "Status",
    "max_degree",
    "translation_rule",
]

#: The model's element table is Z = 1..MAX_Z; other elements are screened out (status 3).
MAX_Z = 100
#: Width of the composition vector (position Z holds element Z's fraction), as the reference.
COMPOSITION_SIZE = 108

# ---- graphs (docs/design.md §4) ------------------------------------------------------------

DEFAULT_CUTOFF = 8.0
DEFAULT_MAX_NEIGHBORS = 12
#: How the neighbors are chosen (`deepergat.graphs`).
GraphConstruction = Literal["periodic", "minimum-image"]
GRAPH_CONSTRUCTIONS: tuple[str, ...] = get_args(GraphConstruction)
DEFAULT_GRAPH: GraphConstruction = "periodic"
#: Two atoms of the same element farther apart than this (Å) after a candidate translation
#: break it: the translation is not a symmetry of the crystal (minimum-image graphs count
#: atoms related by a pure translation once). pymatgen's default for primitive cells; a
#: supercell whose atoms moved a few hundredths of an Å (benchmarks/supercell_check.py
#: --jitter 0.03) still predicts as its cell.
TRANSLATION_TOLERANCE = 0.25
#: Structures with more atoms are not tested for translations (their minimum-image graph is
#: the plain one): the test costs O(n²) per translation, and minimum-image models are for small
#: primitive cells.
MAX_TRANSLATION_ATOMS = 256


# ---- files read from outside (docs/design.md §13) -------------------------------------------

#: Most bytes one member of an archive (a structure file in a zip or tar, a record of a
#: ``torch.save`` sample file) may decode to, declared or as read.
MAX_ARCHIVE_MEMBER_BYTES = 64 << 20
#: Most bytes an archive may decode to per byte of archive, once past
#: `MAX_ARCHIVE_MEMBER_BYTES`: deflate cannot pass 1,032 to 1 and a tar.gz of thousands of
#: near-identical CIFs expands about 140 to 1, so only bombs (and bzip2/xz-compressed ones)
#: meet it.
MAX_ARCHIVE_EXPANSION = 200

# The neighbor search's bounds, decided from the lattice and the atom count before it allocates
# (docs/design.md §4, §13). Around each atom the search enumerates, for every atom of the
# structure, the lattice images n with |Δf_k + n_k| ≤ cutoff·|b_k| on each periodic axis k
# (b_k the reciprocal vector): at most ∏_k (⌊2·cutoff·|b_k|⌋ + 1) images per atom pair, the
# lattice points of the box around the cutoff sphere. A cell vector far shorter than the
# cutoff makes that count explode (as 1/a per short axis), so the bounds below give such a
# structure status 8 before anything is allocated.

#: Candidates (atom, image) one atom's search may enumerate: atoms × images per pair. Bounds
#: the search's buffers (≈ 50 bytes a candidate: ≤ 100 MB for one atom); an ordinary crystal
#: needs ≤ ~3·10⁴ even at the largest cutoff (30 Å).
MAX_ATOM_CANDIDATES = 1 << 20
#: Candidates (atom pair, image) of one structure: atoms² × images per pair. Bounds the
#: search's time: at the bound the compiled searches took ≤ 0.6 s (periodic) and ≤ 1.5 s
#: (minimum-image, 8,192 atoms) of CPU time; a crystal of 1,000 atoms needs ≤ ~3·10⁷ at
#: the 8 Å default cutoff, and a molecule passes up to 8,192 atoms.
MAX_STRUCTURE_CANDIDATES = 1 << 26
#: Ties past the ``max_neighbors``-th neighbor are kept (docs/design.md §4) up to
#: `max_degree`: 2 · max_neighbors + this many neighbors per atom; an atom keeping more gives
#: status 9. The largest tied shells of the cubic, hexagonal and perovskite lattices add at
#: most 64 neighbors at up to 256 (and at most 20 at 12).
TIE_ALLOWANCE = 48


def max_degree(max_neighbors: int) -> int:
    """The most neighbors (ties included, self loop not) an atom may keep (`TIE_ALLOWANCE`)."""
    return 2 * int(max_neighbors) + TIE_ALLOWANCE


def translation_rule(construction: str) -> dict[str, float | int]:
    """The translation rule a graph construction's metadata records (docs/design.md §4):
    ``translation_tolerance`` (Å) and ``translation_max_atoms`` for minimum-image graphs,
    nothing for periodic ones (which merge no atoms)."""
    if construction != "minimum-image":
        return {}
    return {"translation_tolerance": TRANSLATION_TOLERANCE,
            "translation_max_atoms": MAX_TRANSLATION_ATOMS}

# ---- screening checks (docs/design.md §9) --------------------------------------------------

DEFAULT_MAX_ATOMS = 1000
#: Å; two atoms closer than this give status 6.
DEFAULT_OVERLAP_THRESHOLD = 0.1

# ---- screening runs and the top K (docs/design.md §9, §11) ---------------------------------

#: Structures per chunk: the unit of work, commit and resume of a screen.
DEFAULT_CHUNK_SIZE = 2048
#: ``asc``: the lowest key first; ``desc``: the highest first.
RankOrder = Literal["asc", "desc"]
RANK_ORDERS: tuple[str, ...] = get_args(RankOrder)
DEFAULT_RANK_ORDER: RankOrder = "asc"
#: The ranking key: the prediction, or an ensemble's bound mean - k·std / mean + k·std.
RankBy = Literal["mean", "lower", "upper"]
RANK_BY: tuple[str, ...] = get_args(RankBy)
DEFAULT_RANK_BY: RankBy = "mean"
#: k of the ``lower``/``upper`` bound, in calibrated standard deviations.
DEFAULT_RANK_K = 1.0
#: pymatgen StructureMatcher's own tolerances (ltol, stol, angle_tol in degrees): two
#: candidates within them are one crystal on a short list.
DEFAULT_MATCH_TOL = (0.2, 0.3, 5.0)
#: Seconds a short list may spend grouping rows before the rest stay ungrouped.
DEFAULT_GROUP_SECONDS = 600.0

# ---- the model's inputs and outputs (docs/design.md §5) ------------------------------------

INPUT_NAMES = (
    "atomic_numbers",
    "neighbors",
    "distances",
    "neighbor_mask",
    "crystal_atoms",
    "crystal_mask",
    "batch",
)
INPUT_DTYPES: dict[str, np.dtype] = {
    "atomic_numbers": np.dtype(np.int64),
    "neighbors": np.dtype(np.int64),
    "distances": np.dtype(np.float32),
    "neighbor_mask": np.dtype(np.bool_),
    "crystal_atoms": np.dtype(np.int64),
    "crystal_mask": np.dtype(np.bool_),
    "batch": np.dtype(np.int64),
}
#: input -> {axis: size name}: N atoms, K neighbor slots, C crystals, A atoms of the largest.
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "atomic_numbers": {0: "N"},
    "neighbors": {0: "N", 1: "K"},
    "distances": {0: "N", 1: "K"},
    "neighbor_mask": {0: "N", 1: "K"},
    "crystal_atoms": {0: "C", 1: "A"},
    "crystal_mask": {0: "C", 1: "A"},
    "batch": {0: "N"},
}
INPUT_NDIM: dict[str, int] = {name: len(axes) for name, axes in DYNAMIC_AXES.items()}
OUTPUT_NAMES = ("prediction", "embedding")
#: An ensemble's outputs: the single model's two, then the calibrated spread [C, T].
ENSEMBLE_OUTPUT_NAMES = (*OUTPUT_NAMES, "std")

# ---- status codes and flags (docs/design.md §9) --------------------------------------------


class Status(IntEnum):
    """Per-structure status of a prediction (docs/design.md §9). The first failing check wins,
    in the order 1–5, 8 (before the search), 6, 9 (from the search), 7 (the prediction); 10
    marks a structure that failed for memory even alone, whatever it would have got."""

    OK = 0
    ZERO_ATOMS = 1
    TOO_MANY_ATOMS = 2
    UNKNOWN_ELEMENT = 3
    NONFINITE_COORDINATES = 4
    SINGULAR_LATTICE = 5
    OVERLAP = 6
    NONFINITE_PREDICTION = 7
    TOO_MANY_IMAGES = 8
    TOO_MANY_TIES = 9
    OUT_OF_MEMORY = 10

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    Status.OK: "ok",
    Status.ZERO_ATOMS: "zero atoms",
    Status.TOO_MANY_ATOMS: "more atoms than --max-atoms",
    Status.UNKNOWN_ELEMENT: "element outside the model's table",
    Status.NONFINITE_COORDINATES: "non-finite coordinates",
    Status.SINGULAR_LATTICE: "singular or non-finite lattice vectors on the periodic axes",
    Status.OVERLAP: "two atoms closer than --overlap-threshold",
    Status.NONFINITE_PREDICTION: "non-finite prediction",
    Status.TOO_MANY_IMAGES: "too many periodic images within the cutoff",
    Status.TOO_MANY_TIES: "an atom with more tied neighbors than the graph keeps",
    Status.OUT_OF_MEMORY: "out of memory even alone",
}
#: code -> meaning, as predictions files store it (``status_codes``).
STATUS_CODES: dict[int, str] = {int(s): s.meaning for s in Status}
#: ``flags`` bit 0: the structure has an element the model never saw in training.
FLAG_UNSEEN_ELEMENT = 1
#: ``flags`` bit 1: a minimum-image model's structure with more atoms than the model's
#: ``translation_max_atoms`` whose element counts share a divisor: it may be a supercell, but
#: was not tested for pure translations, so it predicts as the cell it is given, not as its
#: primitive cell (docs/design.md §4).
FLAG_TRANSLATIONS_UNTESTED = 2

# ---- exported-file formats (docs/design.md §8) ---------------------------------------------


@dataclass(frozen=True)
class ModelFormat:
    """One model file format.

    Attributes:
        name: the ``--format`` name. file: the file `deepergat export` writes.
        suffix: the suffix loaders accept. kind: the metadata ``kind`` (content check).
        runs_code: loading it runs code from the file (needs ``trust``).
        in_all: part of ``--format all``.
        trust_note: what the file is, where loading it runs code (messages and help).
    """

    name: str
    file: str
    suffix: str
    kind: str
    runs_code: bool
    in_all: bool
    trust_note: str = ""

    @property
    def extension(self) -> str:
        """The whole extension of `file` (``.aoti.pt2``; `suffix` is what loaders check)."""
        return "".join(PurePosixPath(self.file).suffixes)


#: Every exported format, in ``--format all`` order then the others.
MODEL_FORMATS: dict[str, ModelFormat] = {f.name: f for f in (
    ModelFormat("onnx", "model.onnx", ".onnx", "deepergat-onnx", runs_code=False, in_all=True),
    ModelFormat("torchscript", "model.pt", ".pt", "deepergat-torchscript", runs_code=True,
                in_all=True, trust_note="a TorchScript program (its code runs when it loads)"),
    ModelFormat("pt2", "model.pt2", ".pt2", "deepergat-pt2", runs_code=False, in_all=True),
    ModelFormat("aoti", "model.aoti.pt2", ".pt2", "deepergat-aoti", runs_code=True,
                in_all=False,
                trust_note="an AOTInductor package (compiled native code that runs when it loads)"),
)}
#: The ``kind`` of a training checkpoint (``.ckpt``), the one model file that is not exported.
CHECKPOINT_KIND = "deepergat-checkpoint"
