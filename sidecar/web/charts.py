"""Charts drawn on the server as inline SVG: no chart library, no script. Each chart is an image
with an accessible name (role="img", aria-label, <title> and <desc>); the page shows the same
numbers in a table beside it, for screen readers and for reading exact values.

    bar_chart("Studies read per radiologist", [("dr.a", 12.0, "12"), ...])

Bars are horizontal (labels on the left, whatever their length), scaled to the largest value;
the drawing scales to its container's width (viewBox), so it fits a tablet as a desktop.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup

#: One bar: its label, its value (drawn), and the value as the page writes it.
Bar = tuple[str, float, str]

_WIDTH = 640
_LABEL_WIDTH = 150
_VALUE_WIDTH = 90
_BAR_HEIGHT = 24
_GAP = 10
_TOP = 8


def bar_chart(title: str, bars: Sequence[Bar], *, description: str = "") -> Markup:
    """A horizontal bar chart; with no bars, a sentence saying there is nothing to draw."""
    if not bars:
        return Markup('<p class="muted">{}: nothing in this period.</p>').format(title)
    largest = max((value for _, value, _ in bars), default=0.0) or 1.0
    room = _WIDTH - _LABEL_WIDTH - _VALUE_WIDTH
    height = _TOP * 2 + len(bars) * (_BAR_HEIGHT + _GAP) - _GAP
    desc = description or "; ".join(f"{label}: {shown}" for label, _, shown in bars)
    parts = [
        Markup(
            '<svg class="chart" role="img" aria-label="{}" viewBox="0 0 {} {}" '
            'width="100%" preserveAspectRatio="xMinYMin meet" '
            'xmlns="http://www.w3.org/2000/svg">'
        ).format(title, _WIDTH, height),
        Markup("<title>{}</title><desc>{}</desc>").format(title, desc),
    ]
    for index, (label, value, shown) in enumerate(bars):
        y = _TOP + index * (_BAR_HEIGHT + _GAP)
        width = max(0.0, value) / largest * room
        middle = y + _BAR_HEIGHT / 2
        parts.append(
            Markup(
                '<g><text class="chart__label" x="{}" y="{}" text-anchor="end" '
                'dominant-baseline="middle">{}</text>'
                '<rect class="chart__bar" x="{}" y="{}" width="{:.1f}" height="{}"></rect>'
                '<text class="chart__value" x="{:.1f}" y="{}" dominant-baseline="middle">{}</text>'
                "</g>"
            ).format(
                _LABEL_WIDTH - 8,
                middle,
                _shorten(label),
                _LABEL_WIDTH,
                y,
                width,
                _BAR_HEIGHT,
                _LABEL_WIDTH + width + 6,
                middle,
                shown,
            )
        )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def _shorten(label: str, most: int = 20) -> str:
    return label if len(label) <= most else label[: most - 1] + "…"
