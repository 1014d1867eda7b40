"""The audit report as one self-contained HTML page that an auditor opens in a browser.

``fedseqrec-audit RUN --html report.html`` writes it: inline CSS and inline SVG, no
script, nothing fetched (its Content-Security-Policy forbids both). In order: the verdict
in a coloured banner (green PASSED, red FAILED or NOT PRIVATE) with the guarantee in the
words of :func:`~common.privacy.report.render`; epsilon over rounds per party against its
budget; the ledger as a timeline, recorded against recomputed epsilon; noise evidence;
receipts; every failure, one per line, and the notes. Every value that comes from a
ledger or a run folder is untrusted input and passes through :func:`html.escape`.

Two optional fields of :class:`~common.privacy.ledger_audit.AuditReport` feed sections
that other checks fill (empty: "not measured", "no receipts given"). Each is a list of
dicts; keys marked optional may be missing::

    report.evidence: one noise measurement each
        {"who": "server", "round": 3 (optional), "quantity": "noise std of the sum",
         "claimed": 1.0, "measured": 0.98, "low": 0.93, "high": 1.04,
         "level": 0.95 (optional), "agrees": True (optional: low <= claimed <= high)}
    report.receipts: one party's receipt checked against the ledger each
        {"who": "node-1", "round": 3 (optional), "receipt": "9f2c..." (optional),
         "agrees": False, "detail": "the ledger's entry hashes to 51aa..." (optional)}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from common.privacy.ledger_audit import AuditReport, CheckedEntry, PartyAudit, guarantees
from common.privacy.report import NOT_CERTIFIED, PASSED, distribution_lines, guarantee_lines
from common.storage.atomic import write_text_atomically

PASS_COLOUR = "#1b7f3b"
FAIL_COLOUR = "#c0262d"
RECORDED_COLOUR = "#1f5fbf"
RECOMPUTED_COLOUR = "#8a8a8a"
MAX_CHARTS = 24  # parties charted; every entry of every party is still in the table
MAX_ROWS = 5000  # ledger rows shown; the ledger files and --json hold them all
WIDTH, HEIGHT = 540, 250  # one chart's size in pixels, then its margins for the axes
LEFT, RIGHT, TOP, BOTTOM = 62, 16, 14, 46
Scale = Callable[[float], float]  # a data value to a pixel coordinate

STYLE = f"""
body {{ margin: 0; font: 15px/1.45 system-ui, "DejaVu Sans", sans-serif; color: #1d1d1f;
  background: #fff; }}
main {{ max-width: 1140px; margin: 0 auto; padding: 8px 24px 40px; }}
.banner {{ color: #fff; padding: 18px 24px; }}
.banner.pass {{ background: {PASS_COLOUR}; }}
.banner.fail {{ background: {FAIL_COLOUR}; }}
.banner h1 {{ margin: 0 0 4px; font-size: 30px; letter-spacing: 0.5px; }}
.banner p {{ margin: 4px 0; max-width: 1100px; }}
.banner .detail {{ margin-left: 18px; opacity: 0.95; font-size: 14px; }}
h2 {{ margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 2px solid #ddd; }}
h3 {{ margin: 0 0 2px; font-size: 15px; overflow-wrap: anywhere; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 16px; }}
.chart {{ border: 1px solid #ddd; border-radius: 6px; padding: 8px; }}
.legend {{ font-size: 13px; color: #555; }}
.key {{ display: inline-block; width: 22px; height: 0; vertical-align: middle;
  margin: 0 4px 0 10px; border-top: 3px solid; }}
.dashed {{ border-top-style: dashed; }}
table {{ border-collapse: collapse; font-size: 13px; width: 100%; }}
th, td {{ border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }}
th {{ background: #f0f0f2; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
td:first-child {{ white-space: nowrap; }}
tr.bad td {{ background: #fde8e8; }}
.ok {{ color: {PASS_COLOUR}; font-weight: 600; }}
.no {{ color: {FAIL_COLOUR}; font-weight: 600; }}
ol.failures li {{ color: {FAIL_COLOUR}; margin: 3px 0; overflow-wrap: anywhere; }}
.muted {{ color: #666; }}
code {{ overflow-wrap: anywhere; }}
"""


def write_html(path: Path, report: AuditReport) -> None:
    """Write :func:`render_html` of ``report`` to ``path`` atomically."""
    write_text_atomically(path, render_html(report))


def render_html(report: AuditReport) -> str:
    """The whole page: one string, no external resource."""
    sections = (_failures, _summary, _charts, _timeline, _evidence, _receipts)
    body = "\n".join([_banner(report), "<main>", *(part(report) for part in sections), "</main>"])
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        f"<title>Privacy audit: {_verdict(report)}</title>\n<style>{STYLE}</style>\n"
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _verdict(report: AuditReport) -> str:
    """PASSED, NOT PRIVATE or FAILED."""
    if report.passed:
        return "PASSED"
    return "NOT PRIVATE" if report.not_private else "FAILED"


def _banner(report: AuditReport) -> str:
    """The verdict in words, then each guarantee as ``render`` states it."""
    lines = [f"<h1>{_verdict(report)}</h1>"]
    if report.passed:
        lines.append(f"<p>{escape(PASSED)}</p>")
    else:
        if report.not_private:
            lines.append(f"<p><strong>{escape(NOT_CERTIFIED)}</strong></p>")
        lines.append(
            f"<p>FAILED: {len(report.failures)} problem(s), each listed under "
            f"<em>Failed checks</em> below. The guarantee the ledger claims is not certified:</p>"
        )
    for statement in guarantees(report):
        first, *details = guarantee_lines(statement)
        lines.append(f"<p><strong>{escape(first)}</strong></p>")
        lines.extend(f'<p class="detail">{escape(line.strip())}</p>' for line in details)
    state = "pass" if report.passed else "fail"
    return f'<header class="banner {state}">\n' + "\n".join(lines) + "\n</header>"


def _summary(report: AuditReport) -> str:
    """The files, entries and parties audited; the clients' epsilons; the notes."""
    entries = sum(len(party.checked) for party in report.parties)
    parties = f"{len(report.parties)} part{'y' if len(report.parties) == 1 else 'ies'}"
    ledgers = ", ".join(f"<code>{escape(name)}</code>" for name in report.ledgers)
    lines = [
        "<h2>What was audited</h2>",
        f"<p>{entries} ledger entries from {parties} in {len(report.ledgers)} file(s): "
        f"{ledgers}.</p>",
    ]
    if report.skipped_lines:
        lines.append(f"<p>{report.skipped_lines} record(s) cut short by a crash were skipped.</p>")
    lines.extend(f"<p>{escape(line)}</p>" for line in distribution_lines(report))
    lines.extend(f"<p>Note: {escape(note)}</p>" for note in report.notes)
    return "\n".join(lines)


def _charts(report: AuditReport) -> str:
    """One epsilon-over-rounds chart per party (the first :data:`MAX_CHARTS`)."""
    lines = [
        "<h2>Epsilon over rounds</h2>",
        '<p class="legend">Cumulative epsilon of each party after each of its releases:'
        f'<span class="key" style="border-color:{RECORDED_COLOUR}"></span>recorded in the '
        f'ledger (one dot per entry)<span class="key dashed" style="border-color:'
        f'{RECOMPUTED_COLOUR}"></span>recomputed (its accountant)<span class="key dashed" '
        f'style="border-color:{FAIL_COLOUR}"></span>budget; a red dot is an entry that a '
        "failed check names</p>",
        '<div class="charts">',
    ]
    named = _named_sources(report)
    lines.extend(_party_chart(party, named) for party in report.parties[:MAX_CHARTS])
    lines.append("</div>")
    hidden = len(report.parties) - MAX_CHARTS
    if hidden > 0:
        lines.append(
            f'<p class="muted">{hidden} more parties are not charted; every entry of '
            f"theirs is in the ledger table.</p>"
        )
    return "\n".join(lines)


def _party_chart(party: PartyAudit, named: set[str]) -> str:
    """A party's heading and its SVG chart."""
    last, budget = party.last, party.last.entry.budget_epsilon
    caption = f"final epsilon {_number(last.spent)}"
    caption += f", budget {_number(budget)}" if budget is not None else ", no budget"
    return (
        f'<div class="chart"><h3>{escape(party.who)}</h3>'
        f'<div class="legend">{len(party.checked)} entries; {escape(caption)}</div>\n'
        f"{epsilon_svg(party, named)}</div>"
    )


def epsilon_svg(party: PartyAudit, named: Collection[str] = ()) -> str:
    """Inline SVG: recorded epsilon (a dot per entry, red where a failure names the
    entry's line), recomputed epsilon, the budget."""
    rounds = [item.entry.round for item in party.checked]
    recorded = [item.entry.epsilon for item in party.checked]
    recomputed = [item.recomputed for item in party.checked]
    budget = party.last.entry.budget_epsilon
    finite = [v for v in [*recorded, *recomputed, budget or 0.0] if math.isfinite(v)]
    y_top = _nice_top(max(finite, default=0.0))
    x_low, x_high = min(rounds), max(rounds)
    if x_low == x_high:
        x_low, x_high = x_low - 1, x_high + 1

    def x(value: float) -> float:
        return LEFT + (value - x_low) / (x_high - x_low) * (WIDTH - LEFT - RIGHT)

    def y(value: float) -> float:
        shown = min(value, y_top) if math.isfinite(value) else y_top
        return HEIGHT - BOTTOM - shown / y_top * (HEIGHT - TOP - BOTTOM)

    parts = _axes(x, y, (x_low, x_high), y_top)
    if budget is not None:
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(budget):.1f}" y2="{y(budget):.1f}" '
            f'stroke="{FAIL_COLOUR}" stroke-width="2" stroke-dasharray="7 4"/>'
        )
    parts.append(_polyline(x, y, rounds, recomputed, RECOMPUTED_COLOUR, dashed=True))
    parts.append(_polyline(x, y, rounds, recorded, RECORDED_COLOUR, dashed=False))
    parts.extend(
        _point(x(item.entry.round), y(item.entry.epsilon), item, item.source in named)
        for item in party.checked
    )
    label, body = escape(f"epsilon over rounds of {party.who}"), "\n".join(parts)
    size = f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}"'
    return f'<svg class="epsilon" {size} role="img" aria-label="{label}">\n{body}\n</svg>'


def _axes(x: Scale, y: Scale, x_range: tuple[int, int], y_top: float) -> list[str]:
    """Axes, ticks, grid lines and the axis labels of one chart."""
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts = []
    for value in _ticks(0.0, y_top):
        parts.append(
            f'<line x1="{LEFT}" x2="{right}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            f'stroke="#e4e4e4"/><text x="{LEFT - 6}" y="{y(value) + 4:.1f}" font-size="11" '
            f'text-anchor="end">{_number(value)}</text>'
        )
    low, high = x_range
    for value in _ticks(low, high, integers=True):
        parts.append(
            f'<line x1="{x(value):.1f}" x2="{x(value):.1f}" y1="{bottom}" y2="{bottom + 4}" '
            f'stroke="#333"/><text x="{x(value):.1f}" y="{bottom + 17}" font-size="11" '
            f'text-anchor="middle">{int(value)}</text>'
        )
    middle = (TOP + bottom) / 2
    parts += [  # the axes over the grid, then their labels
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="#333"/>',
        f'<line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>',
        f'<text x="{(LEFT + right) / 2}" y="{HEIGHT - 8}" font-size="12" '
        f'text-anchor="middle">round</text>',
        f'<text x="16" y="{middle}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 16 {middle})">epsilon (cumulative)</text>',
    ]
    return parts


def _polyline(
    x: Scale, y: Scale, rounds: list[int], values: list[float], colour: str, *, dashed: bool
) -> str:
    points = " ".join(f"{x(r):.1f},{y(v):.1f}" for r, v in zip(rounds, values, strict=True))
    dash = ' stroke-dasharray="5 4"' if dashed else ""
    return f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'


def _point(cx: float, cy: float, item: CheckedEntry, flagged: bool) -> str:
    """One ledger entry's dot, with its values as a tooltip."""
    entry = item.entry
    tip = (
        f"{entry.who} round {entry.round}: recorded {_number(entry.epsilon)}, "
        f"RDP {_number(item.rdp_epsilon)}, PLD {_number(item.pld_epsilon)}"
    )
    colour, radius = (FAIL_COLOUR, 5) if flagged else (RECORDED_COLOUR, 3.5)
    return (
        f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{radius}" fill="{colour}">'
        f"<title>{escape(tip)}</title></circle>"
    )


def _nice_top(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above 1.1 x ``value``."""
    if value <= 0:
        return 1.0
    target = value * 1.1
    power = 10 ** math.floor(math.log10(target))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= target)


def _ticks(low: float, high: float, *, integers: bool = False) -> list[float]:
    """About five evenly spaced round values from ``low`` to ``high``."""
    raw = (high - low) / 5
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    if integers:
        step = max(1.0, float(math.ceil(step)))
    start = math.ceil(low / step) * step
    count = int((high - start) / step + 1e-9) + 1
    return [start + i * step for i in range(count)]


def _timeline(report: AuditReport) -> str:
    """Every ledger entry in time order; rows the failures name are marked."""
    items = sorted(
        (item for party in report.parties for item in party.checked),
        key=lambda item: (item.entry.time, item.source),
    )
    named = _named_sources(report)
    header = (
        "Time (UTC)", "Where", "Party", "Round", "Mechanism", "Noise multiplier",
        "Sampling rate", "Steps", "Delta", "Epsilon recorded (by)", "Epsilon recomputed RDP / PLD",
        "Budget", "Check",
    )  # fmt: skip
    rows = [_timeline_row(item, item.source in named) for item in items[:MAX_ROWS]]
    lines = ["<h2>The ledger, in time order</h2>", _table(header, rows)]
    if len(items) > MAX_ROWS:
        lines.append(
            f'<p class="muted">The first {MAX_ROWS} of {len(items)} entries are shown; the '
            f"ledger files and <code>--json</code> hold the rest.</p>"
        )
    return "\n".join(lines)


def _named_sources(report: AuditReport) -> set[str]:
    """The ledger lines ("file, line n") that a failure names."""
    return {failure.split(": ", 1)[0] for failure in report.failures}


def _timeline_row(item: CheckedEntry, flagged: bool) -> str:
    entry = item.entry
    when = datetime.fromtimestamp(entry.time, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    file, _, line = item.source.rpartition(", line ")
    check = '<span class="no">problem</span>' if flagged else '<span class="ok">ok</span>'
    cells = [
        when, f"{Path(file).name}:{line}", entry.who, entry.round, entry.mechanism,
        entry.noise_multiplier, entry.sampling_rate, entry.steps, entry.delta,
        f"{_number(entry.epsilon)} ({entry.accountant.upper()})",
        f"{_number(item.rdp_epsilon)} / {_number(item.pld_epsilon)}", entry.budget_epsilon,
    ]  # fmt: skip
    row = "".join(_cell(value) for value in cells) + f"<td>{check}</td>"
    return f'<tr class="bad">{row}</tr>' if flagged else f"<tr>{row}</tr>"


def _evidence(report: AuditReport) -> str:
    """Measured against claimed noise, with the measurement's interval."""
    lines = ["<h2>Noise evidence</h2>"]
    if not report.evidence:
        return "\n".join([*lines, '<p class="muted">Not measured.</p>'])
    header = ("Party", "Round", "Quantity", "Claimed", "Measured", "Interval", "Agrees")
    rows = []
    for item in report.evidence:
        low, high, claimed = item.get("low"), item.get("high"), item.get("claimed")
        level = item.get("level")
        interval = f"[{_number(low)}, {_number(high)}]"
        interval += f" ({_number(100 * level)}%)" if isinstance(level, int | float) else ""
        agrees = item.get("agrees")
        if agrees is None and all(isinstance(v, int | float) for v in (low, high, claimed)):
            agrees = low <= claimed <= high  # type: ignore[operator]
        cells = [item.get("who"), item.get("round"), item.get("quantity"), claimed]
        cells += [item.get("measured"), interval]
        rows.append("<tr>" + "".join(map(_cell, cells)) + _agreement(agrees) + "</tr>")
    return "\n".join([*lines, _table(header, rows)])


def _receipts(report: AuditReport) -> str:
    """Each party's receipt against the ledger."""
    lines = ["<h2>Receipts</h2>"]
    if not report.receipts:
        return "\n".join([*lines, '<p class="muted">No receipts given.</p>'])
    agree = sum(item.get("agrees") is True for item in report.receipts)
    lines.append(f"<p>{len(report.receipts)} receipt(s), {agree} agree with the ledger.</p>")
    header = ("Party", "Round", "Receipt", "Agrees", "Detail")
    rows = []
    for item in report.receipts:
        cells = "".join(map(_cell, [item.get("who"), item.get("round"), item.get("receipt")]))
        rows.append(f"<tr>{cells}{_agreement(item.get('agrees'))}{_cell(item.get('detail'))}</tr>")
    return "\n".join([*lines, _table(header, rows)])


def _failures(report: AuditReport) -> str:
    """Every failed check, one per line."""
    lines = ["<h2>Failed checks</h2>"]
    if not report.failures:
        return "\n".join([*lines, '<p class="ok">None: every check passed.</p>'])
    items = [f"<li>{escape(failure)}</li>" for failure in report.failures]
    return "\n".join([*lines, '<ol class="failures">', *items, "</ol>"])


def _table(header: Iterable[str], rows: list[str]) -> str:
    head = "".join(f"<th>{escape(name)}</th>" for name in header)
    return (
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody>\n</table>"
    )


def _agreement(agrees: object) -> str:
    if agrees is None:
        return '<td class="muted">unknown</td>'
    return '<td class="ok">yes</td>' if agrees is True else '<td class="no">no</td>'


def _number(value: object) -> str:
    """A float to four significant digits ("inf" without noise); anything else as text."""
    if value is None:
        return "none"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cell(value: object) -> str:
    """A table cell of an untrusted value: numbers right-aligned, everything escaped."""
    if value is None:
        return '<td class="muted">-</td>'
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"<td>{escape(str(value))}</td>"
    return f'<td class="num">{_number(value)}</td>'
