"""The graph settings every model records: ``cutoff`` (Å), ``max_neighbors`` and the
construction (docs/design.md §4), checked wherever they enter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deepergat.contract import DEFAULT_GRAPH, GRAPH_CONSTRUCTIONS, GraphConstruction
from deepergat.metadata import GraphSettings

__all__ = ["check_graph", "graph_settings"]


def check_graph(value: object) -> GraphConstruction:
    """``value`` if it names a `GraphConstruction`, else ValueError naming the choices."""
    if value not in GRAPH_CONSTRUCTIONS:
        raise ValueError(
            f"graph construction {value!r} is not one of {', '.join(GRAPH_CONSTRUCTIONS)}"
        )
    return value  # type: ignore[return-value]


def graph_settings(source: Mapping[str, Any], *, where: str = "model metadata"
                   ) -> dict[str, Any]:
    """The graph settings ``{cutoff, max_neighbors, construction}`` of a model's constructor
    arguments or of a metadata ``graph`` document (files older than the ``construction``
    setting were all periodic), checked as `deepergat.metadata.GraphSettings.from_dict`
    checks them.

    Args:
        source: the arguments or document.
        where: the file they came from, for messages.

    Raises:
        DeepergatError: a missing setting, or one of the wrong type or out of range (a cutoff
            that is not a finite length in (0, `deepergat.metadata.MAX_CUTOFF`] Å, a neighbor
            count that is not an integer from 1 to `deepergat.metadata.MAX_NEIGHBORS`, an
            unknown construction): NaN or negative settings would hang or silently change
            the neighbor search.
    """
    doc = {k: source[k] for k in ("cutoff", "max_neighbors") if k in source}
    doc["construction"] = source.get("construction", source.get("graph", DEFAULT_GRAPH))
    g = GraphSettings.from_dict(doc, where=where)
    return {"cutoff": g.cutoff, "max_neighbors": g.max_neighbors,
            "construction": g.construction}
