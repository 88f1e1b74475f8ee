"""Open a Snakemake HTML report in headless Chromium, show one result, take a screenshot.

    python tools/report_screenshot.py results/report.html --category CLAM \
        --item results/figures/cluster_means.png --out report.png

Snakemake's report is a single-page app: its views are chosen by clicks, not URLs. So the
report is loaded in an iframe of a small wrapper page (file:// pages may script each other
when Chromium runs with ``--allow-file-access-from-files``), the wrapper clicks the
category and then the item, and Chromium screenshots the wrapper. Needs Debian's
``chromium`` package; nothing reaches the network (the report is self-contained).

Exit status 0 when the report loaded, the category and the item were found and, once
shown (its "eye" button), the item's image was displayed; otherwise 1 with the reason. JavaScript errors in
the page (Chromium's console) are printed and also fail the check.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WRAPPER = """<!doctype html><html><head><title>pending</title></head><body style="margin:0">
<iframe id="report" src="{report}" style="width:{width}px;height:{height}px;border:0"></iframe>
<script>
const outcome = {{errors: []}};
const report = () => document.getElementById('report').contentDocument;
const sleep = ms => new Promise(r => setTimeout(r, ms));
async function waitFor(find, ms) {{
  for (let t = 0; t < ms; t += 250) {{ const hit = find(); if (hit) return hit; await sleep(250); }}
  return null;
}}
const click = el => el.dispatchEvent(new MouseEvent('click', {{bubbles: true}}));
window.addEventListener('error', e => outcome.errors.push(String(e.message)));
(async () => {{
  const leaf = text => () => report() && Array.from(report().querySelectorAll('li,a,span,div,td'))
    .find(e => e.children.length === 0 && e.textContent.trim() === text);
  const category = await waitFor(leaf({category}), 20000);
  outcome.category = category ? 1 : 0;
  if (category) {{
    report().defaultView.addEventListener('error', e => outcome.errors.push(String(e.message)));
    click(category);
    const cell = await waitFor(() => Array.from(report().querySelectorAll('td'))
      .find(e => e.textContent.trim() === {item}), 10000);
    const eye = cell && cell.closest('tr').querySelector('a[iconname="eye"]');
    outcome.item = eye ? 1 : 0;
    if (eye) {{
      click(eye);
      // the result itself, not the logo: a decoded image at least 300 pixels wide
      const shown = () => Array.from(report().querySelectorAll('img'))
        .filter(i => i.complete && i.naturalWidth >= 300).length;
      outcome.images = (await waitFor(shown, 10000)) || 0;
      await sleep(500);
    }}
  }}
  document.title = 'outcome:' + JSON.stringify(outcome);
}})();
</script></body></html>
"""


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(
    report: Path, category: str, item: str, out: Path, width: int = 1400, height: int = 1100, timeout: int = 120
) -> dict:
    """Load ``report``, click ``category`` then ``item``; write ``out`` (PNG); return the
    page's outcome: clicks found, images displayed, JavaScript errors, console errors."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = Path(tmp) / "wrapper.html"
        wrapper.write_text(
            WRAPPER.format(
                report=report.resolve().as_uri(),
                width=width,
                height=height,
                category=json.dumps(category),
                item=json.dumps(item),
            )
        )
        common = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            f"--window-size={width},{height}",
            "--virtual-time-budget=45000",
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={tmp}/profile",
        ]
        # one page load: the DOM (with the outcome in its title) and the screenshot of it
        dom = subprocess.run(
            [*common, "--dump-dom", f"--screenshot={out.resolve()}", wrapper.as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    title = re.search(r"<title>outcome:(.*?)</title>", dom.stdout, re.S)
    outcome = json.loads(title.group(1).replace("&quot;", '"')) if title else {"errors": ["the page never finished"]}
    outcome["console_errors"] = [
        line for line in dom.stderr.splitlines() if ":CONSOLE" in line and re.search(r"error|uncaught", line, re.I)
    ]
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--category", default="CLAM")
    parser.add_argument("--item", default="results/figures/cluster_means.png")
    parser.add_argument("--out", type=Path, default=Path("report.png"))
    args = parser.parse_args()
    outcome = screenshot(args.report, args.category, args.item, args.out)
    print(json.dumps(outcome, indent=1))
    problems = []
    if not outcome.get("category"):
        problems.append(f"category {args.category!r} not found")
    if not outcome.get("item"):
        problems.append(f"item {args.item!r} not found")
    if not outcome.get("images"):
        problems.append("no image displayed")
    problems += [f"JavaScript error: {e}" for e in outcome.get("errors", []) + outcome["console_errors"]]
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"screenshot: {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
