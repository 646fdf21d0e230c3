"""The HTML report and its sample view in a real headless browser (Chromium): every image loads, the Markdown is
rendered (no literal `**`), every table row has its header's width, and the sample view's JavaScript renders
and filters the rows as a reader would use it. An HTML parser alone cannot see a broken image or a script
error; the browser can.

Skipped where no Chromium is installed (it is a Debian package: `apt-get install chromium`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .test_report import build_hft_report

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium on this machine")

# Appended to a copy of the page: after load, the page reports what a reader would see into a <pre id=check>
# that --dump-dom prints.
_PROBE = """
<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const tables = [...document.querySelectorAll('table')].map(t => {
    const head = t.tHead ? t.tHead.rows[0].cells.length : null;
    const widths = [...t.tBodies].flatMap(b => [...b.rows]).map(r =>
        [...r.cells].reduce((n, c) => n + c.colSpan, 0));
    return {head, widths};
  });
  const act = window.__act ? window.__act() : null;
  const pre = document.createElement('pre');
  pre.id = 'check';
  pre.textContent = JSON.stringify({
    images: imgs.map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0,
                            w: i.naturalWidth})),
    tables, act,
    stars: document.body.innerText.includes('**'),
    errors: window.__errors || [],
  });
  document.body.appendChild(pre);
});
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message)));
</script>
"""


def browse(page: Path, act: str = "") -> dict:
    """Load `page` (a copy next to it, with the probe) in headless Chromium; the probe's JSON."""
    probe = page.with_name(f"_probe_{page.name}")
    # The probe goes first so that its error listener sees errors of the page's own scripts.
    text = page.read_text()
    head = "<script>window.__act = () => {" + act + "};</script>" if act else ""
    probe.write_text(text.replace("<body>", "<body>" + _PROBE + head, 1) if "<body>" in text
                     else _PROBE + head + text)
    out = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="check">(.*?)</pre>', out.stdout, re.S)
    assert m, f"no probe output; stderr tail: {out.stderr[-500:]}"
    import html

    return json.loads(html.unescape(m.group(1)))


def test_report_renders_in_chromium(tmp_path):
    run = build_hft_report(tmp_path)
    seen = browse(run / "report.html")
    assert seen["errors"] == []
    assert seen["images"] and all(i["ok"] for i in seen["images"]), seen["images"]
    assert not seen["stars"]
    assert len(seen["tables"]) >= 3
    for t in seen["tables"]:
        assert t["widths"] and all(w == (t["head"] or t["widths"][0]) for w in t["widths"]), t


def test_sample_view_filters_in_chromium(tmp_path):
    run = build_hft_report(tmp_path)
    rows = [json.loads(x) for f in sorted((run / "samples").glob("*.jsonl")) for x in f.read_text().splitlines()]
    disagree = sum(1 for r in rows if len(set((r.get("harmful") or {}).values())) >= 2)
    harmful_sft = sum(1 for x in (run / "samples" / "samples-attack-sft-harmful-n100.jsonl").read_text().splitlines()
                      if json.loads(x)["verdicts"]["embedded"] == "harmful")
    # The reader's actions, run by the probe after load: all rows, then "judges disagree", then one evaluation
    # and one judge's "harmful" verdict.
    act = """
      const $ = id => document.getElementById(id), n = () => document.querySelectorAll('#body tr').length;
      const all = n();
      $('disagree').checked = true; $('disagree').dispatchEvent(new Event('input'));
      const dis = n();
      $('disagree').checked = false; $('file').value = 'attack-sft-harmful-n100';
      $('judge').value = 'embedded'; $('cat').value = 'harmful'; $('cat').dispatchEvent(new Event('input'));
      return {all, dis, sft_harmful: n(), count: $('count').textContent};
    """
    seen = browse(run / "samples.html", act)
    assert seen["errors"] == []
    assert seen["act"]["all"] == len(rows)
    assert seen["act"]["dis"] == disagree
    assert seen["act"]["sft_harmful"] == harmful_sft == 26
    assert seen["act"]["count"] == f"26 of {len(rows)} rows"
