#!/usr/bin/env python3
"""Load and soak driver for bench/soak.sh (python3 stdlib only, one asyncio loop).

soak.sh builds, starts fake_upstream and relaymeter and passes their pids and
ports here. This program:

  * holds --clients keep-alive connections, each sending one plain JSON chat
    completion every --plain-period seconds (random phase, model per client,
    random max_tokens), and --streams connections, each running
    "stream": true chat completions back to back (half of them asking for
    stream_options.include_usage) for --duration seconds;
  * checks every answer: status 200, the JSON body's usage, each stream's
    content, its [DONE], the usage chunk present exactly when asked for;
  * samples relaymeter every --sample-interval seconds: VmRSS, VmHWM, threads,
    open fds (client sockets, upstream sockets, other), CPU, /summary totals;
  * at the end closes every client, waits for the client sockets to go, waits
    out the upstream pool's idle limit, sends a few probes on fresh
    connections, and compares relaymeter's /summary with what the clients
    received: requests, tokens (exact integers) and cost (the contract formula,
    summed exactly in decimal);
  * prints the report and PASS/FAIL lines; exit status 0 only if all pass.

Every wait here is bounded by a deadline.
"""
import argparse
import asyncio
import json
import math
import os
import random
import resource
import sys
import time
from collections import Counter, defaultdict
from decimal import Decimal

CLK_TCK = os.sysconf("SC_CLK_TCK")
REQUEST_TIMEOUT = 30.0  # per request or stream, client side


def log(*a):
    print("[soak]", *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- /proc

def proc_status(pid):
    r = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                r[k] = int(v.split()[0])
            elif k == "Threads":
                r[k] = int(v)
    return r


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def machine_cpu():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]  # total, idle + iowait


def tcp_table():
    """inode -> (local port, remote port, state hex) for IPv4 and IPv6 TCP sockets."""
    out = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    p = line.split()
                    lport = int(p[1].rsplit(":", 1)[1], 16)
                    rport = int(p[2].rsplit(":", 1)[1], 16)
                    out[p[9]] = (lport, rport, p[3])
        except OSError:
            pass
    return out


def fd_census(pid, rm_port, fake_port):
    """Open fds of pid by kind: total, listen, client (accepted from clients),
    client_close_wait, upstream (to the fake), other_socket, other."""
    c = Counter()
    table = tcp_table()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        c["total"] += 1
        if not target.startswith("socket:["):
            c["other"] += 1
            continue
        ent = table.get(target[8:-1])
        if ent is None:
            c["other_socket"] += 1
        elif ent[2] == "0A":
            c["listen"] += 1
        elif ent[0] == rm_port:
            c["client"] += 1
            if ent[2] == "08":
                c["client_close_wait"] += 1
        elif ent[1] == fake_port:
            c["upstream"] += 1
        else:
            c["other_socket"] += 1
    for k in ("total", "listen", "client", "client_close_wait", "upstream", "other_socket", "other"):
        c.setdefault(k, 0)
    return dict(c)


# ---------------------------------------------------------------- HTTP/1.1 over asyncio streams

class HttpError(Exception):
    pass


async def read_response(reader, on_chunk=None):
    """Returns (status, headers, body). on_chunk(bytes) sees each chunk of a chunked body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise HttpError(f"bad status line {lines[0]!r}")
    hdrs = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
    if "chunked" in hdrs.get("transfer-encoding", "").lower():
        parts = []
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                break
            data = await reader.readexactly(size + 2)
            if data[-2:] != b"\r\n":
                raise HttpError("bad chunk framing")
            parts.append(data[:-2])
            if on_chunk:
                on_chunk(data[:-2])
        body = b"".join(parts)
    elif "content-length" in hdrs:
        body = await reader.readexactly(int(hdrs["content-length"]))
    else:
        raise HttpError("response without Content-Length or chunked framing")
    return status, hdrs, body


def post(path, port, body):
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer sk-soak\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def http_get(port, path, timeout=10.0):
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        status, _, body = await asyncio.wait_for(read_response(reader), timeout)
        return status, body
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


# ---------------------------------------------------------------- the run

class Soak:
    def __init__(self, a):
        self.a = a
        self.prices = {}
        for spec in a.price:
            name, _, rest = spec.partition("=")
            inp, cached, out = rest.split(":")
            self.prices[name] = (Decimal(inp), Decimal(inp) if cached == "-" else Decimal(cached), Decimal(out))
        self.models = sorted(self.prices)
        self.content = "Hello" + "".join(f" tok{k}" for k in range(1, a.chunks))
        # what the clients received, per model
        self.got = defaultdict(lambda: {"requests": 0, "streams": 0, "input": 0, "output": 0, "cached": 0,
                                        "cost": Decimal(0)})
        self.sent = Counter()       # plain, stream, probe
        self.done = Counter()       # likewise, completed and valid
        self.stream_usage = Counter()  # asked / not asked, completed
        self.errors = Counter()
        self.error_examples = []
        self.lat = {"plain": [], "stream": [], "ttfc": []}
        self.connects = Counter()
        self.stop_at = None
        self.samples = []
        self.open_conns = 0

    # ---- bookkeeping

    def error(self, kind, detail=""):
        self.errors[kind] += 1
        if len(self.error_examples) < 30:
            self.error_examples.append(f"t={self.now():.1f}s {kind}: {detail}"[:300])

    def now(self):
        return time.monotonic() - self.t0

    def expected_usage(self, max_tokens):
        a = self.a
        return a.prompt_tokens, min(a.completion_tokens, max_tokens), a.cached_tokens

    def account(self, model, inp, out, cached, streamed):
        g = self.got[model]
        g["requests"] += 1
        g["streams"] += streamed
        g["input"] += inp
        g["output"] += out
        g["cached"] += cached
        pi, pc, po = self.prices[model]
        c = min(cached, inp)
        g["cost"] += ((inp - c) * pi + c * pc + out * po) / Decimal(1000000)

    def check_usage(self, u, max_tokens):
        """(input, output, cached) from an OpenAI usage object, or None if it is not what the fake sends."""
        try:
            got = (int(u["prompt_tokens"]), int(u["completion_tokens"]),
                   int((u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)))
        except (KeyError, TypeError, ValueError):
            return None
        return got if got == self.expected_usage(max_tokens) else None

    # ---- connections

    async def connect(self, sem):
        for attempt in range(5):
            async with sem:
                try:
                    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.a.port), 10)
                    self.connects["ok"] += 1
                    self.open_conns += 1
                    return r, w
                except (OSError, asyncio.TimeoutError) as e:
                    self.error("connect", repr(e))
            await asyncio.sleep(1.0)
        return None

    async def close(self, conn):
        if conn is None:
            return
        _, w = conn
        self.open_conns -= 1
        w.close()
        try:
            await w.wait_closed()
        except OSError:
            pass

    # ---- clients

    async def plain_client(self, i, sem):
        a = self.a
        rnd = random.Random(a.seed * 100003 + i)
        model = self.models[i % len(self.models)]
        conn = await self.connect(sem)
        nxt = self.t_load + rnd.uniform(0, a.plain_period)
        n = 0
        while True:
            now = time.monotonic()
            if nxt >= self.stop_at:
                # keep the connection open until the end of the load
                await asyncio.sleep(max(0.0, self.stop_at - now))
                break
            if nxt > now:
                await asyncio.sleep(nxt - now)
            nxt += a.plain_period * rnd.uniform(0.9, 1.1)
            if conn is None:
                conn = await self.connect(sem)
                if conn is None:
                    continue
            n += 1
            max_tokens = rnd.randint(1, a.completion_tokens + a.completion_tokens // 3)
            req = {"model": model, "messages": [{"role": "user", "content": f"soak client {i} request {n}"}],
                   "max_tokens": max_tokens}
            if n % 2:
                req["stream"] = False
            ok = await self.exchange(conn, "plain", model, req, max_tokens)
            if not ok:
                await self.close(conn)
                conn = None
        await self.close(conn)

    async def stream_client(self, i, sem):
        a = self.a
        rnd = random.Random(a.seed * 100019 + 7 * i + 1)
        conn = await self.connect(sem)
        # stream clients start spread over the first second, then run back to back
        await asyncio.sleep(max(0.0, self.t_load + rnd.uniform(0, 1.0) - time.monotonic()))
        n = 0
        while time.monotonic() < self.stop_at:
            if conn is None:
                conn = await self.connect(sem)
                if conn is None:
                    continue
            n += 1
            model = self.models[(i + n) % len(self.models)]
            max_tokens = rnd.randint(1, a.completion_tokens + a.completion_tokens // 3)
            req = {"model": model, "stream": True,
                   "messages": [{"role": "user", "content": f"soak stream {i} request {n}"}],
                   "max_tokens": max_tokens}
            if (i + n) % 2:
                req["stream_options"] = {"include_usage": True}
            ok = await self.exchange(conn, "stream", model, req, max_tokens)
            if not ok:
                await self.close(conn)
                conn = None
            if a.stream_pause > 0:
                await asyncio.sleep(rnd.uniform(0, a.stream_pause))
        await self.close(conn)

    async def exchange(self, conn, kind, model, req, max_tokens):
        """One request on a keep-alive connection. True if the connection can be reused."""
        reader, writer = conn
        body = json.dumps(req, separators=(",", ":")).encode()
        self.sent[kind] += 1
        t0 = time.monotonic()
        first = []
        try:
            writer.write(post("/v1/chat/completions", self.a.port, body))
            status, hdrs, resp = await asyncio.wait_for(
                read_response(reader, (lambda c: first.append(time.monotonic()) if not first else None)
                              if kind == "stream" else None), REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            self.error(f"{kind}_timeout", f"no complete answer within {REQUEST_TIMEOUT} s")
            return False
        except asyncio.IncompleteReadError as e:
            self.error(f"{kind}_connection_closed", f"after {len(e.partial)} bytes of a response")
            return False
        except (OSError, HttpError, ValueError) as e:
            self.error(f"{kind}_connection_error", repr(e))
            return False
        t1 = time.monotonic()
        keep = hdrs.get("connection", "").lower() != "close"
        if not keep:
            self.error(f"{kind}_server_closed_keepalive", f"status {status}")
        if status != 200:
            self.error(f"{kind}_status_{status}", resp[:200].decode("latin-1"))
            return keep
        if kind == "plain" or kind == "probe":
            try:
                j = json.loads(resp)
                u = self.check_usage(j["usage"], max_tokens)
                text = j["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as e:
                self.error(f"{kind}_bad_body", repr(e))
                return keep
            if u is None:
                self.error(f"{kind}_usage_mismatch", json.dumps(j.get("usage")))
                return keep
            if text != self.content:
                self.error(f"{kind}_content_mismatch", repr(text))
                return keep
            self.account(model, u[0], u[1], u[2], 0)
            self.done[kind] += 1
            self.lat["plain"].append(t1 - t0)
            return keep
        # stream
        asked = "stream_options" in req
        events = resp.split(b"\n\n")
        if events and events[-1] == b"":
            events.pop()
        if not events or events[-1] != b"data: [DONE]":
            self.error("stream_no_done", repr(resp[-120:]))
            return keep
        text, usage = [], None
        try:
            for ev in events[:-1]:
                if not ev.startswith(b"data: "):
                    raise ValueError(f"not a data event: {ev[:80]!r}")
                c = json.loads(ev[6:])
                if c.get("usage") is not None:
                    if usage is not None:
                        raise ValueError("two usage chunks")
                    usage = c["usage"]
                for ch in c.get("choices", []):
                    text.append(ch.get("delta", {}).get("content") or "")
        except (ValueError, TypeError, AttributeError) as e:
            self.error("stream_bad_event", repr(e))
            return keep
        if "".join(text) != self.content:
            self.error("stream_content_mismatch", repr("".join(text)))
            return keep
        if asked:
            if usage is None:
                self.error("stream_usage_missing", "asked for include_usage, got no usage chunk")
                return keep
            u = self.check_usage(usage, max_tokens)
            if u is None:
                self.error("stream_usage_mismatch", json.dumps(usage))
                return keep
        else:
            if usage is not None:
                self.error("stream_usage_leaked", "did not ask for usage, got " + json.dumps(usage))
                return keep
            # relaymeter injected include_usage and stripped the chunk: the
            # client saw no usage, so count what the fake is configured to send
            u = self.expected_usage(max_tokens)
        self.account(model, u[0], u[1], u[2], 1)
        self.done["stream"] += 1
        self.stream_usage["asked" if asked else "not_asked"] += 1
        self.lat["stream"].append(t1 - t0)
        if first:
            self.lat["ttfc"].append(first[0] - t0)
        return keep

    # ---- sampling

    async def summary(self):
        st, body = await http_get(self.a.port, "/summary")
        if st != 200:
            raise HttpError(f"/summary: status {st}")
        return json.loads(body)

    async def sample(self, phase):
        a = self.a
        t = self.now()
        ps = proc_status(a.rm_pid)
        fds = fd_census(a.rm_pid, a.port, a.fake_port)
        cpu_rm = proc_cpu_s(a.rm_pid)
        cpu_fake = proc_cpu_s(a.fake_pid)
        cpu_me = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        mt = machine_cpu()
        try:
            ov = (await self.summary())["overall"]
            rm_total = ov["total_requests"]
        except (OSError, asyncio.TimeoutError, HttpError, ValueError, KeyError) as e:
            self.error("summary_fetch", repr(e))
            rm_total = None
        try:  # a Prometheus scrape, as in production
            st, body = await http_get(a.port, "/metrics")
            if st != 200 or b"\nai_requests_in_flight " not in body:
                self.error("metrics_scrape", f"status {st}, {len(body)} bytes")
        except (OSError, asyncio.TimeoutError, HttpError) as e:
            self.error("metrics_scrape", repr(e))
        s = {"t": round(t, 1), "phase": phase, "rss_kib": ps["VmRSS"], "hwm_kib": ps["VmHWM"],
             "threads": ps["Threads"], "fds": fds, "rm_total": rm_total,
             "done": self.done["plain"] + self.done["stream"] + self.done["probe"],
             "errors": sum(self.errors.values()), "open_conns": self.open_conns,
             "cpu_rm_s": cpu_rm, "cpu_fake_s": cpu_fake, "cpu_me_s": cpu_me, "machine": mt}
        prev = self.samples[-1] if self.samples else None
        self.samples.append(s)
        rates = ""
        if prev:
            dt = max(1e-6, s["t"] - prev["t"])
            dtot = max(1, mt[0] - prev["machine"][0])
            rates = (f" {(s['done'] - prev['done']) / dt:6.0f} req/s  cpu rm {100 * (cpu_rm - prev['cpu_rm_s']) / dt:3.0f}%"
                     f" fake {100 * (cpu_fake - prev['cpu_fake_s']) / dt:3.0f}% load {100 * (cpu_me - prev['cpu_me_s']) / dt:3.0f}%"
                     f" machine {100 * (1 - (mt[1] - prev['machine'][1]) / dtot):3.0f}%")
        log(f"t={s['t']:6.1f}s {phase:<9} rss {s['rss_kib'] / 1024:7.2f} MiB  threads {s['threads']}  "
            f"fds {fds['total']:5d} (clients {fds['client']}, upstream {fds['upstream']})  done {s['done']:7d}  "
            f"errors {s['errors']}  rm total {rm_total}{rates}")
        return s

    async def sampler(self):
        k = 1
        while True:
            at = self.t_load + k * self.a.sample_interval
            if at > self.stop_at - 0.5:
                return
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            await self.sample("load")
            k += 1

    async def wait_for(self, what, pred, deadline_s, step=0.2):
        end = time.monotonic() + deadline_s
        while True:
            v = pred()
            if v:
                return True
            if time.monotonic() > end:
                log(f"gave up waiting for {what} after {deadline_s} s")
                return False
            await asyncio.sleep(step)

    async def in_flight_zero(self, deadline_s=30):
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                if (await self.summary())["in_flight"] == 0:
                    return True
            except (OSError, asyncio.TimeoutError, HttpError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.2)
        return False

    # ---- main

    async def run(self):
        a = self.a
        self.t0 = time.monotonic()
        fc = lambda: fd_census(a.rm_pid, a.port, a.fake_port)
        # baseline: relaymeter idle, no client connection (soak.sh's /healthz polls are closed)
        await self.wait_for("relaymeter's client sockets to close", lambda: fc()["client"] == 0, 10)
        base_fds = fc()
        m0 = machine_cpu()
        await asyncio.sleep(1.0)
        m1 = machine_cpu()
        self.busy_before = 100 * (1 - (m1[1] - m0[1]) / max(1, m1[0] - m0[0]))
        log(f"machine busy before the load (other processes): {self.busy_before:.0f}% of {os.cpu_count()} cores")
        base = await self.sample("baseline")
        log(f"baseline fds {base_fds}")

        self.t_load = time.monotonic() + 3.0  # connections are opened during these 3 s
        self.stop_at = self.t_load + a.duration
        sem = asyncio.Semaphore(64)
        tasks = [asyncio.create_task(self.plain_client(i, sem)) for i in range(a.clients)]
        tasks += [asyncio.create_task(self.stream_client(i, sem)) for i in range(a.streams)]
        await asyncio.sleep(max(0.0, self.t_load - time.monotonic()))
        log(f"{self.open_conns} client connections open; load for {a.duration} s")
        start = await self.sample("load")
        samp = asyncio.create_task(self.sampler())
        await asyncio.sleep(max(0.0, self.stop_at - time.monotonic()))
        await samp
        end_load = await self.sample("load-end")
        # clients finish what is in flight, then close their connections
        done, pending = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 15)
        for t in pending:
            t.cancel()
            self.error("client_task_stuck", "cancelled after the run")
        for t in done:
            if t.exception():
                self.error("client_task_crashed", repr(t.exception()))
        log(f"load over: {self.now():.1f}s; waiting for relaymeter to close the client sockets")
        closed_ok = await self.wait_for("client sockets to close", lambda: fc()["client"] == 0, 15)
        after_close_fds = fc()
        after_close = await self.sample("closed")
        # Idle pooled upstream connections are closed lazily: the next acquire
        # after kMaxIdle (30 s, src/upstream/pool.cpp) closes them. Wait that
        # out, then probe on fresh connections so that each worker acquires.
        if a.pool_idle_wait > 0:
            log(f"waiting {a.pool_idle_wait:.0f} s for the upstream pool's idle limit, then {a.probes} probes")
            await asyncio.sleep(a.pool_idle_wait)
        idle_sample = await self.sample("idle")
        rnd = random.Random(a.seed)
        for k in range(a.probes):
            conn = await self.connect(asyncio.Semaphore(1))
            if conn is None:
                continue
            model = self.models[k % len(self.models)]
            mt = rnd.randint(1, a.completion_tokens)
            await self.exchange(conn, "probe", model,
                                {"model": model, "messages": [{"role": "user", "content": f"probe {k}"}],
                                 "max_tokens": mt}, mt)
            await self.close(conn)
        await self.wait_for("client sockets to close", lambda: fc()["client"] == 0, 15)
        if not await self.in_flight_zero():
            self.error("in_flight_not_zero", "relaymeter's /summary in_flight stayed above 0")
        final_fds = fc()
        final = await self.sample("final")
        summ = await self.summary()
        return self.report(base, base_fds, start, end_load, after_close, after_close_fds, closed_ok, idle_sample,
                           final, final_fds, summ)

    # ---- report

    def report(self, base, base_fds, start, end_load, after_close, after_close_fds, closed_ok, idle_sample, final,
               final_fds, summ):
        a = self.a
        out = []
        p = out.append
        load = [s for s in self.samples if s["phase"] in ("load", "load-end")]
        warm = next((s for s in load if s["t"] - start["t"] >= a.warmup - 0.5), load[-1])
        after_warm = [s for s in load if s["t"] >= warm["t"]]
        dur = end_load["t"] - start["t"]

        def cpu_pct(key):
            return 100 * (end_load[key] - start[key]) / max(1e-6, dur)
        mtot = end_load["machine"][0] - start["machine"][0]
        machine_busy = 100 * (1 - (end_load["machine"][1] - start["machine"][1]) / max(1, mtot))

        def pct(v, q):
            if not v:
                return float("nan")
            v = sorted(v)
            return v[min(len(v) - 1, int(q / 100 * len(v)))]

        p(f"relaymeter soak: {a.clients} keep-alive clients (one plain chat completion each every "
          f"{a.plain_period:g} s ±10%), {a.streams} stream clients (back to back, pause 0..{a.stream_pause:g} s), "
          f"{dur:.0f} s of load, models {', '.join(self.models)}")
        p(f"fake upstream: latency {a.latency_ms:g} ms, {a.chunks} chunks every {a.chunk_interval_ms:g} ms, usage "
          f"prompt {a.prompt_tokens} (cached {a.cached_tokens}), completion min({a.completion_tokens}, max_tokens)")
        p("")
        sent = self.sent["plain"] + self.sent["stream"] + self.sent["probe"]
        done = self.done["plain"] + self.done["stream"] + self.done["probe"]
        p(f"requests sent      {sent:9d}  completed {done:9d}  ({done / max(1e-6, dur):.0f}/s over the load)")
        p(f"  plain            {self.sent['plain']:9d}  completed {self.done['plain']:9d}")
        p(f"  streams          {self.sent['stream']:9d}  completed {self.done['stream']:9d}  "
          f"(usage asked {self.stream_usage['asked']}, not asked {self.stream_usage['not_asked']})")
        p(f"  probes           {self.sent['probe']:9d}  completed {self.done['probe']:9d}")
        p(f"client connections opened {self.connects['ok']} (of {a.clients + a.streams} + {a.probes} probes: "
          "more means reconnects after errors)")
        nerr = sum(self.errors.values())
        p(f"client-side errors {nerr}" + (": " + ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items()))
                                          if nerr else ""))
        for e in self.error_examples[:10]:
            p(f"    {e}")
        p(f"latency plain  p50 {1e3 * pct(self.lat['plain'], 50):.1f} ms  p99 {1e3 * pct(self.lat['plain'], 99):.1f} ms"
          f"  max {1e3 * max(self.lat['plain'] or [math.nan]):.1f} ms")
        p(f"stream total   p50 {1e3 * pct(self.lat['stream'], 50):.1f} ms  p99 {1e3 * pct(self.lat['stream'], 99):.1f} ms"
          f"  max {1e3 * max(self.lat['stream'] or [math.nan]):.1f} ms;  first chunk p50 "
          f"{1e3 * pct(self.lat['ttfc'], 50):.1f} ms p99 {1e3 * pct(self.lat['ttfc'], 99):.1f} ms")
        p(f"CPU over the load (100% = one core): relaymeter {cpu_pct('cpu_rm_s'):.0f}%, fake_upstream "
          f"{cpu_pct('cpu_fake_s'):.0f}%, load generator {cpu_pct('cpu_me_s'):.0f}%; whole machine "
          f"{machine_busy:.0f}% busy of {os.cpu_count()} cores (other users included; "
          f"{self.busy_before:.0f}% busy in the second before the load)")
        p("")
        mib = lambda k: k / 1024
        p(f"RSS (MiB): before load {mib(base['rss_kib']):.2f}, load start {mib(start['rss_kib']):.2f}, "
          f"warm-up (t={warm['t'] - start['t']:.0f}s) {mib(warm['rss_kib']):.2f}, end of load {mib(end_load['rss_kib']):.2f}, "
          f"max sample {mib(max(s['rss_kib'] for s in self.samples)):.2f}, VmHWM {mib(max(s['hwm_kib'] for s in self.samples)):.2f}, "
          f"clients closed {mib(after_close['rss_kib']):.2f}, final {mib(final['rss_kib']):.2f}")
        growth = end_load["rss_kib"] - warm["rss_kib"]
        reqs_after_warm = max(1, end_load["done"] - warm["done"])
        slope = 0.0
        if len(after_warm) >= 2:
            xs = [s["t"] / 60 for s in after_warm]
            ys = [s["rss_kib"] for s in after_warm]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            sxx = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
        p(f"RSS growth after warm-up: {growth:+d} KiB over {reqs_after_warm} requests "
          f"({1024 * growth / reqs_after_warm:+.2f} bytes/request), least-squares slope {slope:+.1f} KiB/min")
        p("RSS series (MiB, every %gs from load start): %s" % (
            a.sample_interval, " ".join(f"{mib(s['rss_kib']):.2f}" for s in load)))
        p("fds series (every %gs): %s" % (a.sample_interval, " ".join(str(s["fds"]["total"]) for s in load)))
        p(f"threads: before {base['threads']}, during {sorted({s['threads'] for s in load})}, final {final['threads']}")
        fdtxt = lambda f: (f"{f['total']} (listen {f['listen']}, clients {f['client']}, upstream {f['upstream']}, "
                           f"other sockets {f['other_socket']}, non-sockets {f['other']})")
        p(f"fds: before load {fdtxt(base_fds)}")
        p(f"     end of load {fdtxt(end_load['fds'])}; max {max(s['fds']['total'] for s in self.samples)}; "
          f"CLOSE_WAIT client sockets max {max(s['fds']['client_close_wait'] for s in self.samples)}")
        p(f"     clients closed {fdtxt(after_close_fds)}")
        p(f"     after {a.pool_idle_wait:g} s idle + {a.probes} probes {fdtxt(final_fds)}")
        p("")

        # totals
        ov = summ["overall"]
        exp_req = sum(g["requests"] for g in self.got.values())
        exp_in = sum(g["input"] for g in self.got.values())
        exp_out = sum(g["output"] for g in self.got.values())
        exp_cached = sum(g["cached"] for g in self.got.values())
        exp_streams = sum(g["streams"] for g in self.got.values())
        exp_cost = sum((g["cost"] for g in self.got.values()), Decimal(0))
        rows = [("total_requests", exp_req, ov["total_requests"]), ("input_tokens", exp_in, ov["input_tokens"]),
                ("output_tokens", exp_out, ov["output_tokens"]),
                ("cached_input_tokens", exp_cached, ov["cached_input_tokens"]),
                ("streamed_requests", exp_streams, ov["streamed_requests"])]
        p(f"{'totals':<22}{'clients':>16}{'relaymeter':>16}")
        for k, e, g in rows:
            p(f"  {k:<20}{e:>16d}{g:>16d}  {'equal' if e == g else 'DIFFERENT (%+d)' % (g - e)}")
        rm_cost = Decimal(repr(float(ov["total_cost_usd"])))
        cost_rel = abs(rm_cost - exp_cost) / max(exp_cost, Decimal("1e-12"))
        p(f"  {'total_cost_usd':<20}{str(exp_cost.quantize(Decimal('1e-9'))):>16}{float(ov['total_cost_usd']):>16.9f}"
          f"  difference {float(rm_cost - exp_cost):+.3e} USD (relative {float(cost_rel):.1e})")
        p(f"  exact decimal sum of the contract formula: {exp_cost}")
        p(f"  relaymeter status_codes {json.dumps(ov['status_codes'], sort_keys=True)}, error_count {ov['error_count']}")
        per_model_ok = True
        rm_models = {m["model"]: m for m in summ["models"]}
        p(f"  per model (clients / relaymeter): requests, input, output, cached, cost")
        for name in sorted(set(self.got) | set(rm_models)):
            g, m = self.got.get(name), rm_models.get(name)
            if g is None or m is None:
                per_model_ok = False
                p(f"    {name}: only on the {'relaymeter' if g is None else 'client'} side")
                continue
            same = (g["requests"] == m["total_requests"] and g["input"] == m["input_tokens"]
                    and g["output"] == m["output_tokens"] and g["cached"] == m["cached_input_tokens"]
                    and g["streams"] == m["streamed_requests"]
                    and abs(Decimal(repr(float(m["total_cost_usd"]))) - g["cost"]) <= Decimal(repr(a.cost_rel_tol)) * max(g["cost"], Decimal("1e-12")))
            per_model_ok = per_model_ok and same
            p(f"    {name:<18} {g['requests']}/{m['total_requests']}  {g['input']}/{m['input_tokens']}  "
              f"{g['output']}/{m['output_tokens']}  {g['cached']}/{m['cached_input_tokens']}  "
              f"{float(g['cost']):.6f}/{float(m['total_cost_usd']):.6f}  {'equal' if same else 'DIFFERENT'}")
        p("")

        # verdicts
        verdicts = []

        def verdict(ok, text):
            verdicts.append(ok)
            p(f"{'PASS' if ok else 'FAIL'}  {text}")

        want_probes = a.probes
        verdict(nerr == 0 and self.done["probe"] == want_probes and self.sent["plain"] == self.done["plain"]
                and self.sent["stream"] == self.done["stream"],
                f"zero client-side errors ({nerr}); every request and stream completed "
                f"({done} of {sent}: non-200, connection errors, timeouts, streams without [DONE], "
                "wrong content or usage, failed /summary or /metrics fetches all count)")
        verdict(ov["error_count"] == 0 and set(ov["status_codes"]) <= {"200"},
                f"relaymeter recorded no errors (error_count {ov['error_count']}, "
                f"status_codes {json.dumps(ov['status_codes'], sort_keys=True)})")
        limit = max(a.rss_abs_kib, a.rss_rel * warm["rss_kib"])
        verdict(growth <= limit,
                f"RSS growth after warm-up {growth / 1024:+.2f} MiB <= {limit / 1024:.2f} MiB "
                f"(max of {a.rss_abs_kib / 1024:g} MiB and {100 * a.rss_rel:g}% of the warm-up RSS "
                f"{warm['rss_kib'] / 1024:.2f} MiB)")
        verdict(closed_ok and after_close_fds["client"] == 0
                and after_close_fds["total"] - after_close_fds["upstream"] == base_fds["total"],
                f"fds back to baseline once the clients closed: {after_close_fds['total']} = "
                f"{base_fds['total']} before load + {after_close_fds['upstream']} pooled upstream connections, "
                f"0 client sockets ({after_close_fds['client']})")
        verdict(final_fds["total"] - final_fds["upstream"] == base_fds["total"]
                and final_fds["upstream"] <= a.rm_threads and final_fds["client"] == 0,
                f"after the pool's idle limit and {a.probes} probes: {final_fds['total']} fds = {base_fds['total']} "
                f"before load + {final_fds['upstream']} upstream connection(s) (at most one per worker thread, "
                f"{a.rm_threads})")
        totals_ok = all(e == g for _, e, g in rows)
        verdict(totals_ok, f"totals exact: total_requests {ov['total_requests']}, input_tokens {ov['input_tokens']}, "
                           f"output_tokens {ov['output_tokens']}, cached_input_tokens {ov['cached_input_tokens']}, "
                           f"streamed_requests {ov['streamed_requests']} equal the clients' sums")
        verdict(cost_rel <= a.cost_rel_tol and per_model_ok,
                f"cost: relaymeter {float(ov['total_cost_usd']):.9f} USD vs exact contract sum "
                f"{float(exp_cost):.9f} USD, relative difference {float(cost_rel):.1e} <= {a.cost_rel_tol:g} "
                f"(double rounding; one request is ~{1 / max(1, exp_req):.0e} of the total); per-model figures equal")
        ok = all(verdicts)
        p(f"{'PASS' if ok else 'FAIL'}  soak ({sum(verdicts)}/{len(verdicts)} checks)")
        text = "\n".join(out)
        print(text, flush=True)
        if a.report:
            with open(a.report, "w") as f:
                f.write(text + "\n")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"args": vars(a), "samples": self.samples, "errors": dict(self.errors),
                           "error_examples": self.error_examples, "sent": dict(self.sent), "done": dict(self.done),
                           "rm_total_requests": ov["total_requests"], "base_fds": base_fds,
                           "after_close_fds": after_close_fds, "final_fds": final_fds,
                           "expected_cost": str(exp_cost), "rm_cost": ov["total_cost_usd"], "ok": ok}, f, indent=1)
        if a.total_file:
            with open(a.total_file, "w") as f:
                f.write(f"{ov['total_requests']}\n")
        return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True, help="relaymeter's port on 127.0.0.1")
    ap.add_argument("--rm-pid", type=int, required=True)
    ap.add_argument("--rm-threads", type=int, required=True, help="relaymeter's worker threads")
    ap.add_argument("--fake-port", type=int, required=True)
    ap.add_argument("--fake-pid", type=int, required=True)
    ap.add_argument("--price", action="append", required=True, help="MODEL=INPUT:CACHED|-:OUTPUT (USD per 1M)")
    ap.add_argument("--prompt-tokens", type=int, required=True)
    ap.add_argument("--cached-tokens", type=int, required=True)
    ap.add_argument("--completion-tokens", type=int, required=True)
    ap.add_argument("--chunks", type=int, required=True)
    ap.add_argument("--chunk-interval-ms", type=float, required=True)
    ap.add_argument("--latency-ms", type=float, required=True)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--warmup", type=float, default=60, help="RSS after this much load is the reference")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--plain-period", type=float, default=5.0, help="seconds between a client's requests")
    ap.add_argument("--stream-pause", type=float, default=0.1, help="random pause 0..this between streams")
    ap.add_argument("--sample-interval", type=float, default=10)
    ap.add_argument("--pool-idle-wait", type=float, default=31)
    ap.add_argument("--probes", type=int, default=20)
    ap.add_argument("--rss-abs-kib", type=float, default=2048)
    ap.add_argument("--rss-rel", type=float, default=0.05)
    ap.add_argument("--cost-rel-tol", type=float, default=1e-9)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--report")
    ap.add_argument("--json")
    ap.add_argument("--total-file", help="write relaymeter's final total_requests here")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = a.clients + a.streams + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, 65536)), hard))
    ok = asyncio.run(Soak(a).run())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
