"""Chart: the activity chart of the admin UI as inline SVG, drawn on the
server (no chart library, no script): stacked bars of events per hour or
day, one colour per action (or outcome), with a text legend.
"""

from __future__ import annotations

from html import escape

from auditlake.collector.admin.search import Stats

#: Colour-blind-safe palette (Okabe-Ito), then grey for "other".
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#999999")
WIDTH, HEIGHT, PAD_L, PAD_B, PAD_T = 900, 180, 44, 22, 8


def _nice(n: int) -> int:
    """A round axis maximum >= n."""
    if n <= 5:
        return max(n + n % 2, 2)  # even, so the middle grid line is a whole number
    mag = 10 ** (len(str(n)) - 1)
    for step in (1, 2, 4, 5, 10):
        top = int(step * mag)
        if top >= n:
            return top
    return n


def series_colours(stats: Stats) -> dict[str, str]:
    """The colour of each series (stable: by order, "other" grey)."""
    out: dict[str, str] = {}
    i = 0
    for name in stats.series:
        if name == "other":
            out[name] = PALETTE[-1]
        else:
            out[name] = PALETTE[i % (len(PALETTE) - 1)]
            i += 1
    return out


def render_svg(stats: Stats) -> str:
    """The chart as an SVG element (already escaped; safe to embed)."""
    n = len(stats.buckets)
    label = f"Events per {stats.bucket} by {stats.by}: {stats.total} in total"
    if n == 0 or stats.total == 0:
        return (f'<svg class="chart" viewBox="0 0 {WIDTH} 40" role="img" aria-label="{escape(label)}">'
                f'<text x="{WIDTH // 2}" y="24" text-anchor="middle" class="chart-empty">'
                "No events in this range</text></svg>")
    colours = series_colours(stats)
    totals = [sum(s[i] for s in stats.series.values()) for i in range(n)]
    top = _nice(max(totals))
    plot_w, plot_h = WIDTH - PAD_L - 4, HEIGHT - PAD_B - PAD_T
    bar_w = plot_w / n
    gap = 1 if bar_w > 3 else 0
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}">']
    for frac in (0, 0.5, 1):
        y = PAD_T + plot_h * (1 - frac)
        parts.append(f'<line x1="{PAD_L}" x2="{WIDTH - 4}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{int(top * frac):,}</text>')
    for i, b in enumerate(stats.buckets):
        x = PAD_L + i * bar_w
        y = PAD_T + plot_h
        when = b.strftime("%Y-%m-%d %H:00" if stats.bucket == "hour" else "%Y-%m-%d")
        if stats.bucket == "week":
            when = "week of " + when
        tip = [f"{when}: {totals[i]:,} events"]
        parts.append("<g>")
        for name, values in stats.series.items():
            v = values[i]
            if not v:
                continue
            h = plot_h * v / top
            y -= h
            tip.append(f"{name}: {v:,}")
            parts.append(f'<rect x="{x:.2f}" y="{y:.2f}" width="{max(bar_w - gap, 0.5):.2f}" '
                         f'height="{h:.2f}" fill="{colours[name]}"/>')
        parts.append(f"<title>{escape('; '.join(tip))}</title></g>")
    # a few x labels, never overlapping
    every = max(1, n // 8)
    for i in range(0, n, every):
        b = stats.buckets[i]
        text = b.strftime("%H:00" if stats.bucket == "hour" else "%b %d")
        parts.append(f'<text x="{PAD_L + (i + 0.5) * bar_w:.1f}" y="{HEIGHT - 6}" text-anchor="middle" '
                     f'class="axis">{escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def legend(stats: Stats) -> list[tuple[str, str, int]]:
    """(name, colour, total) of each series, for the HTML legend."""
    colours = series_colours(stats)
    return [(name, colours[name], sum(values)) for name, values in stats.series.items()]
