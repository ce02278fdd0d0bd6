"""User text in the tool's plots, shown as written.

Every plot deepergat draws (training's learning curve, ``evaluate``'s parity plot, the
screening report's figures) puts user text on it: target names and units from a store, ids,
titles. Matplotlib reads a string with an even number of unescaped dollar signs as mathtext, so
units such as ``$\\notacommand$`` raise when the figure is drawn, and ``$x$`` would be drawn as
math rather than as written. `plain_text` is the one escape every plot applies to such text.
"""

from __future__ import annotations

__all__ = ["plain_text"]


def plain_text(text: object) -> str:
    """``text`` for a matplotlib label, title or legend entry, drawn as written.

    Each dollar sign becomes ``\\$``: a string without an unescaped dollar sign is never parsed
    as mathtext, and matplotlib draws ``\\$`` as ``$`` (a backslash already before a dollar
    sign stays a backslash). Nothing else in plain text is special to matplotlib.

    Args:
        text: the user's text (a name, units, an id, a title); not a string: its ``str()``.

    Returns:
        the escaped string.
    """
    return str(text).replace("$", "\\$")
