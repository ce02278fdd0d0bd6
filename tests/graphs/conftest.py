"""Every graph test runs with the compiled kernels and with the numpy reference search."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["numba", "numpy"], autouse=True)
def search_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every test with the compiled kernel and with the numpy reference search."""
    if request.param == "numba":
        pytest.importorskip("numba")
        monkeypatch.setenv("DEEPERGAT_NUMBA", "1")
    else:
        monkeypatch.setenv("DEEPERGAT_NUMBA", "0")
    return request.param

