"""The GGR chart: one bar per day, drawn here as inline SVG (no script, no chart library).
Bars above the axis are the house's revenue, below it days the players won."""

from datetime import date

from markupsafe import Markup, escape

from persistence.reports import units

WIDTH, HEIGHT = 960, 240
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 90, 24, 12
LABELS_MAX = 12  # day labels under the axis, at most


def daily_bars(days: list[tuple[date, int]]) -> Markup:
    plot_width = WIDTH - MARGIN_LEFT - 8
    plot_height = HEIGHT - MARGIN_BOTTOM - MARGIN_TOP
    top = max([0, *(value for _, value in days)])
    bottom = min([0, *(value for _, value in days)])
    span = (top - bottom) or 1
    zero_y = MARGIN_TOP + plot_height * top / span
    slot = plot_width / max(len(days), 1)
    every = max(1, -(-len(days) // LABELS_MAX))  # ceil: a label on every n-th day
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="GGR per day" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{MARGIN_LEFT - 6}" y="{MARGIN_TOP + 10}" text-anchor="end" '
        f'class="axis">{escape(units(top))}</text>',
        f'<text x="{MARGIN_LEFT - 6}" y="{MARGIN_TOP + plot_height}" text-anchor="end" '
        f'class="axis">{escape(units(bottom))}</text>',
        f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - 8}" y1="{zero_y:.1f}" y2="{zero_y:.1f}" '
        f'class="zero"/>',
    ]
    for index, (day, value) in enumerate(days):
        x = MARGIN_LEFT + index * slot + slot * 0.1
        bar_height = plot_height * abs(value) / span
        y = zero_y - bar_height if value >= 0 else zero_y
        kind = "gain" if value >= 0 else "loss"
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{bar_height:.1f}" '
            f'class="{kind}"><title>{escape(str(day))}: {escape(units(value))}</title></rect>'
        )
        if index % every == 0:
            parts.append(
                f'<text x="{x + slot * 0.4:.1f}" y="{HEIGHT - 6}" text-anchor="middle" '
                f'class="axis">{escape(day.strftime("%m-%d"))}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))
