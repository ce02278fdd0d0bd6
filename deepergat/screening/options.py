"""What a screen is asked to do: `ScreenOptions`, its settings grouped by concern.

Each group is a small frozen dataclass whose fields are the settings' own names — the names
`ScreenOptions.create` takes and `deepergat.errors.SettingError` messages use (the screen
command maps each to its flag: ``max_atoms`` → ``--max-atoms``, ``resume`` → ``--no-resume``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from deepergat.contract import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_ATOMS,
    DEFAULT_OVERLAP_THRESHOLD,
    DEFAULT_RANK_BY,
    DEFAULT_RANK_K,
    DEFAULT_RANK_ORDER,
    RANK_BY,
    RANK_ORDERS,
    RankBy,
    RankOrder,
)
from deepergat.errors import SettingError
from deepergat.io.matching import MatchTolerance
from deepergat.system.devices import DEFAULT_DEVICE

from .failures import literal
from .shortlist import DEFAULT_GROUP_SECONDS, ListSettings

__all__ = [
    "Files",
    "PredictorSettings",
    "Ranking",
    "RunControl",
    "ScreenOptions",
    "StructureChecks",
    "default_output",
    "top_csv_path",
]


def default_output(input_path: str | os.PathLike[str]) -> Path:
    """``<input stem>.predictions.h5`` beside the input."""
    p = Path(input_path)
    return p.with_name(p.stem + ".predictions.h5")


def top_csv_path(output: str | os.PathLike[str]) -> Path:
    """``<output stem>.top.csv`` beside the output."""
    p = Path(output)
    return p.with_name(p.stem + ".top.csv")


@dataclass(frozen=True)
class Files:
    """Input and output.

    Attributes:
        input: the structure store (``deepergat pack``).
        output: the predictions file [default: `default_output` of the input; with
            ``from_predictions``, ``<its stem>.rescored.h5``].
        embeddings: also store the [M, D] crystal embeddings.
        from_predictions: screen only rows chosen from this earlier predictions file of the
            same store (a funnel: a fast model's screen feeds a slower model).
        from_top: with ``from_predictions``: its K best rows (the raw ranking, this run's
            ``top_order``).
        from_where: with ``from_predictions``: its rows where this ``where`` holds.
    """

    input: Path
    output: Path | None = None
    embeddings: bool = False
    from_predictions: Path | None = None
    from_top: int | None = None
    from_where: str | None = None

    @property
    def output_path(self) -> Path:
        """The predictions file this run writes."""
        if self.output:
            return Path(self.output)
        if self.from_predictions is not None:
            src = Path(self.from_predictions)
            return src.with_name(src.stem + ".rescored.h5")
        return default_output(self.input)

    def check(self) -> None:
        """Raises `SettingError` for a subset that cannot be chosen."""
        chosen = self.from_top is not None or self.from_where is not None
        if self.from_predictions is None and chosen:
            raise SettingError("{from_top} and {from_where} choose rows of an earlier screen: "
                               "give {from_predictions} PRED.h5")
        if self.from_predictions is not None and not chosen:
            raise SettingError("{from_predictions} screens rows chosen from an earlier screen: "
                               "give {from_top} N and/or {from_where} EXPR")
        if self.from_top is not None and (isinstance(self.from_top, bool) or self.from_top < 1):
            raise SettingError(f"{{from_top}} must be at least 1, got {self.from_top}")


#: Whether a CPU screen first compiles its model for this machine (`deepergat.screening.compiling`).
CompileChoice = Literal["auto", "yes", "no"]


@dataclass(frozen=True)
class PredictorSettings:
    """The model and where it runs.

    Attributes:
        model: a model file, run folder or bundled name (None: the default bundled model).
        device: ``auto``, ``cpu`` or ``cuda`` (`deepergat.system.devices.pick_device`).
        trust: load a model file whose loading runs code (`deepergat.export.load`).
        compile: on the CPU, compile the ``.onnx`` model's checkpoint for this machine first
            when it is not compiled yet (`deepergat.screening.compiling`): ``auto`` when the run
            computes enough structures to pay for it, ``yes`` always, ``no`` never.
    """

    model: str | None = None
    device: str = DEFAULT_DEVICE
    trust: bool = False
    compile: CompileChoice = "auto"

    def check(self) -> None:
        if self.compile not in get_args(CompileChoice):
            raise SettingError(f"{{compile}} must be one of {', '.join(get_args(CompileChoice))},"
                               f" got {literal(repr(self.compile))}")


@dataclass(frozen=True)
class StructureChecks:
    """The status checks every structure meets before the model.

    Attributes:
        max_atoms: status 2 above this many atoms.
        overlap_threshold: status 6 for two atoms closer than this, Å.
    """

    max_atoms: int = DEFAULT_MAX_ATOMS
    overlap_threshold: float = DEFAULT_OVERLAP_THRESHOLD

    def check(self) -> None:
        """Raises `SettingError` for a value no screen can use."""
        if self.max_atoms < 1:
            raise SettingError(f"{{max_atoms}} must be at least 1, got {self.max_atoms}")
        if not self.overlap_threshold >= 0:
            raise SettingError(
                f"{{overlap_threshold}} must be ≥ 0 Å, got {self.overlap_threshold}")


@dataclass(frozen=True)
class Ranking:
    """The top-K list written beside the output (`deepergat.screening.shortlist`).

    Attributes:
        top: K, or None for no list.
        top_order: ``asc`` (lowest key first) or ``desc``.
        rank_by: ``mean`` (the first target's prediction), or an ensemble's bound ``lower``
            (mean − k·std) or ``upper`` (mean + k·std).
        rank_k: k of the bound, in calibrated standard deviations.
        where: a ``where`` expression the listed rows satisfy.
        group: one row per distinct crystal (False: the raw ranking).
        match_tol: ``LTOL,STOL,ANGLE`` of the structure matcher.
        known: structure stores of known crystals to mark (and with ``novel_only`` leave out).
        novel_only: leave out crystals that match a known one.
        group_seconds: the grouping's time budget (rows past it stay ungrouped).
    """

    top: int | None = None
    top_order: RankOrder = DEFAULT_RANK_ORDER
    rank_by: RankBy = DEFAULT_RANK_BY
    rank_k: float = DEFAULT_RANK_K
    where: str | None = None
    group: bool = True
    match_tol: str = str(MatchTolerance())
    known: tuple[str, ...] = ()
    novel_only: bool = False
    group_seconds: float | None = DEFAULT_GROUP_SECONDS

    def list_settings(self) -> ListSettings:
        """The short list these settings ask for."""
        return ListSettings(top=self.top, order=self.top_order, rank_by=self.rank_by,
                            rank_k=self.rank_k, where=self.where, group=self.group,
                            tolerance=MatchTolerance.parse(self.match_tol),
                            known=tuple(str(k) for k in self.known),
                            novel_only=self.novel_only, seconds=self.group_seconds)

    def check(self) -> None:
        """Raises `SettingError` for a value no ranking can use."""
        if self.top is not None and self.top < 1:
            raise SettingError(f"{{top}} must be at least 1, got {self.top}")
        if self.top_order not in RANK_ORDERS:
            raise SettingError(f"{{top_order}} {literal(repr(self.top_order))}: choose "
                               f"{' or '.join(RANK_ORDERS)}")
        if self.rank_by not in RANK_BY:
            raise SettingError(f"{{rank_by}} {literal(repr(self.rank_by))}: choose "
                               f"{', '.join(RANK_BY[:-1])} or {RANK_BY[-1]}")
        if not (self.rank_k >= 0 and math.isfinite(self.rank_k)):
            raise SettingError(f"{{rank_k}} must be a finite number ≥ 0, got {self.rank_k}")
        if self.top is not None:
            self.list_settings().check()


@dataclass(frozen=True)
class RunControl:
    """How the work is cut, shared and resumed.

    Attributes:
        chunk_size: structures per chunk (the unit of work, commit and resume).
        workers: worker processes per rank (None: from the rank's cores, `setup.rank_resources`).
        shard: ``I/N``, this array task's static share (None: from the SLURM array, if any).
        resume: reuse committed parts (False: discard them and start clean).
        merge_only: only merge committed parts.
        batch_atoms, batch_edges: the model-batch budget (None: by device,
            `deepergat.screening.pipeline.split_batches`).
    """

    chunk_size: int = DEFAULT_CHUNK_SIZE
    workers: int | None = None
    shard: str | None = None
    resume: bool = True
    merge_only: bool = False
    batch_atoms: int | None = None
    batch_edges: int | None = None

    def check(self) -> None:
        """Raises `SettingError` for a value no run can use."""
        if self.workers is not None and self.workers < 0:
            raise SettingError(f"{{workers}} must be ≥ 0, got {self.workers}")
        if self.chunk_size < 1:
            raise SettingError(f"{{chunk_size}} must be at least 1, got {self.chunk_size}")


@dataclass(frozen=True)
class ScreenOptions:
    """Everything a screen is asked to do, by concern. Build it with `create` from the
    settings' names (those of ``deepergat-screen --help`` with underscores)::

        ScreenOptions.create("cands.h5", model="model.onnx", top=100, embeddings=True)

    Attributes:
        files: input, output, embeddings.
        predictor: model, device, trust, compile.
        checks: the structures' status checks.
        ranking: the top-K list.
        control: chunks, workers, shards, resume, merge-only, batch budget.
    """

    files: Files
    predictor: PredictorSettings = field(default_factory=PredictorSettings)
    checks: StructureChecks = field(default_factory=StructureChecks)
    ranking: Ranking = field(default_factory=Ranking)
    control: RunControl = field(default_factory=RunControl)

    @classmethod
    def create(
        cls,
        input: str | os.PathLike[str],
        *,
        output: str | os.PathLike[str] | None = None,
        embeddings: bool = False,
        from_predictions: str | os.PathLike[str] | None = None,
        from_top: int | None = None,
        from_where: str | None = None,
        model: str | None = None,
        device: str = DEFAULT_DEVICE,
        trust: bool = False,
        compile: CompileChoice = "auto",
        max_atoms: int = DEFAULT_MAX_ATOMS,
        overlap_threshold: float = DEFAULT_OVERLAP_THRESHOLD,
        top: int | None = None,
        top_order: RankOrder = DEFAULT_RANK_ORDER,
        rank_by: RankBy = DEFAULT_RANK_BY,
        rank_k: float = DEFAULT_RANK_K,
        where: str | None = None,
        group: bool = True,
        match_tol: str = str(MatchTolerance()),
        known: tuple[str, ...] = (),
        novel_only: bool = False,
        group_seconds: float | None = DEFAULT_GROUP_SECONDS,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        workers: int | None = None,
        shard: str | None = None,
        resume: bool = True,
        merge_only: bool = False,
        batch_atoms: int | None = None,
        batch_edges: int | None = None,
    ) -> ScreenOptions:
        """The options from each setting by name (the groups' attributes say what each
        means); values are checked when the screen starts (`check`)."""
        return cls(
            files=Files(input=Path(input), output=Path(output) if output is not None else None,
                        embeddings=embeddings,
                        from_predictions=(Path(from_predictions) if from_predictions is not None
                                          else None),
                        from_top=from_top, from_where=from_where),
            predictor=PredictorSettings(model=model, device=device, trust=trust,
                                        compile=compile),
            checks=StructureChecks(max_atoms=max_atoms, overlap_threshold=overlap_threshold),
            ranking=Ranking(top=top, top_order=top_order, rank_by=rank_by, rank_k=rank_k,
                            where=where, group=group, match_tol=match_tol,
                            known=tuple(str(k) for k in known), novel_only=novel_only,
                            group_seconds=group_seconds),
            control=RunControl(chunk_size=chunk_size, workers=workers, shard=shard,
                               resume=resume, merge_only=merge_only, batch_atoms=batch_atoms,
                               batch_edges=batch_edges),
        )

    def settings(self) -> dict[str, Any]:
        """Every setting by name, as `create` takes them."""
        groups = (self.files, self.predictor, self.checks, self.ranking, self.control)
        return {f.name: getattr(g, f.name) for g in groups for f in dataclasses.fields(g)}

    def check(self) -> None:
        """Raises `SettingError` (naming the setting) for a value no screen can use."""
        self.files.check()
        self.predictor.check()
        self.checks.check()
        self.ranking.check()
        self.control.check()
