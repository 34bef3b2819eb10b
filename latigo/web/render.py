"""HTML and inline SVG for `latigo web`. Every text that comes from the database passes through `esc` (model
names, tags, executors, errors), attribute values included; nothing here emits a script."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from urllib.parse import quote, urlencode

from latigo.types import DEFAULT_PROJECT, ModelRef
from latigo.web.queries import (
    MAX_QUERY,
    RANGES,
    STATES,
    TAG_OUTPUTS,
    THRESHOLD,
    TOTAL_CONFIDENCE,
    Health,
    ModelDetail,
    ModelFilter,
    Overview,
)

REFRESH_SECONDS = 30
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7",
           "#6b6b6b")
DASHES = ("", "6 3", "2 3", "8 3 2 3")
Points = Sequence[tuple[datetime, float]]


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def model_href(ref: ModelRef, **query: object) -> str:
    """/models/NAME in the default project, /models/PROJECT/NAME elsewhere (each part quoted whole)."""
    parts = [ref.name] if ref.project == DEFAULT_PROJECT else [ref.project, ref.name]
    path = "/models/" + "/".join(quote(part, safe="") for part in parts)
    return path + ("?" + urlencode(query) if query else "")


def project_href(project: str) -> str:
    return "/?" + urlencode({"project": project})


def overview_href(which: ModelFilter, **changes: object) -> str:
    """The overview's address for `which` with `changes` (q, state, project, page); a change of anything
    but the page goes back to page 1. Only the parts that are set appear, so a link is short and shareable."""
    parts: dict[str, object] = {"q": which.q, "state": which.state, "project": which.project, "page": which.page}
    if set(changes) - {"page"}:
        parts["page"] = 1
    parts.update(changes)
    query = {key: value for key, value in parts.items() if value and not (key == "page" and value == 1)}
    return "/?" + urlencode(query) if query else "/"


# ---------------------------------------------------------------------------------------------- formatting

def fmt_time(value: datetime | None, seconds: bool = False) -> str:
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def fmt_age(value: timedelta | float | None) -> str:
    if value is None:
        return "—"
    seconds = int(value.total_seconds() if isinstance(value, timedelta) else value)
    sign, seconds = ("−", -seconds) if seconds < 0 else ("", seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours:02d}h"
    if hours:
        return f"{sign}{hours}h {minutes:02d}m" if minutes else f"{sign}{hours}h"
    if minutes:
        return f"{sign}{minutes}m {secs:02d}s" if secs else f"{sign}{minutes}m"
    return f"{sign}{secs}s"


def fmt_value(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def fmt_int(value: int) -> str:
    return f"{value:,}".replace(",", "\u202f")


# ---------------------------------------------------------------------------------------------- page frame

CSS = """
:root{--fg:#1d2730;--muted:#5f6c78;--line:#dde2e7;--bg:#f3f5f7;--card:#fff;--bad:#b3261e;--badbg:#fde8e6;
--warn:#8a5300;--warnbg:#fff3da;--ok:#2e7d32;--okbg:#e6f4e7;--link:#1f5f99}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);
background:var(--bg)}
a{color:var(--link);text-decoration:none}a:hover{text-decoration:underline}
header{background:#1d2730;color:#fff;padding:12px 24px;display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 18px}
header h1{font-size:18px;margin:0;font-weight:600;overflow-wrap:anywhere}header h1 a{color:#fff}
header .meta{color:#b8c3cc;font-size:12px}
main{padding:18px 24px 32px;max-width:1320px}
section{margin-top:22px}
h2{font-size:15px;margin:0 0 8px;font-weight:600}
h2 .note{font-weight:400;color:var(--muted);font-size:12px;margin-left:8px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(165px,1fr));gap:12px;margin-top:0}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.card .label{color:var(--muted);font-size:11px;text-transform:uppercase;letter-spacing:.05em}
.card .value{font-size:26px;font-weight:600;font-variant-numeric:tabular-nums;line-height:1.25;
overflow-wrap:anywhere}
.card .sub{color:var(--muted);font-size:12px}
.card.bad{border-color:#efb4ae;background:var(--badbg)}.card.bad .value{color:var(--bad)}
.card.warn{border-color:#f0cf8e;background:var(--warnbg)}.card.warn .value{color:var(--warn)}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line);border-radius:8px}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:middle}
th{font-size:11px;color:var(--muted);font-weight:600;text-transform:uppercase;letter-spacing:.04em;
background:#fafbfc;white-space:nowrap}
tr:last-child td{border-bottom:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.time{white-space:nowrap;font-variant-numeric:tabular-nums}
td.name{overflow-wrap:anywhere;max-width:420px;font-weight:500}
td.error{color:#3b4650;overflow-wrap:anywhere;font-size:13px}
tr.above td{background:#fff5f4}
.conf{font-weight:600;font-variant-numeric:tabular-nums}
.conf.above{color:#fff;background:var(--bad);border-radius:4px;padding:1px 7px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;white-space:nowrap}
.s-done{background:var(--okbg);color:var(--ok)}.s-failed{background:var(--badbg);color:var(--bad)}
.s-queued{background:#e8eef6;color:#2d5181}.s-running{background:#efe7f7;color:#5b3a88}
.s-cancelled{background:#eceff1;color:#55606a}
.late{color:var(--warn);font-weight:600}
.muted{color:var(--muted)}
.grid2{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:18px}
@media (max-width:900px){.grid2{grid-template-columns:1fr}}
.chart{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 8px 4px}
.chart svg{display:block;width:100%;height:auto}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;padding:6px 10px 6px;font-size:12px}
.legend span{display:inline-flex;align-items:center;gap:6px;overflow-wrap:anywhere}
.legend i{display:inline-block;width:18px;height:3px;border-radius:2px}
.tabs a,.tabs b{margin-right:10px;font-size:13px}.tabs b{font-weight:600}
.empty{color:var(--muted);padding:10px 0}
.peers-down{border:2px solid var(--bad);background:var(--badbg);border-radius:8px;padding:10px 14px;margin-bottom:14px}
.peers-down h2{color:var(--bad);margin:0 0 6px}.peers-down ul{margin:0;padding-left:20px}
.filters{display:flex;flex-wrap:wrap;align-items:center;gap:6px 14px;margin:0 0 8px;font-size:13px}
.filters form{display:flex;gap:6px}.filters input[type=search]{font:inherit;padding:3px 8px;width:260px;
border:1px solid var(--line);border-radius:6px}.filters button{font:inherit;padding:3px 10px;border-radius:6px;
border:1px solid var(--line);background:var(--card)}
.filters .states a,.filters .states b{margin-right:10px;white-space:nowrap}.filters .states b{font-weight:600}
.pager{margin:8px 0;font-size:13px;display:flex;gap:14px;align-items:baseline}
svg text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;fill:#5f6c78}
"""


def page(title: str, heading: str, meta: str, body: str, refresh: bool = True) -> str:
    refresh_tag = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{refresh_tag}<title>{esc(title)}</title><link rel=\"icon\" href=\"data:,\">"
        f"<style>{CSS}</style></head><body>"
        f"<header><h1>{heading}</h1><span class=\"meta\">{meta}</span></header>"
        f"<main>{body}</main></body></html>\n"
    )


def _meta(now: datetime, database: str) -> str:
    return (f"as of {esc(fmt_time(now, seconds=True))} UTC · refreshes every {REFRESH_SECONDS} s · read-only · "
            f"{esc(database)}")


def card(key: str, label: str, value: str, sub: str = "", tone: str = "") -> str:
    return (f'<div class="card {tone}" data-metric="{esc(key)}"><div class="label">{esc(label)}</div>'
            f'<div class="value" id="{esc(key)}">{esc(value)}</div><div class="sub">{esc(sub)}</div></div>')


def state_badge(state: str | None) -> str:
    if not state:
        return '<span class="muted">—</span>'
    return f'<span class="badge s-{esc(state)}">{esc(state)}</span>'


def confidence_cell(value: float | None) -> str:
    if value is None:
        return '<span class="muted">—</span>'
    tone = " above" if value > THRESHOLD else ""
    title = "above the threshold (1)" if tone else "below the threshold (1)"
    return f'<span class="conf{tone}" title="{title}">{esc(fmt_value(value))}</span>'


# ---------------------------------------------------------------------------------------------- overview

def overview_page(view: Overview, database: str, late_after: timedelta, banners: Sequence[str] = ()) -> str:
    """The overview; `banners` (HTML, escaped by whoever made them) go first, above the health cards."""
    health, now = view.health, view.health.now
    above = view.counts.get("anomalous", 0) if view.counts else sum(1 for row in view.models if row.above)
    body = [_peers_down_section(health), *banners, _health_cards(health, view.in_scope or view.total_models, above),
            _projects_section(view), _models_section(view, late_after),
            '<section class="grid2">', _reasons_section(health), _executors_section(health), "</section>",
            _hourly_section(health), _recent_failures_section(health)]
    return page("latigo — pipeline", '<a href="/">latigo</a> · pipeline and anomalies', _meta(now, database),
                "".join(body))


def _peers_down_section(health: Health) -> str:
    """A banner over everything else while an executor sees a peer down: its tasks wait, unrun."""
    if not health.peers_down:
        return ""
    items = "".join(
        f'<li><b>{esc(p.peer)}</b> down since {esc(fmt_time(p.down_since, seconds=True))} UTC '
        f'({esc(fmt_age(health.now - p.down_since))}, seen by {p.executors} executor{"s" if p.executors != 1 else ""})'
        f': <span class="error">{esc(_clip(p.reason))}</span></li>' for p in health.peers_down)
    return ('<section class="peers-down" id="peers-down"><h2>Peers down: their tasks wait, unrun, and spend no '
            f'attempts</h2><ul>{items}</ul></section>')


def _health_cards(health: Health, models: int, above: int) -> str:
    age = health.oldest_queued_age
    return "".join([
        '<section class="cards">',
        card("backlog", "Backlog", fmt_int(health.backlog), "tasks queued"),
        card("oldest-queued", "Oldest queued", fmt_age(age), "waiting since "
             + (fmt_time(health.oldest_queued) + " UTC" if health.oldest_queued else "—"),
             "warn" if age is not None and age > timedelta(hours=1) else ""),
        card("running", "Running", fmt_int(health.running), "tasks started, not finished"),
        card("throughput", "Throughput", fmt_int(health.done_last_hour), "tasks done in the last hour"),
        card("failed-24h", "Failures, 24 h", fmt_int(health.failed_24h),
             f"{fmt_int(health.failed_last_hour)} in the last hour · {fmt_int(health.dead_letters)} dead letters",
             "bad" if health.failed_last_hour else ""),
        card("executors-seen", "Executors", fmt_int(len(health.executors)), "seen in the last hour",
             "warn" if not health.executors and health.backlog else ""),
        card("models-above", "Above threshold", fmt_int(above), f"of {fmt_int(models)} models",
             "bad" if above else ""),
        "</section>",
    ])


def _projects_section(view: Overview) -> str:
    """Links per project (shown once the ledger holds more than the default project)."""
    if view.projects in ([], [DEFAULT_PROJECT]):
        return ""
    which = view.filter
    links = ['<b>all</b>' if not view.project else f'<a href="{esc(overview_href(which, project=""))}">all</a>']
    links += [f"<b>{esc(p)}</b>" if p == view.project
              else f'<a href="{esc(overview_href(which, project=p))}">{esc(p)}</a>' for p in view.projects]
    return f'<section class="projects"><h2>Projects</h2><div class="tabs">{" ".join(links)}</div></section>'


def _models_section(view: Overview, late_after: timedelta) -> str:
    now = view.health.now
    rows = []
    for row in view.models:
        lateness = now - row.last_done_end if row.last_done_end else None
        late = lateness is None or lateness > late_after
        late_text = "never" if lateness is None else fmt_age(lateness)
        cls = "model above" if row.above else "model"
        rows.append(
            f'<tr class="{cls}" data-model="{esc(row.name)}" data-project="{esc(row.ref.project)}">'
            f'<td class="name"><a href="{esc(model_href(row.ref))}">{esc(row.name)}</a></td>'
            f'<td class="project"><a href="{esc(overview_href(view.filter, project=row.ref.project))}">'
            f'{esc(row.ref.project)}</a></td>'
            f'<td class="num confidence">{confidence_cell(row.confidence)}</td>'
            f'<td class="spark">{sparkline(row.spark, view.since, now, row.above)}</td>'
            f'<td class="time last-window">{esc(fmt_time(row.last_done_end))}</td>'
            f'<td class="num lateness"><span class="{"late" if late else ""}">{esc(late_text)}</span></td>'
            f'<td class="state">{state_badge(row.newest_state)}</td></tr>')
    more = ""
    if not rows and view.total_models:
        table = '<p class="empty" id="no-match">No model matches this filter.</p>'
    elif not rows:
        table = '<p class="empty">No tasks in the ledger yet: run the scheduler or a backfill.</p>'
    else:
        table = ('<table id="models"><thead><tr><th>Model</th><th>Project</th><th class="num">Anomaly confidence</th>'
                 '<th>Last 24 h (log scale, line at 1)</th><th>Last predicted window end (UTC)</th>'
                 '<th class="num">Lateness</th><th>Newest task</th></tr></thead><tbody>'
                 + "".join(rows) + "</tbody></table>")
    note = (f"latest {TOTAL_CONFIDENCE}; above 1 = above the model's threshold, listed first, then late or failing"
            f"{more}; "
            f"lateness = now − last predicted window end, marked past {fmt_age(late_after)}")
    pager = _pager(view)
    return (f'<section><h2>Models<span class="note">{esc(note)}</span></h2>{_filters(view)}{pager}{table}'
            f"{pager if len(view.models) > 25 else ''}</section>")


STATE_LABELS = {"anomalous": "above threshold", "late": "late", "failing": "failing"}


def _filters(view: Overview) -> str:
    """The search box (a GET to this page, the other filters kept) and one link per state, with counts."""
    which = view.filter
    hidden = "".join(f'<input type="hidden" name="{key}" value="{esc(value)}">'
                     for key, value in (("state", which.state), ("project", which.project)) if value)
    form = (f'<form method="get" action="/" role="search"><input type="search" name="q" value="{esc(which.q)}" '
            f'maxlength="{MAX_QUERY}" placeholder="project or model name" aria-label="search models">{hidden}'
            '<button type="submit">search</button></form>')
    links = [f'<b id="state-all">all {fmt_int(view.in_scope)}</b>' if not which.state else
             f'<a id="state-all" href="{esc(overview_href(which, state=""))}">all {fmt_int(view.in_scope)}</a>']
    for state in STATES:
        text = f"{STATE_LABELS[state]} {fmt_int(view.counts.get(state, 0))}"
        links.append(f'<b id="state-{state}">{esc(text)}</b>' if which.state == state else
                     f'<a id="state-{state}" href="{esc(overview_href(which, state=state))}">{esc(text)}</a>')
    clear = f' <a id="clear-search" href="{esc(overview_href(which, q=""))}">clear search</a>' if which.q else ""
    return f'<div class="filters">{form}<span class="states">{" ".join(links)}</span>{clear}</div>'


def _pager(view: Overview) -> str:
    """'101–200 of 9,000 (of 9,000 models)' and the links to the pages around."""
    if not view.models:
        return ""
    first, last = view.first_index + 1, view.first_index + len(view.models)
    total = f"of {fmt_int(view.total_models)} models" if view.matching != view.total_models else "models"
    shown = (f'<span id="shown">{fmt_int(first)}–{fmt_int(last)} of {fmt_int(view.matching)}</span> '
             f'<span class="muted">{esc(total)}</span>')
    page = view.filter.page
    links = []
    if page > 1:
        links.append(f'<a rel="prev" href="{esc(overview_href(view.filter, page=page - 1))}">← previous</a>')
    if page < view.pages:
        links.append(f'<a rel="next" href="{esc(overview_href(view.filter, page=page + 1))}">next →</a>')
    if view.pages > 2:
        links.append(f'<span class="muted">page {page} of {view.pages}</span>')
    return f'<div class="pager">{shown}{"".join(" " + link for link in links)}</div>'


def _reasons_section(health: Health) -> str:
    if not health.reasons:
        body = '<p class="empty">No failed tasks in the last 24 hours.</p>'
    else:
        rows = "".join(
            f'<tr data-reason="{esc(r.reason)}"><td><b>{esc(r.reason)}</b></td>'
            f'<td class="num count">{fmt_int(r.count)}</td><td class="time">{esc(fmt_time(r.last_at))}</td>'
            f'<td class="error">{_model_link(r.example_model)} '
            f'<span class="muted">{esc(fmt_time(r.example_window))}</span><br>{esc(_clip(r.example_error))}</td></tr>'
            for r in health.reasons)
        body = ('<table id="reasons"><thead><tr><th>Reason</th><th class="num">Tasks</th><th>Last (UTC)</th>'
                f"<th>Latest example</th></tr></thead><tbody>{rows}</tbody></table>")
    return f'<div><h2>Failures by reason<span class="note">last 24 hours</span></h2>{body}</div>'


def _executors_section(health: Health) -> str:
    if not health.executors:
        body = '<p class="empty">No executor finished or started a task in the last hour.</p>'
    else:
        rows = "".join(
            f'<tr data-executor="{esc(e.name)}"><td class="name">{esc(e.name)}</td>'
            f'<td class="num">{fmt_int(e.finished_last_hour)}</td><td class="num">{fmt_int(e.running)}</td>'
            f'<td class="num">{esc(fmt_age(health.now - e.last_seen))} ago</td></tr>' for e in health.executors)
        body = ('<table id="executors"><thead><tr><th>Executor</th><th class="num">Finished</th>'
                f'<th class="num">Running</th><th class="num">Last seen</th></tr></thead><tbody>{rows}</tbody></table>')
    return f'<div><h2>Executors<span class="note">seen in the last hour</span></h2>{body}</div>'


def _hourly_section(health: Health) -> str:
    return ('<section><h2>Tasks finished per hour<span class="note">last 24 hours, UTC; '
            'failed stacked in red</span></h2>'
            f'<div class="chart">{bar_chart(health.hourly)}</div></section>')


def _recent_failures_section(health: Health) -> str:
    if not health.recent_failures:
        return ""
    rows = "".join(
        f'<tr><td class="time">{esc(fmt_time(f.finished_at, seconds=True))}</td>'
        f'<td class="name">{_model_link(f.model)}</td>'
        f'<td class="time">{esc(fmt_time(f.window_start))}</td><td>{esc(f.reason)}</td>'
        f'<td class="num">{f.runs}</td><td class="error">{esc(_clip(f.error, 300))}</td></tr>'
        for f in health.recent_failures)
    return ('<section><h2>Recent failures<span class="note">newest first</span></h2>'
            '<table id="failures"><thead><tr><th>Failed at (UTC)</th><th>Model</th><th>Window start</th>'
            f'<th>Reason</th><th class="num">Runs</th><th>Error</th></tr></thead><tbody>{rows}</tbody></table>'
            "</section>")


def _model_link(ref: ModelRef | None) -> str:
    if ref is None:
        return ""
    return f'<a href="{esc(model_href(ref))}">{esc(ref.label)}</a>'


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------- model page

def model_page(detail: ModelDetail, database: str, late_after: timedelta) -> str:
    ref, now, hours = detail.ref, detail.until, detail.hours
    name = ref.label
    heading = (f'<a href="/">latigo</a> · project <a href="{esc(project_href(ref.project))}">{esc(ref.project)}</a>'
               f' · model {esc(ref.name)}')
    if not detail.known:
        body = (f'<p class="empty">latigo knows no task and no prediction of the model {esc(ref.name)} in project '
                f'{esc(ref.project)}.</p><p><a href="/">← all models</a></p>')
        return page(f"latigo — {name}", heading, _meta(now, database), body)
    row = detail.row
    lateness = now - row.last_done_end if row and row.last_done_end else None
    cards = "".join([
        '<section class="cards">',
        card("confidence", "Anomaly confidence", fmt_value(row.confidence if row else None),
             "latest, " + (fmt_time(row.confidence_at) + " UTC" if row and row.confidence_at else "none in 24 h"),
             "bad" if row and row.above else ""),
        card("last-window", "Last predicted window", fmt_time(row.last_done_end if row else None)[11:] or "—",
             (fmt_time(row.last_done_end)[:10] + " UTC, window end") if row and row.last_done_end else "none done",
             ""),
        card("lateness", "Lateness", "never" if lateness is None else fmt_age(lateness), "now − last window end",
             "warn" if lateness is None or lateness > late_after else ""),
        card("newest-state", "Newest task", (row.newest_state if row else None) or "—",
             "window ending " + fmt_time(row.newest_window_end) if row and row.newest_window_end else "", ""),
        "</section>",
    ])
    ranges = " ".join(
        f"<b>{h} h</b>" if h == hours else f'<a href="{esc(model_href(ref, output=detail.output or "", hours=h))}">'
        f"{h} h</a>" for h in RANGES)
    total = line_chart([(TOTAL_CONFIDENCE, detail.total)], detail.since, now, log=True, threshold=THRESHOLD,
                       css_class="total-chart", height=200)
    parts = [cards, '<p><a href="/">← all models</a></p>',
             f'<section><h2>Total anomaly confidence<span class="note">{esc(TOTAL_CONFIDENCE)}, log scale; '
             f'dashed: threshold 1</span></h2><div class="tabs">{ranges}</div>'
             f'<div class="chart">{total}</div></section>']
    parts.append(_tag_section(detail, hours))
    parts.append(_tasks_section(detail))
    return page(f"latigo — {name}", heading, _meta(now, database), "".join(parts))


def _tag_section(detail: ModelDetail, hours: int) -> str:
    if detail.output is None:
        return ('<section><h2>Anomaly per tag</h2><p class="empty">No per-tag anomaly output '
                f'({" or ".join(TAG_OUTPUTS)}) is stored for this model.</p></section>')
    tabs = " ".join(
        f"<b>{esc(o)}</b>" if o == detail.output
        else f'<a href="{esc(model_href(detail.ref, output=o, hours=hours))}">{esc(o)}</a>' for o in detail.outputs)
    confidence = detail.output == "anomaly-confidence"
    lines = [(tag, points) for tag, points in detail.lines.items()]
    chart = line_chart(lines, detail.since, detail.until, log=confidence, threshold=THRESHOLD if confidence else None,
                       css_class="tag-chart", height=320)
    legend = "".join(
        f'<span data-tag="{esc(tag)}"><i style="background:{_color(i)}"></i>{esc(tag)}</span>'
        for i, (tag, _points) in enumerate(lines))
    note = ("per tag, log scale; dashed: threshold 1" if confidence else "per tag, linear scale")
    return (f'<section><h2>Anomaly per tag<span class="note">{esc(note)}</span></h2>'
            f'<div class="tabs">{tabs}</div><div class="chart">{chart}<div class="legend">{legend}</div></div>'
            "</section>")


def _tasks_section(detail: ModelDetail) -> str:
    rows = "".join(
        f'<tr><td class="time">{esc(fmt_time(t.window_start))} – {esc(fmt_time(t.window_end)[11:])}</td>'
        f"<td>{state_badge(t.state)}</td><td class=\"num\">{t.runs}</td><td class=\"num\">{t.attempts}</td>"
        f'<td class="name">{esc(t.executor or "—")}</td>'
        f'<td class="time">{esc(fmt_time(t.finished_at, seconds=True))}</td>'
        f'<td class="num">{"—" if t.duration_ms is None else fmt_int(t.duration_ms) + " ms"}</td>'
        f'<td class="num">{"—" if t.rows is None else fmt_int(t.rows)}</td>'
        f'<td class="revision">{esc(t.revision or "—")}</td>'
        f'<td class="error">{esc(_clip(t.error or "", 300))}</td></tr>' for t in detail.tasks)
    return ('<section><h2>Last tasks<span class="note">newest window first</span></h2>'
            '<table id="tasks"><thead><tr><th>Window (UTC)</th><th>State</th><th class="num">Runs</th>'
            '<th class="num">Failed attempts</th><th>Executor</th><th>Finished (UTC)</th><th class="num">Took</th>'
            f'<th class="num">Rows</th><th>Revision</th><th>Error</th></tr></thead><tbody>{rows}</tbody></table>'
            "</section>")


# ---------------------------------------------------------------------------------------------- SVG

def _color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _dash(index: int) -> str:
    return DASHES[(index // len(PALETTE)) % len(DASHES)]


class _LogScale:
    def __init__(self, lo: float, hi: float, top: float, bottom: float) -> None:
        self.lo, self.hi, self.top, self.bottom = math.log10(lo), math.log10(hi), top, bottom

    def __call__(self, value: float) -> float:
        v = math.log10(min(max(value, 10 ** self.lo), 10 ** self.hi))
        return self.bottom - (v - self.lo) / (self.hi - self.lo) * (self.bottom - self.top)

    def ticks(self) -> list[tuple[float, str]]:
        return [(10.0 ** p, _num(10.0 ** p)) for p in range(round(self.lo), round(self.hi) + 1)]


class _LinearScale:
    def __init__(self, hi: float, top: float, bottom: float) -> None:
        step = _nice_step(hi / 5 if hi > 0 else 0.2)
        self.step, self.hi = step, max(step, math.ceil(hi / step - 1e-9) * step)
        self.top, self.bottom = top, bottom

    def __call__(self, value: float) -> float:
        return self.bottom - min(max(value, 0.0), self.hi) / self.hi * (self.bottom - self.top)

    def ticks(self) -> list[tuple[float, str]]:
        count = round(self.hi / self.step)
        return [(i * self.step, _num(i * self.step)) for i in range(count + 1)]


def _nice_step(raw: float) -> float:
    exponent = math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * 10 ** exponent >= raw:
            return factor * 10 ** exponent
    return 10 ** (exponent + 1)


def _num(value: float) -> str:
    if value >= 1 or value == 0:
        return f"{value:g}"
    return f"{value:.10f}".rstrip("0")


def _log_bounds(values: list[float]) -> tuple[float, float]:
    positive = [v for v in values if v > 0]
    lo = 10 ** math.floor(math.log10(min(positive))) if positive else 0.1
    hi = 10 ** math.ceil(math.log10(max(positive))) if positive else 10
    return min(max(lo, 0.001), 0.1), max(hi, 10)


def _x_ticks(start: datetime, end: datetime) -> list[datetime]:
    span = (end - start).total_seconds() / 3600
    step = next(s for s in (1, 2, 3, 4, 6, 12, 24) if span / s <= 8)
    first = start.replace(minute=0, second=0, microsecond=0)
    while first < start or first.hour % step:
        first += timedelta(hours=1)
    ticks = []
    while first <= end:
        ticks.append(first)
        first += timedelta(hours=step)
    return ticks


def line_chart(lines: Sequence[tuple[str, Points]], start: datetime, end: datetime, *, log: bool = False,
               threshold: float | None = None, css_class: str = "chart", width: int = 1000, height: int = 280) -> str:
    """One polyline per line, over [start, end] (the time axis in UTC), with a y axis, a grid and an optional
    dashed threshold."""
    left, right, top, bottom = 58, 16, 12, height - 34
    span = (end - start).total_seconds() or 1.0
    values = [v for _label, points in lines for _t, v in points]
    if log:
        lo, hi = _log_bounds(values + ([threshold] if threshold else []))
        scale: _LogScale | _LinearScale = _LogScale(lo, hi, top, bottom)
    else:
        scale = _LinearScale(max(values + ([threshold] if threshold else []), default=1.0), top, bottom)

    def x(at: datetime) -> float:
        return left + (at - start).total_seconds() / span * (width - left - right)

    out = [f'<svg class="{esc(css_class)}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'role="img" xmlns="http://www.w3.org/2000/svg">']
    for value, label in scale.ticks():
        y = scale(value)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e9ed"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(label)}</text>')
    for tick in _x_ticks(start, end):
        tx = x(tick)
        label = tick.strftime("%b %d") if tick.hour == 0 else tick.strftime("%H:%M")
        out.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{top}" y2="{bottom}" stroke="#eef0f3"/>'
                   f'<text x="{tx:.1f}" y="{bottom + 16}" text-anchor="middle">{esc(label)}</text>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{bottom}" y2="{bottom}" stroke="#9aa5b1"/>'
               f'<text x="{width - right}" y="{height - 2}" text-anchor="end">time (UTC), '
               f'{esc(fmt_time(start))} – {esc(fmt_time(end))}</text>')
    if threshold is not None:
        ty = scale(threshold)
        out.append(f'<line class="threshold" x1="{left}" x2="{width - right}" y1="{ty:.1f}" y2="{ty:.1f}" '
                   'stroke="#b3261e" stroke-width="1.2" stroke-dasharray="6 4"/>')
    for index, (label, points) in enumerate(lines):
        coords = " ".join(f"{x(t):.1f},{scale(v):.1f}" for t, v in points)
        dash = f' stroke-dasharray="{_dash(index)}"' if _dash(index) else ""
        out.append(f'<polyline class="line" data-tag="{esc(label)}" fill="none" stroke="{_color(index)}" '
                   f'stroke-width="1.7" stroke-linejoin="round"{dash} points="{coords}"><title>{esc(label)}</title>'
                   "</polyline>")
        if len(points) == 1:
            (t, v), = points
            out.append(f'<circle cx="{x(t):.1f}" cy="{scale(v):.1f}" r="2.5" fill="{_color(index)}"/>')
    if not values:
        out.append(f'<text x="{(left + width - right) / 2:.0f}" y="{(top + bottom) / 2:.0f}" text-anchor="middle">'
                   "no values in this range</text>")
    out.append("</svg>")
    return "".join(out)


SPARK_LOW, SPARK_HIGH = 0.1, 100.0


def sparkline(points: Points, start: datetime, end: datetime, above: bool, width: int = 168, height: int = 30) -> str:
    """total-anomaly-confidence over [start, end] on one fixed log scale (0.1–100) for every model, so rows
    compare; the dashed line is the threshold 1."""
    if not points:
        return '<span class="muted">no values</span>'
    scale = _LogScale(SPARK_LOW, SPARK_HIGH, 2, height - 2)
    span = (end - start).total_seconds() or 1.0

    def x(at: datetime) -> float:
        return 1 + (at - start).total_seconds() / span * (width - 4)

    color = "#b3261e" if above else "#4e79a7"
    coords = " ".join(f"{x(t):.1f},{scale(v):.1f}" for t, v in points)
    last_t, last_v = points[-1]
    peak = max(v for _t, v in points)
    return (f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>peak {esc(fmt_value(peak))} in 24 h</title>'
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f7f9fa"/>'
            f'<line x1="0" x2="{width}" y1="{scale(THRESHOLD):.1f}" y2="{scale(THRESHOLD):.1f}" stroke="#c98b86" '
            'stroke-dasharray="3 3"/>'
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" stroke-linejoin="round" points="{coords}"/>'
            f'<circle cx="{x(last_t):.1f}" cy="{scale(last_v):.1f}" r="2.2" fill="{color}"/></svg>')


def bar_chart(hourly: list[tuple[datetime, int, int]], width: int = 1000, height: int = 130) -> str:
    """Tasks finished per hour (done, failed stacked above) for the last 24 hours."""
    left, right, top, bottom = 58, 16, 10, height - 24
    if not hourly:
        return ""
    scale = _LinearScale(max((d + f for _h, d, f in hourly), default=0) or 1, top, bottom)
    slot = (width - left - right) / len(hourly)
    out = [f'<svg class="hourly" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           'xmlns="http://www.w3.org/2000/svg">']
    for value, label in scale.ticks():
        y = scale(value)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eef0f3"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(label)}</text>')
    for index, (hour, done, failed) in enumerate(hourly):
        bx = left + index * slot + 2
        y_done, y_all = scale(done), scale(done + failed)
        title = f"{fmt_time(hour)} UTC: {done} done, {failed} failed"
        out.append(f'<g><title>{esc(title)}</title>'
                   f'<rect x="{bx:.1f}" y="{y_done:.1f}" width="{slot - 4:.1f}" height="{bottom - y_done:.1f}" '
                   'fill="#7a9cc6"/>'
                   f'<rect x="{bx:.1f}" y="{y_all:.1f}" width="{slot - 4:.1f}" height="{y_done - y_all:.1f}" '
                   'fill="#d9544d"/></g>')
        if hour.hour % 3 == 0:
            label = hour.strftime("%b %d") if hour.hour == 0 else hour.strftime("%H:%M")
            out.append(f'<text x="{bx + (slot - 4) / 2:.1f}" y="{bottom + 15}" text-anchor="middle">'
                       f"{esc(label)}</text>")
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{bottom}" y2="{bottom}" stroke="#9aa5b1"/></svg>')
    return "".join(out)


def error_page(status: int, title: str, message: str) -> str:
    return page(f"latigo — {title}", '<a href="/">latigo</a>', esc(title),
                f'<p class="empty">{esc(message)}</p>', refresh=status >= 500)
