"""`plain_text`: user text in the tool's plots is drawn as written, never as mathtext."""

from __future__ import annotations

import io

import pytest

from deepergat.system.plotting import plain_text

#: Text a store, a flag or an id may carry: mathtext commands, unbalanced dollars, escaped
#: dollars, backslashes, TeX specials.
TEXTS = ["$\\notacommand$", "$x$", "eV", "a$b", "a\\$b", "\\", "$$", "\\\\$", "{}^_%&#",
         "$\\frac{1", "e$V$ $", "", "Å·eV⁻¹"]


@pytest.mark.parametrize("text", TEXTS)
def test_text_is_drawn_as_written(text: str) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    shown = plain_text(text)
    # what matplotlib will draw: plain text (no math), and the user's characters
    assert Text(text=shown)._preprocess_math(shown) == (text, False)
    fig, ax = plt.subplots()
    try:
        ax.set_xlabel(shown)
        ax.set_title(shown)
        ax.text(0.5, 0.5, shown)
        fig.savefig(io.BytesIO(), format="png")  # raised for "$\notacommand$"
    finally:
        plt.close(fig)


def test_non_strings_are_their_text() -> None:
    assert plain_text(3.5) == "3.5" and plain_text(None) == "None"
