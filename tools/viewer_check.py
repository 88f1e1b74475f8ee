"""Open the viewer page (results/viewer/index.html) in headless Chromium and check it.

    python tools/viewer_check.py results/viewer/index.html --out viewer.png

Drives Debian's ``chromium`` over the DevTools protocol on a pipe (``--remote-debugging-pipe``;
no port, no extra Python package), with software WebGL2 (ANGLE on SwiftShader), and:

- loads the page from ``file://`` and records every network request Chromium reports,
  every console error, JavaScript exception and browser log error;
- times the load: milliseconds from navigation start until the page's first view is
  drawn (``lungclamViewer.ready``), measured by the page's own clock;
- shows the page's default view (cluster 1 on the template), then another cluster, the
  population mean and two subjects in turn; after each, reads the page's statement of what
  it shows and screenshots the canvas, counting its non-black pixels and comparing it with
  the view before;
- moves the threshold and opacity sliders, checking that the canvas changes each time;
- clicks the axial and sagittal views to find where the patient's right and anterior are
  on screen (radiological view: right on the left, anterior at the top; in sagittal views
  anterior on the left, as in the PNG figures);
- writes a screenshot of the last subject, sliders and crosshair as the page first set
  them, as ``--out``.

A split viewer's pages (a large cohort: ``index.html`` plus ``subjects/{subject}.html``)
are walked as far as each shows: on the index the clusters and the population mean, then
its first subject's link is clicked and, on that subject's page, the subject, the sliders
and the orientation are checked, and that its link back leads to the index. Such a page
may load its own scripts (NiiVue, shared by the subject pages) from disk beside it; any
other request counts as a network request.

Prints the outcome as JSON; exit status 1 when anything above failed (the reasons on stderr).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import io
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from report_screenshot import find_chromium  # tools/ is on sys.path: run as a script or by the tests

WIDTH, HEIGHT = 1400, 800


class DevTools:
    """A minimal DevTools-protocol client over Chromium's pipe (fd 3 in, fd 4 out;
    messages are JSON texts ended by a NUL byte)."""

    def __init__(self, chromium: str, profile: str, flags: list[str]):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # the child's ends move to fds of 10 and up first, so that none of them is 3 or 4
        to_chrome_r, from_chrome_w = (self._above_ten(fd) for fd in (to_chrome_r, from_chrome_w))
        # bash moves the pipe ends to fds 3 and 4, where Chromium looks for them
        script = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, chromium, "--remote-debugging-pipe", f"--user-data-dir={profile}", *flags],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    @staticmethod
    def _above_ten(fd: int) -> int:
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
        os.close(fd)
        return moved

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60.0) -> dict:
        """Send one command and wait for its answer; events seen meanwhile are kept."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            command["sessionId"] = session
        os.write(self._to_chrome, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_event(self, method: str, timeout: float = 60.0, since: int = 0) -> dict:
        """The first ``method`` event from the ``since``-th kept event on, waiting for one."""
        deadline = time.monotonic() + timeout
        for event in self.events[since:]:
            if event.get("method") == method:
                return event
        while True:
            message = self._read_message(deadline)
            self.events.append(message)
            if message.get("method") == method:
                return message

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def _evaluate(tools: DevTools, session: str, expression: str, timeout: float = 60.0):
    result = tools.send(
        "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}, session, timeout
    )
    if "exceptionDetails" in result:
        raise RuntimeError(
            f"{expression}: {result['exceptionDetails'].get('text')} "
            f"{result['exceptionDetails'].get('exception', {}).get('description', '')}"
        )
    return result["result"].get("value")


def _canvas_pixels(tools: DevTools, session: str) -> np.ndarray:
    """The canvas as drawn on screen: RGB uint8 array (rows, columns, 3)."""
    box = _evaluate(
        tools,
        session,
        "(() => { const r = document.getElementById('gl').getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()",
    )
    shot = tools.send(
        "Page.captureScreenshot",
        {"format": "png", "clip": {"x": box[0], "y": box[1], "width": box[2], "height": box[3], "scale": 1}},
        session,
    )
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB"))


def _click_world(tools: DevTools, session: str, fx: float, fy: float) -> list[float]:
    """Click the canvas at fractions (fx, fy) of its width and height; the crosshair's
    world position then (RAS, mm)."""
    box = _evaluate(
        tools,
        session,
        "(() => { const r = document.getElementById('gl').getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()",
    )
    x, y = box[0] + fx * box[2], box[1] + fy * box[3]
    for kind in ("mousePressed", "mouseReleased"):
        tools.send(
            "Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}, session
        )
    return _evaluate(
        tools, session, "Array.from(lungclamViewer.nv.frac2mm(lungclamViewer.nv.scene.crosshairPos)).slice(0, 3)"
    )


def _orientation(tools: DevTools, session: str) -> dict:
    """Where the patient's sides are on screen, found by clicking: in the axial view the
    world x (RAS: + is the patient's right) and y (+ anterior) at the left and right, top
    and bottom of the middle; in the sagittal view y at the left and right. Leaves the page
    in its multiplanar view, the crosshair where the page first put it."""

    def view(name: str) -> None:
        _evaluate(
            tools,
            session,
            f"(() => {{ const r = document.querySelector('input[name=slice][value={name}]');"
            " r.checked = true; r.dispatchEvent(new Event('change')); return 1; })()",
        )

    view("AXIAL")
    left, right = _click_world(tools, session, 0.4, 0.5), _click_world(tools, session, 0.6, 0.5)
    top, bottom = _click_world(tools, session, 0.5, 0.3), _click_world(tools, session, 0.5, 0.7)
    view("SAGITTAL")
    sag_left, sag_right = _click_world(tools, session, 0.4, 0.5), _click_world(tools, session, 0.6, 0.5)
    view("MULTIPLANAR")
    _evaluate(
        tools,
        session,
        "(() => { const V = lungclamViewer; V.nv.scene.crosshairPos = "
        "V.nv.mm2frac(V.data.start_mm); V.nv.drawScene(); V.nv.createOnLocationChange();"
        " return 1; })()",
    )
    return {
        "axial_screen_left_is_patient_right": left[0] > right[0],
        "axial_screen_top_is_anterior": top[1] > bottom[1],
        "sagittal_screen_left_is_anterior": sag_left[1] > sag_right[1],
    }


def _problems_in(events: list[dict], allowed: set[str]) -> tuple[list[str], list[str]]:
    """(network requests other than to the ``allowed`` URLs (the pages opened and their own
    file:// scripts), errors) among the DevTools events."""
    requests, errors = [], []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if url not in allowed and not url.startswith("data:"):
                requests.append(url)
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append(f"exception: {details.get('text')} {details.get('exception', {}).get('description', '')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(
                "console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            )
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
    return requests, errors


def _opened(tools: DevTools, session: str, since: int, timeout: float) -> dict:
    """Wait for the page navigated to (the ``since``-th event on) to draw its first view:
    its URL, kind (``all``, ``index`` or ``subject``), load time and timings, and the
    file:// URLs of the scripts it loads from disk (none but a split viewer's NiiVue)."""
    tools.wait_event("Page.loadEventFired", timeout, since)
    load_ms = _evaluate(
        tools,
        session,
        "window.lungclamViewer.ready.then(() => document.body.dataset.ready === '1' ? performance.now() : -1)",
        timeout,
    )
    return {
        "load_ms": load_ms,
        "timings_ms": _evaluate(tools, session, "lungclamViewer.timings"),
        "kind": _evaluate(tools, session, "lungclamViewer.data.page || 'all'"),
        "url": _evaluate(tools, session, "location.href"),
        "scripts": [
            u
            for u in _evaluate(tools, session, "Array.from(document.scripts, s => s.src).filter(Boolean)")
            if u.startswith("file:")
        ],
    }


def _views(kind: str, data: dict) -> list[dict]:
    """The views to walk through on a page of ``kind``, as the page first shows them, then
    others, then the sliders."""
    if kind == "subject":
        s = data["subjects"][0]
        views: list[dict] = [{"subject": s["id"], "expect_cluster": s["cluster"], "initial": True}]
    else:
        views = [{"cluster": data["clusters"][0], "initial": True}]  # as the page opened
        if len(data["clusters"]) > 1:
            views.append({"cluster": data["clusters"][1]})
        views.append({"population": True})
    if kind == "all":
        first_of = {}
        for s in data["subjects"]:
            first_of.setdefault(s["cluster"], s)
        views += [{"subject": s["id"], "expect_cluster": s["cluster"]} for s in list(first_of.values())[:2]]
    if kind != "index":  # on a split viewer's index, the sliders are checked on the subject page
        # the sliders, moved as a user would: the overlay must change with each
        views += [{"slider": "threshold", "value": 0.6}, {"slider": "opacity", "value": 1.0}]
    return views


def _walk(
    tools: DevTools, session: str, views: list[dict], records: list[dict], before: np.ndarray | None, timeout: float
) -> np.ndarray | None:
    """Show each view in turn, recording what the page says and how its canvas looks and
    changed (into ``records``); returns the last canvas."""
    for view in views:
        if "slider" in view:
            _evaluate(
                tools,
                session,
                f"(() => {{ const e = document.getElementById('{view['slider']}');"
                f" e.value = {view['value']}; e.dispatchEvent(new Event('input'));"
                " return e.value; })()",
            )
        elif not view.get("initial"):
            selection = (
                {"subject": view["subject"]}
                if "subject" in view
                else {"cluster": view["cluster"]}
                if "cluster" in view
                else {}
            )
            _evaluate(tools, session, f"lungclamViewer.show({json.dumps(selection)})", timeout)
        _evaluate(tools, session, "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(1))))")
        pixels = _canvas_pixels(tools, session)
        lit = pixels.max(axis=2) > 16
        record = {
            **view,
            "showing": _evaluate(tools, session, "document.getElementById('showing').textContent"),
            "canvas": list(pixels.shape[:2]),
            "lit_fraction": round(float(lit.mean()), 4),
            "colours": int(
                len(
                    np.unique(pixels.reshape(-1, 3).astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32))
                )
            ),
        }
        if before is not None and before.shape == pixels.shape:
            record["changed_fraction"] = round(float((np.abs(pixels.astype(int) - before).max(axis=2) > 8).mean()), 4)
        before = pixels.astype(int)
        records.append(record)
    return before


def _follow_first_subject(
    tools: DevTools,
    session: str,
    index_url: str,
    outcome: dict,
    allowed: set[str],
    before: np.ndarray | None,
    timeout: float,
) -> np.ndarray | None:
    """On a split viewer's index: click the first subject's link, check the subject page it
    opens (views, sliders) and that page's link back to the index (``outcome["links"]``)."""
    link = _evaluate(
        tools,
        session,
        "(() => { const a = document.querySelector('a.subject-page'); return a ? [a.href, a.textContent] : null; })()",
    )
    outcome["links"] = {"index_to_subject": False, "subject_to_index": False}
    if link is None:
        return before
    since = len(tools.events)
    _evaluate(tools, session, "(() => { document.querySelector('a.subject-page').click(); return 1; })()")
    opened = _opened(tools, session, since, timeout)
    allowed |= {opened["url"], *opened["scripts"]}
    outcome["subject_page"] = {k: opened[k] for k in ("url", "kind", "load_ms", "timings_ms", "scripts")}
    data = _evaluate(
        tools,
        session,
        "({clusters: lungclamViewer.data.clusters.map(c => c.k), subjects: lungclamViewer.data.subjects})",
    )
    outcome["links"]["index_to_subject"] = (
        opened["kind"] == "subject" and len(data["subjects"]) == 1 and data["subjects"][0]["id"] == link[1]
    )
    back = _evaluate(
        tools, session, "(() => { const a = document.getElementById('index-link'); return a ? a.href : null; })()"
    )
    outcome["links"]["subject_to_index"] = back == index_url
    return _walk(tools, session, _views(opened["kind"], data), outcome["views"], before, timeout)


def check_viewer(page: Path, out: Path, chromium: str | None = None, timeout: float = 120.0) -> dict:
    """Open ``page`` and walk through its views (module docstring); return the outcome."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--use-gl=angle",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--ignore-gpu-blocklist",
        f"--window-size={WIDTH},{HEIGHT}",
        "--hide-scrollbars",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-sync",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-extensions",
        "--force-device-scale-factor=1",
    ]
    url = page.resolve().as_uri()
    outcome: dict = {"page": str(page), "page_mb": round(page.stat().st_size / 1e6, 2), "views": []}
    allowed = {url}
    with tempfile.TemporaryDirectory() as profile:
        tools = DevTools(chromium, profile, flags)
        try:
            target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Network", "Log"):
                tools.send(f"{domain}.enable", session=session)
            tools.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
                session,
            )
            started = time.monotonic()
            tools.send("Page.navigate", {"url": url}, session)
            opened = _opened(tools, session, 0, timeout)
            outcome["load_wall_s"] = round(time.monotonic() - started, 2)
            outcome.update({k: opened[k] for k in ("load_ms", "timings_ms", "kind")})
            allowed |= set(opened["scripts"])
            data = _evaluate(
                tools,
                session,
                "({clusters: lungclamViewer.data.clusters.map(c => c.k), subjects: lungclamViewer.data.subjects})",
            )
            outcome["subjects"] = [[s["id"], s["cluster"]] for s in data["subjects"]]
            before = _walk(tools, session, _views(opened["kind"], data), outcome["views"], None, timeout)
            if opened["kind"] == "index":
                before = _follow_first_subject(tools, session, url, outcome, allowed, before, timeout)
            # back to the page's own slider settings, for the screenshot
            _evaluate(
                tools,
                session,
                "(() => { for (const id of ['threshold', 'opacity']) { const e = "
                "document.getElementById(id); e.value = lungclamViewer.data[id]; "
                "e.dispatchEvent(new Event('input')); } return 1; })()",
            )
            outcome["orientation"] = _orientation(tools, session)
            shot = tools.send("Page.captureScreenshot", {"format": "png"}, session)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(shot["data"]))
        finally:
            tools.close()
    outcome["requests"], outcome["errors"] = _problems_in(tools.events, allowed)
    return outcome


def problems(outcome: dict) -> list[str]:
    """What in an outcome of :func:`check_viewer` is wrong (empty: all is well)."""
    found = [f"network request: {u}" for u in outcome["requests"]] + [f"error: {e}" for e in outcome["errors"]]
    found += [
        f"orientation: not {name}"
        for name, holds in outcome.get("orientation", {"checked": False}).items()
        if not holds
    ]
    if outcome.get("load_ms", -1) < 0:
        found.append("the page never finished drawing its first view")
    if outcome.get("kind") == "index" and "links" not in outcome:
        found.append("a split viewer's index, but its subject links were not followed")
    found += [f"link: {name} does not lead where it should" for name, ok in outcome.get("links", {}).items() if not ok]
    if outcome.get("subject_page", {}).get("load_ms", 0) < 0:
        found.append("the subject page never finished drawing its first view")
    for view in outcome["views"]:
        name = json.dumps({k: v for k, v in view.items() if k in ("subject", "cluster", "population")})
        if view["lit_fraction"] < 0.02 or view["colours"] < 20:
            found.append(
                f"view {name}: the canvas is blank ({view['lit_fraction']:.1%} lit, {view['colours']} colours)"
            )
        if "changed_fraction" in view and view["changed_fraction"] < 0.005:
            found.append(f"view {name}: the canvas did not change ({view['changed_fraction']:.2%} of pixels)")
        text = view["showing"]
        if "subject" in view and not (
            f"Subject {view['subject']}," in text and f"cluster {view['expect_cluster']} " in text
        ):
            found.append(f"view {name}: the page says {text!r}")
        if "cluster" in view and not text.startswith(f"Cluster {view['cluster']} "):
            found.append(f"view {name}: the page says {text!r}")
        if "population" in view and not text.startswith("Population"):
            found.append(f"view {name}: the page says {text!r}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--out", type=Path, default=Path("viewer.png"))
    args = parser.parse_args()
    outcome = check_viewer(args.page, args.out)
    print(json.dumps(outcome, indent=1))
    for problem in problems(outcome):
        print(problem, file=sys.stderr)
    print(f"screenshot: {args.out}")
    return 1 if problems(outcome) else 0


if __name__ == "__main__":
    sys.exit(main())
