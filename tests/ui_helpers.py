"""Helpers for the MLflow UI browser test: an ``mlflow server`` on 127.0.0.1, headless Chromium driven over
the DevTools protocol (a minimal standard-library WebSocket client, no extra dependency), and the fixture
stores (the sweep CLI, or a sweep-shaped store made with ``MlflowClient`` calls)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

from needs import require_system
from polling import NotYet, wait_for

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1600,1000",
    "--hide-scrollbars", "--mute-audio",
]
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "<no log>"


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop exactly the process group of ``proc`` (started with start_new_session=True): TERM, then KILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):  # helpers left in the group (server workers, renderers)
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)


# --- mlflow server ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def mlflow_server(backend: Path | str, log_path: Path, timeout: float = 45.0, extra: tuple[str, ...] = (),
                  env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``mlflow server`` on a free 127.0.0.1 port over ``backend`` (a SQLite file, or any store URI), with
    ``extra`` arguments; yield its base URL; stop it afterwards."""
    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    uri = f"sqlite:///{backend}" if isinstance(backend, Path) else backend
    cmd = [str(exe) if exe.exists() else "mlflow", "server", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *extra]
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=log_path.parent, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env or {**os.environ, **QUIET_ENV},
                                start_new_session=True)

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                return r.status == 200
        except OSError as e:  # not listening yet
            raise NotYet(f"{base}/health: {e}") from e

    try:
        wait_for(healthy, proc, f"mlflow server on {base} to answer /health", timeout, log=log_path, interval=0.3)
        yield base
    finally:
        stop_group(proc)


# --- headless Chromium over the DevTools protocol -----------------------------------------------------------

def require_chromium() -> str:
    """Debian's chromium; missing, the test is skipped naming it (a failure under CI, which installs it)."""
    require_system(f"{CHROMIUM} (the MLflow UI test drives Debian's headless chromium)",
                   os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK), "apt-get install -y chromium")
    return CHROMIUM


class _WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: text frames, masked from the client."""

    def __init__(self, url: str, timeout: float) -> None:
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the WebSocket handshake")
            head += chunk
        head, self._buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"DevTools refused the WebSocket: {head[:200]!r}")

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("DevTools closed the WebSocket")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def send(self, text: str, opcode: int = 0x1) -> None:
        data = text.encode()
        n = len(data)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode == 0x9:  # ping
                self.send(data.decode(errors="replace"), opcode=0xA)
                continue
            if opcode in (0x0, 0x1, 0x2):
                parts.append(data)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Browser:
    """One headless Chromium with a fresh user-data dir and one page, driven over the DevTools protocol."""

    def __init__(self, workdir: Path, timeout: float = 30.0) -> None:
        self.workdir = workdir
        self.timeout = timeout
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True)
        self.log_path = workdir / "chromium.log"
        cmd = [require_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
               "about:blank"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "HOME": str(workdir)}, start_new_session=True)
        self._id = 0
        self.ws: _WebSocket | None = None
        try:
            port_file = profile / "DevToolsActivePort"
            port = int(wait_for(lambda: port_file.read_text().strip(), self.proc, "chromium's DevTools port",
                                timeout, log=self.log_path, interval=0.1).split()[0])

            def page_target():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    return next((t for t in json.load(r) if t.get("type") == "page"), None)
            page = wait_for(page_target, self.proc, "a page target in chromium", timeout, log=self.log_path,
                            interval=0.1)
            self.ws = _WebSocket(page["webSocketDebuggerUrl"], timeout)
            self.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1,
                      mobile=False)  # the window size is not the viewport in headless mode
        except BaseException:
            self.close()
            raise

    def call(self, method: str, **params):
        assert self.ws is not None
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise AssertionError(f"DevTools {method} failed: {msg['error']}")
                return msg.get("result", {})
        raise AssertionError(f"DevTools {method} got no answer within {self.timeout:.0f} s")

    def js(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"page script failed: {res['exceptionDetails'].get('text')}: {expression[:200]}")
        return res["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        """The rendered text of the page (``innerText``: what is shown, not hidden nodes)."""
        return self.js("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, what: str, predicate: Callable[[str], bool], timeout: float | None = None) -> str:
        """Poll the page text until ``predicate`` holds; fail with ``what`` and the text shown at the end."""
        deadline = time.monotonic() + (timeout or self.timeout)
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if predicate(text):
                return text
            time.sleep(0.25)
        raise AssertionError(f"the page did not show {what} within {timeout or self.timeout:.0f} s; "
                             f"it showed:\n{' '.join(text.split())[:1500]}")

    def wait_js(self, what: str, expression: str, timeout: float | None = None) -> None:
        """Poll the page script ``expression`` until it is truthy; fail naming ``what`` and the text shown."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            if self.js(expression):
                return
            time.sleep(0.25)
        raise AssertionError(f"the page did not show {what} within {timeout or self.timeout:.0f} s; "
                             f"it showed:\n{' '.join(self.text().split())[:1500]}")

    def click_text(self, selector: str, text: str) -> bool:
        """Click the first ``selector`` element whose shown text is ``text``; False when there is none."""
        return bool(self.js(f"""(() => {{
            const el = [...document.querySelectorAll({json.dumps(selector)})]
                .find(e => e.innerText.trim() === {json.dumps(text)});
            if (el) el.click();
            return !!el;
        }})()"""))

    def screenshot(self, path: Path) -> Path:
        self.js("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")  # paint first
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.send(json.dumps({"id": 0, "method": "Browser.close", "params": {}}))
            self.ws.close()
        stop_group(self.proc, grace=3)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- fixture stores -----------------------------------------------------------------------------------------

def run_sweep_cli(tmp: Path, timeout: float = 300.0) -> Path:
    """A store made by the real sweep CLI (``sweeps=smoke``: one study, two trials) in ``tmp/mlflow.db``."""
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "sweeps=smoke", "mlflow.plots=true",
           f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
           f"hydra.sweep.dir={tmp}/multirun", f"hydra.sweeper.storage=sqlite:///{tmp}/optuna.db"]
    log = tmp / "sweep.log"
    with open(log, "wb") as f:
        res = subprocess.run(cmd, cwd=tmp, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                             env={**os.environ, **QUIET_ENV, "SEGSWEEP_CACHE": str(tmp / "cache")})
    if res.returncode != 0:
        raise AssertionError(f"the sweep CLI failed with {res.returncode}; log tail:\n{tail(log)}")
    return tmp / "mlflow.db"


SPLIT_METRICS = ("train/loss", "train/ce", "train/ce_real", "train/ce_synthetic", "train/dice_real",
                 "train/dice_synthetic", "val/mIoU")


def make_client_store(tmp: Path, study: str = "segsweep-smoke", n_children: int = 2) -> Path:
    """Stand-in for the sweep CLI: a parent run (tag segsweep.role=study, named after the study) with
    ``n_children`` child runs (tag mlflow.parentRunId), each with metric histories and a PNG artifact, in
    experiment ``segsweep`` of ``tmp/mlflow.db`` (artifacts beside it in ``tmp/mlartifacts``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow.entities import Metric

    from segsweep.tracking.mlflow_writer import open_client

    db = tmp / "mlflow.db"
    client = open_client(f"sqlite:///{db}")
    exp_id = client.create_experiment("segsweep", artifact_location=(tmp / "mlartifacts").resolve().as_uri())
    parent = client.create_run(exp_id, run_name=study, tags={"segsweep.role": "study"})
    pid = parent.info.run_id
    now = int(time.time() * 1000)
    for t in range(n_children):
        child = client.create_run(exp_id, run_name=f"{study}-trial-{t}",
                                  tags={"mlflow.parentRunId": pid, "segsweep.trial": str(t)})
        cid = child.info.run_id
        client.log_batch(cid, metrics=[Metric(key, round(1.0 / (1 + step) + 0.1 * i + 0.05 * t, 6), now + step, step)
                                       for step in (3, 6, 9) for i, key in enumerate(SPLIT_METRICS)])
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot([3, 6, 9], [1.0, 0.6, 0.4], label="train/ce_real")
        ax.plot([3, 6, 9], [1.2, 0.8, 0.5], label="train/ce_synthetic")
        ax.legend()
        png = tmp / f"figures-{t}" / "training_curves.png"
        png.parent.mkdir()
        fig.savefig(png)
        plt.close(fig)
        client.log_artifact(cid, str(png), "plots")
        client.set_terminated(cid)
    client.set_tag(pid, "best_trial", "0")
    client.set_terminated(pid)
    return db
