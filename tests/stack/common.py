"""Shared helpers of the stack checks: start processes on 127.0.0.1 and wait
for their "listening on" line (bounded), stop everything on exit, drive known
traffic through relaymeter. Python 3 standard library only."""
import atexit
import http.client
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("RELAYMETER_BUILD_DIR", os.path.join(ROOT, "build"))
ARTIFACTS = os.path.join(BUILD, "artifacts")

_procs = []
_tmpdirs = []


def _cleanup():
    for p in reversed(_procs):
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 10
    for p in reversed(_procs):
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    _procs.clear()
    # Keep the children's logs as test artifacts; the temp dirs go.
    for d in _tmpdirs:
        logs = [f for f in os.listdir(d) if f.endswith(".log")] if os.path.isdir(d) else []
        if logs:
            dest = os.path.join(ARTIFACTS, "logs", os.path.basename(d).split("-")[-2] if "-" in d else "run")
            os.makedirs(dest, exist_ok=True)
            for f in logs:
                shutil.copy(os.path.join(d, f), os.path.join(dest, f))
    for d in _tmpdirs:
        shutil.rmtree(d, ignore_errors=True)
    _tmpdirs.clear()


atexit.register(_cleanup)
# SIGTERM/SIGINT/SIGHUP: leave through sys.exit so that atexit stops the children.
for _s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(_s, lambda signum, frame: sys.exit(128 + signum))


def tmpdir(prefix):
    d = tempfile.mkdtemp(prefix=prefix)
    _tmpdirs.append(d)
    return d


def free_port():
    """A port free on 127.0.0.1 now (for programs that cannot bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process whose output lines are kept (and written to a log file);
    wait_for() blocks until a line matches, with a deadline."""

    def __init__(self, name, argv, log_dir, cwd=None):
        self.name = name
        self.log_path = os.path.join(log_dir, name + ".log")
        self._log = open(self.log_path, "w")
        self._lines = queue.Queue()
        self.p = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, errors="replace")
        _procs.append(self.p)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.p.stdout:
            self._log.write(line)
            self._log.flush()
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern, timeout=20):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: no line matching {pattern!r} within {timeout}s (log: {self.log_path})")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.name} exited with {self.p.wait()} before {pattern!r} (log: {self.log_path})")
            m = rx.search(line)
            if m:
                return m

    def tail(self, n=30):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


PRICING = """pricing:
  gpt-4.1:           { input: 8.00,  output: 32.00 }
  claude-sonnet-4.5: { input: 15.00, output: 75.00 }
  gemini-2.5-flash:  { input: 2.50,  output: 10.00 }
  deepseek-v3.2:     { input: 0.42,  output: 1.68 }
"""


def start_pair(work, fake_args=(), extra_config=""):
    """Starts build/fake_upstream and build/relaymeter (port 0 both); returns
    (fake, relaymeter, relaymeter_port)."""
    for b in ("fake_upstream", "relaymeter"):
        if not os.access(os.path.join(BUILD, b), os.X_OK):
            raise RuntimeError(f"{BUILD}/{b} missing: build first (bash scripts/setup.sh --tests)")
    fake = Proc("fake_upstream", [os.path.join(BUILD, "fake_upstream"), "--listen", "127.0.0.1:0", *fake_args], work)
    up = fake.wait_for(r"listening on (127\.0\.0\.1:\d+)").group(1)
    cfg = os.path.join(work, "relaymeter.yaml")
    with open(cfg, "w") as f:
        f.write(f'server: {{ listen: "127.0.0.1:0", threads: 2 }}\n'
                f'upstream: {{ base_url: "http://{up}/v1", api_key: "" }}\n'
                f"{PRICING}log: {{ level: info }}\n{extra_config}")
    rm = Proc("relaymeter", [os.path.join(BUILD, "relaymeter"), "--config", cfg], work, cwd=work)
    port = int(rm.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    return fake, rm, port


def request(port, method, path, body=None, headers=None, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {"Content-Type": "application/json"} if body is not None else {}
        h.update(headers or {})
        c.request(method, path, body=json.dumps(body) if isinstance(body, (dict, list)) else body, headers=h)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def get_json(port, path):
    status, data = request(port, "GET", path)
    if status != 200:
        raise RuntimeError(f"GET {path}: {status} {data[:200]!r}")
    return json.loads(data)


MODELS = ["gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-flash", "deepseek-v3.2", "llama-local"]


def chat(port, model, stream=False):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    return request(port, "POST", "/v1/chat/completions", body)[0]


def drive(port, rounds, stream_every=3):
    """rounds x every model: plain requests, every stream_every-th a stream.
    Returns {model: {status: count}}."""
    seen = {}
    n = 0
    for _ in range(rounds):
        for m in MODELS:
            n += 1
            st = chat(port, m, stream=(n % stream_every == 0))
            seen.setdefault(m, {}).setdefault(st, 0)
            seen[m][st] += 1
    return seen


class Background:
    """Traffic in a thread until stop()."""

    def __init__(self, port, pause_s=0.02):
        self.port, self.pause_s = port, pause_s
        self._stop = threading.Event()
        self.errors = []
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        n = 0
        while not self._stop.is_set():
            try:
                chat(self.port, MODELS[n % len(MODELS)], stream=(n % 3 == 0))
            except Exception as e:  # noqa: BLE001 - reported by stop()
                self.errors.append(repr(e))
                if len(self.errors) > 20:
                    return
            n += 1
            self._stop.wait(self.pause_s)  # pace the load, not a synchronisation

    def stop(self):
        self._stop.set()
        self.t.join(timeout=30)
        return self.errors
