"""The dashboard's page shell and the small helpers every page uses (escaping, numbers, times).

Everything a page needs is inside it: the style sheet and one short script (sorting of tables
with ``class="sortable"``, and the filter of the per-store table). :data:`SCRIPT_HASH` lets the
route send a Content-Security-Policy that allows exactly that script and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

__all__ = [
    "page",
    "esc",
    "num",
    "when",
    "store_link",
    "model_link",
    "table",
    "badge",
    "SCRIPT",
    "SCRIPT_HASH",
    "CONTENT_SECURITY_POLICY",
]

STYLE = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#d9dde5;--bg:#f5f6f8;--card:#fff;--bad:#c0392b;
--good:#1e8449;--warn:#b9770e;--accent:#0072b2}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;
color:var(--fg);background:var(--bg)}
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header .brand{font-weight:600;color:#fff}
header form{margin-left:auto}header button{background:none;border:1px solid #8a94a6;color:#fff;
border-radius:4px;padding:3px 10px;cursor:pointer}
main{padding:16px 24px;max-width:1400px}h1{font-size:20px;margin:4px 0 12px}
h2{font-size:16px;margin:22px 0 8px}section.card,.card{background:var(--card);border:1px solid
var(--line);border-radius:6px;padding:12px 14px;margin-bottom:14px}
.cards{display:flex;flex-wrap:wrap;gap:10px}.stat{background:var(--card);border:1px solid
var(--line);border-radius:6px;padding:8px 12px;min-width:150px}.stat b{display:block;font-size:18px}
.stat small{color:var(--muted)}.stat.bad{border-color:var(--bad)}.stat.bad b{color:var(--bad)}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots svg{background:var(--card);border:1px solid
var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%;background:var(--card)}th,td{padding:5px 8px;
border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}td.msg{white-space:normal}
th{background:#eef0f4;font-weight:600}table.sortable th{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.n{text-align:right;font-variant-numeric:tabular-nums}tr.alerting td:first-child{
border-left:3px solid var(--bad)}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;color:#fff}
.badge.firing{background:var(--bad)}.badge.resolved{background:var(--good)}
.badge.ok{background:var(--good)}.badge.drift{background:var(--bad)}
.muted{color:var(--muted)}.filters{display:flex;gap:14px;align-items:center;margin:6px 0}
.filters input[type=search]{padding:4px 8px;width:260px;border:1px solid var(--line);
border-radius:4px}a{color:var(--accent)}
svg .grid{stroke:#eceef2}svg .axis{stroke:#8a94a6}svg .tick{font-size:10px;fill:#5b6475}
svg .plot-title{font-size:12px;font-weight:600;fill:#1d2330}svg .legend{font-size:11px;fill:#1d2330}
svg .line{fill:none;stroke-width:1.8}svg .threshold{stroke:#c0392b;stroke-dasharray:5 4}
svg .plot-empty{fill:#5b6475;font-size:13px}.card>h2:first-child{margin-top:0}
form.login{max-width:420px}form.login input{width:100%;padding:6px 8px;margin:6px 0 12px;
border:1px solid var(--line);border-radius:4px;font-family:monospace}
form.login button{padding:6px 16px}.error{color:var(--bad)}
"""

SCRIPT = """
(function(){
function val(td){var v=td.getAttribute('data-v');if(v===null)v=td.textContent.trim();
var n=parseFloat(v);return (v!==''&&!isNaN(n)&&isFinite(v))?n:v.toLowerCase();}
document.querySelectorAll('table.sortable').forEach(function(t){
t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
var desc=th.getAttribute('aria-sort')==='ascending';
t.querySelectorAll('th').forEach(function(o){o.removeAttribute('aria-sort');});
th.setAttribute('aria-sort',desc?'descending':'ascending');
var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
rows.sort(function(a,b){var x=val(a.cells[i]),y=val(b.cells[i]);
if(typeof x!==typeof y){x=String(x);y=String(y);}
var c=x<y?-1:x>y?1:0;return desc?-c:c;});
rows.forEach(function(r){body.appendChild(r);});});});});
var q=document.getElementById('store-filter'),only=document.getElementById('alerting-only'),
shown=document.getElementById('stores-shown'),t=document.getElementById('stores');
function filter(){if(!t)return;var text=(q&&q.value||'').toLowerCase(),n=0;
Array.prototype.forEach.call(t.tBodies[0].rows,function(r){
var ok=r.getAttribute('data-store').toLowerCase().indexOf(text)>=0&&
(!only||!only.checked||r.getAttribute('data-alert')==='1');r.hidden=!ok;if(ok)n++;});
if(shown)shown.textContent=n;}
if(q)q.addEventListener('input',filter);if(only)only.addEventListener('change',filter);
})();
"""

SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()

#: Only the page's own inline style and script; no network fetch of any kind.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:;"
    f" script-src 'sha256-{SCRIPT_HASH}'; form-action 'self'; frame-ancestors 'none';"
    " base-uri 'none'"
)


def esc(value: Any) -> str:
    """``value`` as text, HTML-escaped (quotes too, so it is safe in attributes); None is ``-``."""
    return "-" if value is None else escape(str(value), quote=True)


def num(value: Any, digits: int = 3) -> str:
    """A number for a table cell: ``-`` for None/NaN, else ``digits`` significant digits."""
    if value is None:
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return esc(value)
    if not math.isfinite(number):
        return "-"
    if number.is_integer() and abs(number) < 1e15:
        return f"{int(number):,}"
    return esc(f"{number:.{digits}g}")


def when(ms: Any) -> str:
    """An epoch-ms time as ``YYYY-MM-DD HH:MM:SS`` UTC (``-`` for None)."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def store_link(store: Any) -> str:
    store = str(store)
    if store == "*":
        return "all stores"
    return f'<a href="/dashboard/stores/{esc(quote(store, safe=""))}">{esc(store)}</a>'


def model_link(name: Any) -> str:
    return f'<a href="/dashboard/models/{esc(quote(str(name), safe=""))}">{esc(name)}</a>'


def badge(status: Any) -> str:
    kind = "firing" if status == "firing" else "resolved" if status == "resolved" else "ok"
    return f'<span class="badge {kind}">{esc(status)}</span>'


def table(
    headers: Sequence[str],
    rows: Iterable[str],
    *,
    table_id: str | None = None,
    sortable: bool = False,
    empty: str = "nothing yet",
) -> str:
    """A ``<table>``; ``rows`` are ready ``<tr>`` strings (their cells already escaped)."""
    body = "".join(rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="muted">{esc(empty)}</td></tr>'
    attrs = (f' id="{esc(table_id)}"' if table_id else "") + (
        ' class="sortable"' if sortable else ""
    )
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str, *, models: Sequence[str] = (), logout: bool = False) -> str:
    """A whole HTML document: header with links to the overview and each model, then ``body``."""
    links = "".join(f" {model_link(name)}" for name in models)
    out = (
        '<form method="post" action="/dashboard/logout"><button type="submit">Log out</button>'
        "</form>"
        if logout
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · storeml monitor</title><style>{STYLE}</style></head><body>"
        '<header><a class="brand" href="/dashboard">storeml monitor</a>'
        f"<nav>{links}</nav>{out}</header>"
        f"<main>{body}</main><script>{SCRIPT}</script></body></html>"
    )
