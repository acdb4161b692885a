"""Headless Chromium driven over its DevTools protocol (a websocket), for the report's browser test.

Only what the test needs: open a local page with the network cut off, evaluate JavaScript, move the
mouse, take screenshots, and collect console errors, uncaught exceptions and every request made.
Needs the ``chromium`` program (Debian package chromium) and ``websocket-client`` (a test extra).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The Chromium program: $CHROMIUM, else the first of CHROMIUM_NAMES on the PATH."""
    named = os.environ.get("CHROMIUM")
    if named:
        return named
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


class Chromium:
    """One headless Chromium with one page; use as a context manager.

    Args:
        program: the Chromium executable.
        width, height: the window, CSS pixels.
    """

    def __init__(self, program: str, width: int = 1400, height: int = 1000):
        import websocket  # websocket-client

        self.profile = tempfile.mkdtemp(prefix="cryodomain-chromium-")
        arguments = [
            program,
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--hide-scrollbars",
            # WebGL (the 3-D viewer) on the CPU: SwiftShader.
            "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader",
            # No name resolves: nothing can be fetched from the network.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--window-size={width},{height}",
            f"--user-data-dir={self.profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ]
        self.process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port = self._debugging_port()
        pages = [target for target in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10)) if target["type"] == "page"]
        self.socket = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self._id = 0
        self.events: list[dict] = []
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable")
        # And DevTools' own switch: the page is offline.
        self.send("Network.emulateNetworkConditions", offline=True, latency=0, downloadThroughput=-1, uploadThroughput=-1)
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _debugging_port(self, timeout: float = 30.0) -> int:
        """Chromium writes its port to DevToolsActivePort in the profile once it listens."""
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}: {self.process.stderr.read().decode(errors='replace')[-2000:]}")
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            time.sleep(0.1)
        raise RuntimeError("chromium did not open its DevTools port")

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    # -- the protocol ----------------------------------------------------------------------------

    def send(self, method: str, **params) -> dict:
        """Call a DevTools method and return its result; events that arrive meanwhile are kept."""
        self._id += 1
        self.socket.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_for_event(self, method: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        seen = len(self.events)
        while time.monotonic() < deadline:
            for event in self.events[seen:]:
                if event["method"] == method:
                    return event
            seen = len(self.events)
            self.evaluate("0")  # reads the socket, collecting events
            time.sleep(0.05)
        raise TimeoutError(method)

    def evaluate(self, expression: str, *, await_promise: bool = False):
        """The value of a JavaScript expression (JSON-serialisable) in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('exception', {}).get('description', result['exceptionDetails'])}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float = 60.0) -> None:
        """Poll a JavaScript condition until it is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(f"Boolean({expression})"):
                return
            time.sleep(0.2)
        raise TimeoutError(expression)

    # -- what the test does ----------------------------------------------------------------------

    def open(self, path: Path, timeout: float = 120.0) -> None:
        """Load a local file and wait for its load event."""
        self.send("Page.navigate", url=Path(path).resolve().as_uri())
        self.wait_for_event("Page.loadEventFired", timeout)

    def click(self, x: float, y: float) -> None:
        """A left click at viewport coordinates (CSS pixels)."""
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        self.send("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1)
        self.send("Input.dispatchMouseEvent", type="mouseReleased", x=x, y=y, button="left", clickCount=1)

    def scroll_into_view(self, selector: str) -> dict:
        """Scroll an element into view; its bounding box in the viewport (x, y, width, height)."""
        return self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}; })()"
        )

    def screenshot(self, clip: dict | None = None) -> bytes:
        """PNG of the viewport, or of ``clip`` (x, y, width, height in page coordinates)."""
        params: dict = {"format": "png"}
        if clip is not None:
            params.update(clip={**clip, "scale": 1}, captureBeyondViewport=True)
        return base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])

    def element_screenshot(self, selector: str) -> bytes:
        """PNG of one element, scrolled into view first."""
        box = self.scroll_into_view(selector)
        scroll = self.evaluate("[window.scrollX, window.scrollY]")
        return self.screenshot({"x": box["x"] + scroll[0], "y": box["y"] + scroll[1], "width": box["width"], "height": box["height"]})

    def sections_screenshot(self, first: str, last: str, margin: int = 12) -> bytes:
        """PNG of the page from section ``#first`` to section ``#last`` (ids), sticky header hidden.

        What docs/report.png shows (tools/report_screenshot.py).
        """
        box = self.evaluate(
            "(() => { document.querySelector('header').style.position = 'static';"
            f" const a = document.getElementById({json.dumps(first)}).getBoundingClientRect();"
            f" const b = document.getElementById({json.dumps(last)}).getBoundingClientRect();"
            " return {top: a.top + window.scrollY, bottom: b.bottom + window.scrollY, width: document.documentElement.clientWidth}; })()"
        )
        top = max(box["top"] - margin, 0)
        return self.screenshot({"x": 0, "y": top, "width": box["width"], "height": box["bottom"] + margin - top})

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads seen so far."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(f"exception: {details.get('exception', {}).get('description', details.get('text'))}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console.error: " + " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return found

    def requests(self) -> list[str]:
        """The URL of every request the page made."""
        return [event["params"]["request"]["url"] for event in self.events if event["method"] == "Network.requestWillBeSent"]
