"""report.html in a real headless Chromium: every picture loads, no console error, the table sorts, a screenshot.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (no websocket library, no
port). Skipped with the reason when no Chromium is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium() -> str | None:
    """The Chromium binary on PATH, if any."""
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


class Browser:
    """A headless Chromium and one page, spoken to with the DevTools protocol over a pipe (fds 3 and 4)."""

    def __init__(self, binary: str, profile: Path, timeout: float = 60.0) -> None:
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()

        def connect() -> None:  # in the child: the browser reads commands on fd 3, writes replies to fd 4
            reading, writing = os.dup(to_browser), os.dup(from_browser)  # never 3 or 4 themselves (both taken)
            os.dup2(reading, 3)  # dup2 onto another number: inheritable through exec
            os.dup2(writing, 4)

        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=connect,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self.timeout, self.events, self._buffer, self._next_id = timeout, [], b"", 0
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._in], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        """Send one command, keep the events that arrive meanwhile, return its result."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params}
        if session:
            command["sessionId"] = session
        os.write(self._out, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def page(self, method: str, **params) -> dict:
        """A command to the page."""
        return self.call(method, session=self.session, **params)

    def wait_for(self, method: str) -> dict:
        """The next event ``method`` (or one already received)."""
        deadline = time.monotonic() + self.timeout
        while True:
            found = next((e for e in self.events if e.get("method") == method), None)
            if found is not None:
                self.events.remove(found)
                return found
            self.events.append(self._message(deadline))

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params.get("exceptionDetails", {}))[:300])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in {"error", "assert"}:
                found.append(json.dumps(params.get("args", []))[:300])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(params["entry"].get("text", "") + " " + params["entry"].get("url", ""))
        return found

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page."""
        return self.page("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        """Close the browser (and wait for it)."""
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._in)
        os.close(self._out)


def open_report(report: Path, screenshot: Path, profile: Path, width: int = 1280) -> dict:
    """Load ``report`` from disk, screenshot the whole page; the images' state, the errors and the sort check."""
    binary = chromium()
    assert binary is not None
    browser = Browser(binary, profile)
    try:
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            browser.page(domain)
        browser.page("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
        browser.page("Page.navigate", url=report.resolve().as_uri())
        browser.wait_for("Page.loadEventFired")
        images = browser.evaluate(
            "Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,"
            " width: i.naturalWidth}))"
        )
        first = "Array.from(document.querySelectorAll('#metrics tbody')[0].rows).map(r => r.cells[0].innerText)"
        before = browser.evaluate(first)
        browser.evaluate("document.querySelectorAll('#metrics th')[1].click(); 0")
        ascending = browser.evaluate(first)
        browser.evaluate("document.querySelectorAll('#metrics th')[1].click(); 0")
        descending = browser.evaluate(first)
        browser.evaluate("document.querySelectorAll('#metrics th')[0].click(); 0")  # back to the names' order
        size = browser.page("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": width, "height": min(size["height"], 16000), "scale": 1}
        shot = browser.page("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return {
            "images": images,
            "errors": browser.errors(),
            "rows": (before, ascending, descending),
            "title": browser.evaluate("document.title"),
        }
    finally:
        browser.close()


needs_chromium = pytest.mark.skipif(
    chromium() is None, reason="no Chromium on PATH (Debian: apt-get install chromium); .ci/run installs it"
)


@pytest.mark.slow
@needs_chromium
def test_the_report_opens_offline_with_every_picture_and_no_error(tmp_path):
    from anomalib_multiclass.report import build_report
    from tests.unit.test_report import make_run_folder

    report = build_report(make_run_folder(tmp_path))
    result = open_report(report, tmp_path / "report.png", tmp_path / "profile")
    assert result["errors"] == []
    assert len(result["images"]) == 19
    assert all(i["complete"] and i["width"] > 0 for i in result["images"]), result["images"]
    before, ascending, descending = result["rows"]
    assert sorted(before) == sorted(ascending)
    assert ascending[-1] == "grass"  # n/a sorts last, both ways
    assert descending[-1] == "grass"
    assert ascending[:2] == list(reversed(descending[:2]))
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.slow
@needs_chromium
def test_a_padim_run_on_our_data_writes_a_report_that_opens(synthetic_root, tmp_path):
    """anomalib's own model through the plain CLI: the in-run hook writes report.html, pictures per category."""
    from anomalib.cli import AnomalibCLI

    from tests.integration.test_anomalib_models import PADIM, _common, _data

    AnomalibCLI(["train", *PADIM, *_data(synthetic_root), *_common(tmp_path / "run")])
    (report,) = (tmp_path / "run").rglob("report.html")
    for category in ("brick", "coffee", "grass"):
        assert (report.parent / "images" / category / "test" / "good").is_dir()
    result = open_report(report, tmp_path / "padim.png", tmp_path / "profile")
    assert result["errors"] == []
    assert all(i["width"] > 0 for i in result["images"])
    if (report.parent / "per_image_scores.csv").is_file():  # written by the evaluator (see the report's contract)
        assert len(result["images"]) > 0
