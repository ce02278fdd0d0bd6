"""Graph settings (`deepergat.graphs.settings`): constructions checked, older files periodic."""

from __future__ import annotations

import numpy as np
import pytest

from deepergat import graphs
from deepergat.graphs import neighbor_list


def test_the_graph_construction_is_checked_everywhere() -> None:
    with pytest.raises(ValueError, match="graph construction 'nearest' is not one of periodic"):
        neighbor_list(np.eye(3) * 3, np.zeros((1, 3)), graph="nearest")  # type: ignore[arg-type]
    assert graphs.graph_settings({"cutoff": 8, "max_neighbors": 12}) == {
        "cutoff": 8.0, "max_neighbors": 12, "construction": "periodic"}  # older files
    assert graphs.graph_settings({"cutoff": 6, "max_neighbors": 8, "graph": "minimum-image"})[
        "construction"] == "minimum-image"

