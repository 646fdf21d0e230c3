"""A static, filterable view of every evaluation's per-prompt outputs (`samples/*.jsonl` → `samples.html`).

One page, no server: the rows are embedded as JSON and a few lines of inline JavaScript filter them by
evaluation (cell), by a judge's verdict category, by judge disagreement and by free text. Rows may be judged
harmful-score samples ({prompt, output, verdicts, harmful, scores}) or task samples ({input, prediction, correct}).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ..runs import atomic_write_text

PAGE = "samples.html"

_SCRIPT = r"""
const rows = JSON.parse(document.getElementById('data').textContent);
const $ = id => document.getElementById(id);
const judges = [...new Set(rows.flatMap(r => Object.keys(r.verdicts || {})))];
const cats = [...new Set(rows.flatMap(r => Object.values(r.verdicts || {})))].sort();
const files = [...new Set(rows.map(r => r._file))];
for (const f of files) $('file').add(new Option(f, f));
for (const j of judges) $('judge').add(new Option(j, j));
for (const c of cats) $('cat').add(new Option(c, c));
function esc(s) { return String(s ?? '').replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c])); }
function render() {
  const f = $('file').value, j = $('judge').value, c = $('cat').value, q = $('q').value.toLowerCase();
  const dis = $('disagree').checked;
  const out = [];
  for (const r of rows) {
    if (f && r._file !== f) continue;
    const v = r.verdicts || {};
    if (c && !(j ? v[j] === c : Object.values(v).includes(c))) continue;
    if (dis && new Set(Object.values(r.harmful || {})).size < 2) continue;
    const prompt = r.prompt ?? r.input ?? '', output = r.output ?? r.prediction ?? r.answer ?? '';
    if (q && !(prompt + ' ' + output).toLowerCase().includes(q)) continue;
    const chips = Object.entries(v).map(([k, x]) => `<span class="chip ${esc(x)}">${esc(k)}: ${esc(x)}</span>`);
    if ('correct' in r) chips.push(`<span class="chip ${r.correct ? 'ok' : 'harmful'}">${r.correct ? 'correct' : 'wrong'}` +
                                   (r.label != null ? ` (label ${esc(r.label)})` : '') + '</span>');
    out.push(`<tr><td class="f">${esc(r._file)}</td><td>${esc(prompt)}</td><td>${esc(output)}</td><td>${chips.join(' ')}</td></tr>`);
  }
  $('count').textContent = `${out.length} of ${rows.length} rows`;
  $('body').innerHTML = out.join('');
}
for (const id of ['file', 'judge', 'cat', 'q', 'disagree']) $(id).addEventListener('input', render);
render();
"""

_STYLE = ("body{font-family:system-ui,sans-serif;margin:1em 2em;color:#222}table{border-collapse:collapse;width:100%;"
          "font-size:13px}td,th{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}"
          "td.f{color:#666;white-space:nowrap}th{background:#f3f3f3;position:sticky;top:0}"
          ".chip{display:inline-block;border-radius:8px;padding:0 6px;margin:1px;font-size:12px;background:#eee}"
          ".harmful{background:#f8d0d0}.refusal{background:#d4ecd4}.degenerate{background:#fde8b0}"
          ".ok{background:#d4ecd4}"
          ".bar{display:flex;gap:1em;flex-wrap:wrap;align-items:center;margin:1em 0}")


def load_samples(run_dir: Path) -> list[dict[str, Any]]:
    """Every row of every `samples/*.jsonl`, tagged with its file's stem (the evaluation it belongs to)."""
    rows = []
    for f in sorted((run_dir / "samples").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                rows.append({"_file": f.stem.removeprefix("samples-"), **json.loads(line)})
    return rows


def write_sample_view(run_dir: str | Path, title: str = "Per-prompt outputs") -> Path | None:
    """Write `samples.html` next to the report; None when the run kept no samples."""
    run_dir = Path(run_dir)
    rows = load_samples(run_dir)
    if not rows:
        return None
    data = json.dumps(rows, ensure_ascii=False).replace("</", "<\\/")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            "<p><a href='report.html'>← report</a> · each row: the prompt, the model's greedy output and each "
            "judge's verdict (harmful / refusal / degenerate / other), or a task answer and whether it is correct."
            "</p><div class='bar'><label>evaluation <select id='file'><option value=''>all</option></select></label>"
            "<label>judge <select id='judge'><option value=''>any</option></select></label>"
            "<label>verdict <select id='cat'><option value=''>any</option></select></label>"
            "<label><input type='checkbox' id='disagree'> judges disagree</label>"
            "<label>text <input id='q' type='search' placeholder='filter'></label><span id='count'></span></div>"
            "<table><thead><tr><th>evaluation</th><th>prompt</th><th>output</th><th>verdicts</th></tr></thead>"
            "<tbody id='body'></tbody></table>"
            f"<script type='application/json' id='data'>{data}</script><script>{_SCRIPT}</script></body></html>\n")
    path = run_dir / PAGE
    atomic_write_text(path, page)
    return path
