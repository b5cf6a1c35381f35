#!/usr/bin/env python3
"""Measurement driver for bench/run.sh (python3 stdlib only).

run.sh installs the tools and starts fake_upstream, nginx and relaymeter; this
script drives the load (wrk, bench/openloop, its own raw-socket clients), reads
/proc for CPU and memory, checks relaymeter's /summary, and prints and writes
the table. Every loop here is bounded in count and time.
"""
import argparse
import json
import os
import platform
import random
import re
import resource
import socket
import statistics
import subprocess
import sys
import time

TARGETS = ("direct", "nginx", "relaymeter")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SMALL_BODY = b'{"model":"gpt-4.1","messages":[{"role":"system","content":"You are terse."},' \
             b'{"role":"user","content":"Say hello in five words."}],"max_tokens":64,"temperature":0}'
STREAM_BODY = b'{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"Count to eight."}]}'


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- /proc

def proc_children(ppid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rindex(")") + 2:].split()
        if int(rest[1]) == ppid:
            out.append(int(d))
    return sorted(out)


def cpu_ticks(pids):
    total = 0
    for p in pids:
        with open(f"/proc/{p}/stat") as f:
            s = f.read()
        rest = s[s.rindex(")") + 2:].split()
        total += int(rest[11]) + int(rest[12])  # utime, stime (fields 14, 15)
    return total


def mem_kib(pid):
    r = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                r[k] = int(v.split()[0])
    return r


def mem_sum(pids):
    tot = {"VmRSS": 0, "VmHWM": 0}
    for p in pids:
        m = mem_kib(p)
        tot["VmRSS"] += m["VmRSS"]
        tot["VmHWM"] += m["VmHWM"]
    return tot


# ---------------------------------------------------------------- raw HTTP client

class Conn:
    """One keep-alive HTTP/1.1 connection; times the first body byte."""

    def __init__(self, port, timeout=10.0):
        self.port = port
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        self.s.close()

    def _fill(self):
        d = self.s.recv(262144)
        if not d:
            raise ConnectionError("connection closed")
        self.buf += d
        return time.perf_counter_ns()

    def request(self, method, path, body=b"", ctype="application/json"):
        """Returns (status, t_start, t_first_body, t_end, recv_times, body)."""
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
        if body:
            head += f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        msg = head.encode() + b"\r\n"
        t0 = time.perf_counter_ns()
        if body and len(body) > 65536:
            self.s.sendall(msg)
            self.s.sendall(body)
        else:
            self.s.sendall(msg + body)
        recv_times = []
        while b"\r\n\r\n" not in self.buf:
            recv_times.append(self._fill())
        hend = self.buf.index(b"\r\n\r\n")
        head_b, self.buf = self.buf[:hend].decode("latin-1"), self.buf[hend + 4:]
        status = int(head_b.split(" ", 2)[1])
        hdrs = {}
        for line in head_b.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        t_first = None
        out = []
        if "chunked" in hdrs.get("transfer-encoding", "").lower():
            while True:
                while b"\r\n" not in self.buf:
                    recv_times.append(self._fill())
                i = self.buf.index(b"\r\n")
                size = int(self.buf[:i].split(b";")[0], 16)
                if size == 0:
                    while not self.buf.startswith(b"0\r\n\r\n") and b"\r\n\r\n" not in self.buf:
                        recv_times.append(self._fill())
                    self.buf = self.buf[self.buf.index(b"\r\n\r\n") + 4:]
                    break
                while len(self.buf) < i + 2 + size + 2:
                    recv_times.append(self._fill())
                if t_first is None:
                    t_first = recv_times[-1] if recv_times else time.perf_counter_ns()
                out.append(self.buf[i + 2:i + 2 + size])
                self.buf = self.buf[i + 2 + size + 2:]
        else:
            n = int(hdrs.get("content-length", "0"))
            while len(self.buf) < n:
                recv_times.append(self._fill())
            if n:
                t_first = recv_times[-1] if recv_times else time.perf_counter_ns()
            out.append(self.buf[:n])
            self.buf = self.buf[n:]
        t_end = time.perf_counter_ns()
        # the first body byte may have come with the head
        if t_first is None:
            t_first = t_end
        return status, t0, t_first, t_end, recv_times, b"".join(out)


def first_body_time(conn_recv_times, t_first):
    return t_first


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    i = min(len(v) - 1, int(p / 100.0 * len(v)))
    return v[i]


# ---------------------------------------------------------------- tools

def run_wrk(port, conns, dur, args, body_file, headers="plain"):
    env = dict(os.environ, BENCH_BODY=body_file, BENCH_HEADERS=headers)
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{dur}s", "--timeout", "10s", "-s", os.path.join(args.bench_dir, "post.lua"),
           f"http://127.0.0.1:{port}/v1/chat/completions"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=dur + 60)
    r = {}
    for line in p.stdout.splitlines():
        if line.startswith("BENCH "):
            for kv in line.split()[1:]:
                k, v = kv.split("=")
                r[k] = float(v)
    if "requests" not in r:
        raise RuntimeError(f"wrk failed: {p.stdout}\n{p.stderr}")
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return r


def run_openloop(port, rate, dur, warm, conns, args, body_file):
    cmd = [args.openloop, "127.0.0.1", str(port), "/v1/chat/completions", body_file, f"{rate:.1f}", str(dur), str(warm),
           str(conns)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=dur + warm + 60)
    r = {}
    for kv in p.stdout.split():
        k, v = kv.split("=")
        r[k] = float(v)
    if "p99" not in r:
        raise RuntimeError(f"openloop failed: {p.stdout}\n{p.stderr}")
    return r


# ---------------------------------------------------------------- phases

def rounds_won(runs, key, higher):
    """(k, n): in how many of the n rounds relaymeter's `key` was at least as
    good as nginx's in the same round. The medians hide how often a round
    went either way; on a machine with slow spells this shows whether a
    missed target is a tendency or one unlucky round."""
    pairs = list(zip(runs["relaymeter"], runs["nginx"]))
    k = sum(1 for rm, ng in pairs if (rm[key] >= ng[key] if higher else rm[key] <= ng[key]))
    return (k, len(pairs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ports", required=True, help="direct,nginx,relaymeter")
    ap.add_argument("--nginx-master", type=int, required=True)
    ap.add_argument("--rm-pid", type=int, required=True)
    ap.add_argument("--fake-pid", type=int, required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--bench-dir", required=True)
    ap.add_argument("--openloop", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunks", type=int, required=True)
    ap.add_argument("--chunk-interval-ms", type=float, required=True)
    ap.add_argument("--command", default="bash bench/run.sh")
    ap.add_argument("--notes", default="")
    ap.add_argument("--seed", type=int, default=None, help="of the shuffled run order (default: the time)")
    ap.add_argument("--pre-sent", type=int, default=0, help="requests run.sh already sent to relaymeter")
    args = ap.parse_args()
    if args.seed is None:
        args.seed = int(time.time()) % 100000

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    port = dict(zip(TARGETS, (int(x) for x in args.ports.split(","))))
    ngx_workers = proc_children(args.nginx_master)
    proxy_pids = {"nginx": ngx_workers, "relaymeter": [args.rm_pid]}
    log(f"ports {port}, nginx workers {ngx_workers}, relaymeter pid {args.rm_pid}")

    smoke = args.smoke
    levels = [1, 16, 64, 256]
    wrk_dur = 1                      # closed loop: many short rounds...
    cl_rounds = 1 if smoke else 9
    rounds = 1 if smoke else 3       # ...open loop: fewer, longer ones
    order = random.Random(args.seed)
    warm_dur = 1 if smoke else 3
    ol_dur, ol_warm = (1, 0.5) if smoke else (3, 0.5)
    n_stream = 10 if smoke else 200
    n_large = 5 if smoke else 100
    n_idle = 200 if smoke else 10000

    small = os.path.join(args.workdir, "small.json")
    with open(small, "wb") as f:
        f.write(SMALL_BODY)
    # 1 MiB body; "model" last, as the OpenAI SDKs write it (messages first)
    tail = b'"}],"model":"gpt-4.1"}'
    headb = b'{"messages":[{"role":"user","content":"'
    large = headb + b"a" * (1048576 - len(headb) - len(tail)) + tail
    assert len(large) == 1048576

    R = {}  # (row key) -> {target: value}
    sent_rm = {"done": args.pre_sent, "slack": 0}

    def put(key, target, value):
        R.setdefault(key, {})[target] = value

    def count_rm(target, done, slack):
        if target == "relaymeter":
            sent_rm["done"] += int(done)
            sent_rm["slack"] += int(slack)

    # idle RSS after start (before any load)
    put("mem_idle", "relaymeter", mem_kib(args.rm_pid)["VmRSS"])
    put("mem_idle", "nginx", mem_sum([args.nginx_master] + ngx_workers)["VmRSS"])

    # warm-up
    for t in TARGETS:
        log(f"warm-up {t} {warm_dur}s")
        r = run_wrk(port[t], 64, warm_dur, args, small)
        count_rm(t, r["requests"], 64)

    # closed loop: 9 rounds of 1 s per level, each round running the three
    # targets in a shuffled order (seeded: --seed), and the median of each
    # figure; the throughput ratio is also given as the median of the rounds'
    # own relaymeter/nginx ratios. On a shared 2-core VM where the load
    # generator, the proxy and the fake upstream are placed on the cores by the
    # scheduler, the whole machine has slow spells of seconds (seen: the same
    # binary at 24k and 34k req/s in consecutive runs, with the fake upstream's
    # CPU per request up by as much); runs a second apart share a spell, so the
    # per-round ratio cancels it, and shuffling keeps one target from always
    # running right after another. Every run is logged.
    def interleaved(label, run, done_key, conns, describe, n_rounds):
        """`n_rounds` runs of each target, the targets shuffled in each round;
        each run's result gets the proxy's CPU time per request as "cpu"."""
        runs = {t: [] for t in TARGETS}
        for rnd in range(n_rounds):
            turn = list(TARGETS)
            order.shuffle(turn)
            for t in turn:
                pids = proxy_pids.get(t)
                c0 = cpu_ticks(pids) if pids else 0
                r = run(port[t])
                c1 = cpu_ticks(pids) if pids else 0
                count_rm(t, r[done_key], conns)
                r["cpu"] = (c1 - c0) / CLK_TCK * 1e6 / max(1, r[done_key]) if pids else None
                runs[t].append(r)
                cpu_txt = f" cpu {r['cpu']:.1f}us/req" if pids else ""
                log(f"{label} {t} round {rnd + 1}/{n_rounds}: {describe(r)}{cpu_txt}")
                time.sleep(0.3)
        return runs

    def put_medians(pre, runs, keys):
        for t, rs in runs.items():
            for k in keys:
                put(f"{pre}_{k}", t, statistics.median(r[k] for r in rs))
            if proxy_pids.get(t):
                put(f"{pre}_cpu", t, statistics.median(r["cpu"] for r in rs))

    for c in levels:
        runs = interleaved(f"closed c={c}", lambda p: run_wrk(p, c, wrk_dur, args, small), "requests", c,
                           lambda r: f"{r['rps']:.0f} req/s p50 {r['p50']:.0f}us p99 {r['p99']:.0f}us "
                                     f"errors {r['errors']:.0f}", cl_rounds)
        put_medians(f"cl{c}", runs, ("rps", "p50", "p90", "p99", "p999"))
        pairs = [rm["rps"] / ng["rps"] for rm, ng in zip(runs["relaymeter"], runs["nginx"]) if ng["rps"] > 0]
        put(f"cl{c}_pair", "relaymeter", statistics.median(pairs) if pairs else None)
        put(f"cl{c}_won", "relaymeter", rounds_won(runs, "rps", higher=True))
        put(f"cl{c}_p99_won", "relaymeter", rounds_won(runs, "p99", higher=False))
        for t, rs in runs.items():
            put(f"cl{c}_err", t, sum(r["errors"] for r in rs))
    for q in ("p50", "p90", "p99", "p999"):
        for t in ("nginx", "relaymeter"):
            put(f"cl1_add_{q}", t, R[f"cl1_{q}"][t] - R[f"cl1_{q}"]["direct"])

    # the same at c=64 and c=256 with the header fields an OpenAI SDK sends
    # (bench/post.lua, BENCH_HEADERS=sdk), which the fake answers with the
    # ~20 fields api.openai.com sends (run.sh: --openai-headers-for-sdk):
    # per-field costs show only here
    for c in (64, 256):
        runs = interleaved(f"closed sdk-headers c={c}", lambda p: run_wrk(p, c, wrk_dur, args, small, "sdk"),
                           "requests", c, lambda r: f"{r['rps']:.0f} req/s p99 {r['p99']:.0f}us "
                                                    f"errors {r['errors']:.0f}", cl_rounds)
        put_medians(f"sdk{c}", runs, ("rps", "p99"))
        pairs = [rm["rps"] / ng["rps"] for rm, ng in zip(runs["relaymeter"], runs["nginx"]) if ng["rps"] > 0]
        put(f"sdk{c}_pair", "relaymeter", statistics.median(pairs) if pairs else None)
        put(f"sdk{c}_won", "relaymeter", rounds_won(runs, "rps", higher=True))
        for t, rs in runs.items():
            put(f"sdk{c}_err", t, sum(r["errors"] for r in rs))

    # open loop at fixed rates nginx sustains: 60% of its c=64 throughput (the
    # issue's test) and 30%; like the closed loop, `rounds` runs per rate with
    # the targets interleaved, and the median of each figure (a single run
    # per target let a slow spell of the machine decide the p99: single runs
    # gave relaymeter/nginx p99 ratios of 0.26 and 8.1 with the same binaries,
    # and 4.1 where interleaved runs of the same binaries gave 0.55, 1.0, 0.82).
    for pre, frac in (("ol", 0.6), ("ol2", 0.3)):
        rate = round(frac * R["cl64_rps"]["nginx"], -2) or 100
        runs = interleaved(f"open loop {rate:.0f}/s", lambda p: run_openloop(p, rate, ol_dur, ol_warm, 64, args, small),
                           "done", 64,
                           lambda r: f"p50 {r['p50']:.0f}us p99 {r['p99']:.0f}us p99.9 {r['p999']:.0f}us "
                                     f"errors {r['errors']:.0f} non2xx {r['non2xx']:.0f} unsent {r['unsent']:.0f}",
                           rounds)
        put_medians(pre, runs, ("achieved", "p50", "p90", "p99", "p999"))
        for t, rs in runs.items():
            put(f"{pre}_rate", t, rate)
            put(f"{pre}_err", t, sum(r["errors"] + r["non2xx"] for r in rs))
            put(f"{pre}_unsent", t, max(r["unsent"] for r in rs))
        put(f"{pre}_p99_won", "relaymeter", rounds_won(runs, "p99", higher=False))
        for t in ("nginx", "relaymeter"):
            put(f"{pre}_add_p99", t, R[f"{pre}_p99"][t] - R[f"{pre}_p99"]["direct"])

    # streams: one keep-alive connection per target, the targets taking turns
    # stream by stream. This VM has spells of a few hundred milliseconds in
    # which a CPU stalls for ~3.5 ms at a time (seen with nginx and relaymeter
    # alike, e.g. a few seconds after a burst of 256 connections); taking turns
    # spreads a spell over all three targets instead of charging it to
    # whichever one was being measured.
    conns = {t: Conn(port[t]) for t in TARGETS}
    S = {t: {"ttfc": [], "total": [], "gaps": [], "bad": 0} for t in TARGETS}
    for i in range(n_stream):
        for t in TARGETS:
            st, t0, tf, te, rts, body = conns[t].request("POST", "/v1/chat/completions", STREAM_BODY)
            acc = S[t]
            if st != 200 or b"[DONE]" not in body:
                acc["bad"] += 1
            acc["ttfc"].append((tf - t0) / 1000)
            acc["total"].append((te - t0) / 1000)
            if len(rts) > 1:
                acc["gaps"].append(max(b - a for a, b in zip(rts, rts[1:])) / 1000)
    for t in TARGETS:
        conns[t].close()
        count_rm(t, n_stream, 0)
        ttfc, total, gaps, bad = S[t]["ttfc"], S[t]["total"], S[t]["gaps"], S[t]["bad"]
        log(f"streams {t}: ttfc p50 {pct(ttfc, 50):.0f}us p99 {pct(ttfc, 99):.0f}us total p50 {pct(total, 50):.0f}us bad {bad}")
        put("st_ttfc_p50", t, pct(ttfc, 50))
        put("st_ttfc_p99", t, pct(ttfc, 99))
        put("st_ttfc_max", t, max(ttfc))
        put("st_total_p50", t, pct(total, 50))
        put("st_total_p99", t, pct(total, 99))
        put("st_gap_max", t, max(gaps) if gaps else float("nan"))
        put("st_bad", t, bad)
    # Added time to first chunk, paired: each stream against the direct stream
    # of the same turn (a difference of two p99s says little when the
    # direct p99 itself is a machine stall).
    for t in ("nginx", "relaymeter"):
        added = [a - d for a, d in zip(S[t]["ttfc"], S["direct"]["ttfc"])]
        for q in (50, 99):
            put(f"st_add_ttfc_p{q}", t, pct(added, q))

    # 1 MiB request body
    for t in TARGETS:
        conn = Conn(port[t], timeout=30)
        lat, bad = [], 0
        for i in range(n_large):
            st, t0, tf, te, rts, body = conn.request("POST", "/v1/chat/completions", large)
            bad += st != 200
            lat.append((te - t0) / 1000)
        conn.close()
        count_rm(t, n_large, 0)
        log(f"1 MiB body {t}: p50 {pct(lat, 50):.0f}us p99 {pct(lat, 99):.0f}us bad {bad}")
        put("lb_p50", t, pct(lat, 50))
        put("lb_p99", t, pct(lat, 99))
        put("lb_bad", t, bad)
    for q in ("p50", "p99"):
        for t in ("nginx", "relaymeter"):
            put(f"lb_add_{q}", t, R[f"lb_{q}"][t] - R[f"lb_{q}"]["direct"])

    # /metrics and /summary render time with 64 models
    conn = Conn(port["relaymeter"])
    for i in range(64):
        b = SMALL_BODY.replace(b'"gpt-4.1"', f'"bench-model-{i:02d}"'.encode())
        conn.request("POST", "/v1/chat/completions", b)
    count_rm("relaymeter", 64, 0)
    for path, key in (("/metrics", "render_metrics"), ("/summary", "render_summary")):
        ts = []
        for i in range(5 if smoke else 50):
            st, t0, tf, te, rts, body = conn.request("GET", path)
            ts.append((te - t0) / 1e6)
        put(key + "_p50", "relaymeter", pct(ts, 50))
        put(key + "_max", "relaymeter", max(ts))
        log(f"{path}: p50 {pct(ts, 50):.2f} ms max {max(ts):.2f} ms ({len(body)} bytes)")
    conn.close()

    # peak RSS under load (before the idle-connection test)
    put("mem_hwm_load", "relaymeter", mem_kib(args.rm_pid)["VmHWM"])
    put("mem_hwm_load", "nginx", mem_sum(ngx_workers)["VmHWM"])

    # idle keep-alive connections
    for t in ("nginx", "relaymeter"):
        pids = proxy_pids[t]
        time.sleep(0.5)
        before = mem_sum(pids)["VmRSS"]
        socks, bad = [], 0
        deadline = time.monotonic() + 120
        for i in range(n_idle):
            if time.monotonic() > deadline:
                break
            try:
                c = Conn(port[t], timeout=10)
                st = c.request("POST", "/v1/chat/completions", SMALL_BODY)[0]
                bad += st != 200
                socks.append(c)
            except OSError as e:
                bad += 1
                if bad > 50:
                    log(f"idle {t}: giving up: {e}")
                    break
        count_rm(t, len(socks), 0)
        time.sleep(1.0)
        after = mem_sum(pids)
        # are they still open? a few probes
        alive = 0
        for c in socks[:: max(1, len(socks) // 20)]:
            try:
                alive += c.request("POST", "/v1/chat/completions", SMALL_BODY)[0] == 200
                count_rm(t, 1, 0)
            except OSError:
                pass
        for c in socks:
            c.close()
        time.sleep(1.0)
        closed = mem_sum(pids)["VmRSS"]
        n = len(socks)
        log(f"idle {t}: {n} connections, RSS {before} -> {after['VmRSS']} KiB, after close {closed} KiB, bad {bad}, "
            f"probes alive {alive}")
        put("idle_n", t, n)
        put("idle_rss", t, after["VmRSS"])
        put("idle_kib_per_conn", t, (after["VmRSS"] - before) / max(1, n))
        put("idle_rss_closed", t, closed)
        put("idle_bad", t, bad)

    put("mem_hwm_end", "relaymeter", mem_kib(args.rm_pid)["VmHWM"])
    put("mem_hwm_end", "nginx", mem_sum(ngx_workers)["VmHWM"])

    # relaymeter's own count
    conn = Conn(port["relaymeter"])
    st, _, _, _, _, body = conn.request("GET", "/summary")
    conn.close()
    summ = json.loads(body)
    ov = summ["overall"]
    total = int(ov["total_requests"])
    codes = ov.get("status_codes", {})
    lo, hi = sent_rm["done"], sent_rm["done"] + sent_rm["slack"]
    errs5 = sum(v for k, v in codes.items() if k.startswith("5"))
    ok = lo <= total <= hi and errs5 == 0 and total > 0
    check = (f"relaymeter /summary: total_requests={total}; bench completed {lo} requests to it "
             f"(+ up to {sent_rm['slack']} in flight when a load run stopped, so expected {lo}..{hi}); "
             f"status_codes={json.dumps(codes, sort_keys=True)}; error_count={ov.get('error_count')}; "
             f"input_tokens={ov.get('input_tokens')}, output_tokens={ov.get('output_tokens')} -> "
             f"{'OK' if ok else 'MISMATCH'}")

    table = render(R, args)
    print()
    print(table["text"])
    print(check)
    meta = machine_note(args)
    with open(args.out, "w") as f:
        f.write(f"# relaymeter benchmark run\n\n{meta}\n\n{table['md']}\n\n{check}\n")
        if args.notes:
            f.write("\n" + args.notes + "\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"results": R, "check": check, "ok": ok}, f, indent=1, sort_keys=True)
    log(f"wrote {args.out}")
    return 0 if ok else 1


# ---------------------------------------------------------------- table

def machine_note(args):
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    def ver(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except Exception:
            return "?"
    return "\n".join([
        f"- command: `{args.command}`{' (smoke mode: tiny counts, figures meaningless)' if args.smoke else ''}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; "
        "shared machine: load generator, proxy and fake upstream run on the same cores, unpinned",
        f"- proxies: nginx worker_processes {args.threads}, relaymeter server.threads {args.threads}; "
        "fake_upstream --threads 1; wrk -t1; open loop: bench/openloop (1 thread)",
        f"- tools: {ver(['nginx', '-v'])}; {ver(['wrk', '-v'])}; relaymeter {ver(['git', '-C', os.path.dirname(args.bench_dir), 'rev-parse', '--short', 'HEAD'])}",
        f"- streams: fake_upstream --chunks {args.chunks} --chunk-interval-ms {args.chunk_interval_ms:g}",
        "- SDK exchange rows: the OpenAI Python SDK's 17 request header fields (bench/post.lua BENCH_HEADERS=sdk), "
        "answered with api.openai.com's ~20 response fields (fake_upstream --openai-headers-for-sdk); "
        "the other rows: 3 request fields, 1 response field besides the framing",
        "- closed and open loop: " + ("1 run of 1 s per target and level or rate" if args.smoke else
                                      f"closed loop 9 rounds of 1 s per level, open loop 3 rounds of 3 s per rate; "
                                      f"each round runs the three targets in a shuffled order (seed {args.seed}); "
                                      "each figure is the median of its runs (every run is in the log)"),
        "- stream turns: the targets take turns stream by stream; the added time to first chunk is the proxy's minus "
        "the direct stream's of the same turn",
    ])


ROWS = [
    # key, label, unit, better ("hi"/"lo"/None), target text, target check (fn(rm, nginx) -> bool) or None
    ("cl1_rps", "closed loop c=1: req/s", "req/s", "hi", "", None),
    ("cl16_rps", "closed loop c=16: req/s", "req/s", "hi", "", None),
    ("cl64_rps", "closed loop c=64: req/s", "req/s", "hi", "≥ 1.0× nginx", lambda r, n: r >= n),
    ("cl256_rps", "closed loop c=256: req/s", "req/s", "hi", "≥ 1.0× nginx", lambda r, n: r >= n),
    ("cl64_pair", "c=64 throughput relaymeter/nginx, median of the rounds' ratios", "×", None, "≥ 1.0",
     lambda r, n: r >= 1.0),
    ("cl256_pair", "c=256 throughput relaymeter/nginx, median of the rounds' ratios", "×", None, "≥ 1.0",
     lambda r, n: r >= 1.0),
    ("cl64_won", "c=64: rounds in which relaymeter's req/s ≥ nginx's", "rounds", None, "", None),
    ("cl256_won", "c=256: rounds in which relaymeter's req/s ≥ nginx's", "rounds", None, "", None),
    ("sdk64_rps", "SDK exchange, c=64: req/s", "req/s", "hi", "", None),
    ("sdk256_rps", "SDK exchange, c=256: req/s", "req/s", "hi", "", None),
    ("sdk64_pair", "SDK exchange, c=64 relaymeter/nginx, median of the rounds' ratios", "×", None, "≥ 1.0",
     lambda r, n: r >= 1.0),
    ("sdk256_pair", "SDK exchange, c=256 relaymeter/nginx, median of the rounds' ratios", "×", None, "≥ 1.0",
     lambda r, n: r >= 1.0),
    ("sdk64_won", "SDK exchange, c=64: rounds in which relaymeter's req/s ≥ nginx's", "rounds", None, "", None),
    ("sdk256_won", "SDK exchange, c=256: rounds in which relaymeter's req/s ≥ nginx's", "rounds", None, "",
     None),
    ("sdk64_cpu", "SDK exchange, proxy CPU per request, c=64", "µs", "lo", "≤ nginx", lambda r, n: r <= n),
    ("sdk256_cpu", "SDK exchange, proxy CPU per request, c=256", "µs", "lo", "", None),
    ("cl1_p50", "c=1 latency p50", "µs", "lo", "", None),
    ("cl1_p90", "c=1 latency p90", "µs", "lo", "", None),
    ("cl1_p99", "c=1 latency p99", "µs", "lo", "", None),
    ("cl1_p999", "c=1 latency p99.9", "µs", "lo", "", None),
    ("cl1_add_p50", "c=1 added over direct, p50", "µs", "lo", "≤ nginx (stretch ≤ 30 µs)", lambda r, n: r <= n),
    ("cl1_add_p99", "c=1 added over direct, p99", "µs", "lo", "≤ nginx (stretch ≤ 100 µs)", lambda r, n: r <= n),
    ("cl1_p99_won", "c=1: rounds in which relaymeter's p99 ≤ nginx's", "rounds", None, "", None),
    ("cl1_add_p999", "c=1 added over direct, p99.9", "µs", "lo", "", None),
    ("cl16_p50", "c=16 latency p50", "µs", "lo", "", None),
    ("cl16_p99", "c=16 latency p99", "µs", "lo", "", None),
    ("cl16_p999", "c=16 latency p99.9", "µs", "lo", "", None),
    ("cl64_p50", "c=64 latency p50", "µs", "lo", "", None),
    ("cl64_p90", "c=64 latency p90", "µs", "lo", "", None),
    ("cl64_p99", "c=64 latency p99", "µs", "lo", "", None),
    ("cl64_p999", "c=64 latency p99.9", "µs", "lo", "", None),
    ("cl256_p50", "c=256 latency p50", "µs", "lo", "", None),
    ("cl256_p90", "c=256 latency p90", "µs", "lo", "", None),
    ("cl256_p99", "c=256 latency p99", "µs", "lo", "", None),
    ("cl256_p999", "c=256 latency p99.9", "µs", "lo", "", None),
    ("ol_rate", "open loop 60%: offered rate (60% of nginx c=64)", "req/s", None, "", None),
    ("ol_achieved", "open loop 60%: completed rate", "req/s", "hi", "", None),
    ("ol_p50", "open loop 60%: latency p50", "µs", "lo", "", None),
    ("ol_p90", "open loop 60%: latency p90", "µs", "lo", "", None),
    ("ol_p99", "open loop 60%: latency p99", "µs", "lo", "≤ nginx", lambda r, n: r <= n),
    ("ol_p99_won", "open loop 60%: rounds in which relaymeter's p99 ≤ nginx's", "rounds", None, "", None),
    ("ol_p999", "open loop 60%: latency p99.9", "µs", "lo", "", None),
    ("ol_add_p99", "open loop 60%: added over direct, p99", "µs", "lo", "", None),
    ("ol_unsent", "open loop 60%: requests still queued at the end (target saturated)", "", None, "", None),
    ("ol2_rate", "open loop 30%: offered rate (30% of nginx c=64)", "req/s", None, "", None),
    ("ol2_achieved", "open loop 30%: completed rate", "req/s", "hi", "", None),
    ("ol2_p50", "open loop 30%: latency p50", "µs", "lo", "", None),
    ("ol2_p90", "open loop 30%: latency p90", "µs", "lo", "", None),
    ("ol2_p99", "open loop 30%: latency p99", "µs", "lo", "", None),
    ("ol2_p999", "open loop 30%: latency p99.9", "µs", "lo", "", None),
    ("ol2_add_p99", "open loop 30%: added over direct, p99", "µs", "lo", "", None),
    ("ol2_unsent", "open loop 30%: requests still queued at the end (target saturated)", "", None, "", None),
    ("cl64_cpu", "proxy CPU per request, closed loop c=64", "µs", "lo", "≤ nginx", lambda r, n: r <= n),
    ("cl256_cpu", "proxy CPU per request, closed loop c=256", "µs", "lo", "", None),
    ("cl1_cpu", "proxy CPU per request, closed loop c=1", "µs", "lo", "", None),
    ("ol_cpu", "proxy CPU per request, open loop 60%", "µs", "lo", "≤ nginx", lambda r, n: r <= n),
    ("ol2_cpu", "proxy CPU per request, open loop 30%", "µs", "lo", "≤ nginx", lambda r, n: r <= n),
    ("st_ttfc_p50", "stream: time to first chunk p50", "µs", "lo", "", None),
    ("st_ttfc_p99", "stream: time to first chunk p99", "µs", "lo", "", None),
    ("st_ttfc_max", "stream: time to first chunk max", "µs", "lo", "", None),
    ("st_add_ttfc_p50", "stream: added TTFC over direct (paired by turn), p50", "µs", "lo", "", None),
    ("st_add_ttfc_p99", "stream: added TTFC over direct (paired by turn), p99", "µs", "lo", "≤ 100 µs", lambda r, n: r <= 100),
    ("st_total_p50", "stream: total time p50", "µs", "lo", "", None),
    ("st_total_p99", "stream: total time p99", "µs", "lo", "", None),
    ("st_gap_max", "stream: longest gap between reads (Nagle/delayed ACK ≈ 40 ms)", "µs", "lo",
     "no 40 ms stall", lambda r, n: r < 20000),
    ("lb_p50", "1 MiB body: latency p50", "µs", "lo", "", None),
    ("lb_p99", "1 MiB body: latency p99", "µs", "lo", "", None),
    # n + 0.5|n| is 1.5 n, and stays the bar when both proxies measure faster than direct (n < 0)
    ("lb_add_p50", "1 MiB body: added over direct, p50", "µs", "lo", "≤ 1.5× nginx",
     lambda r, n: r <= n + 0.5 * abs(n)),
    ("lb_add_p99", "1 MiB body: added over direct, p99", "µs", "lo", "", None),
    ("mem_idle", "idle RSS after start (nginx: master+worker)", "MiB", "lo", "≤ 10 MiB", lambda r, n: r <= 10 * 1024),
    ("mem_hwm_load", "peak RSS (VmHWM) after the load runs", "MiB", "lo", "", None),
    ("idle_n", "idle keep-alive connections held", "", None, "", None),
    ("idle_kib_per_conn", "RSS per idle keep-alive connection", "KiB", "lo", "≤ 16 KiB", lambda r, n: r <= 16),
    ("idle_rss", "RSS with the idle connections open", "MiB", "lo", "", None),
    ("idle_rss_closed", "RSS after closing them", "MiB", "lo", "", None),
    ("mem_hwm_end", "peak RSS (VmHWM) at the end", "MiB", "lo", "", None),
    ("render_metrics_p50", "/metrics render, 64+ models, p50", "ms", "lo", "≤ 5 ms", lambda r, n: r <= 5),
    ("render_metrics_max", "/metrics render, max", "ms", "lo", "", None),
    ("render_summary_p50", "/summary render, 64+ models, p50", "ms", "lo", "≤ 5 ms", lambda r, n: r <= 5),
    ("render_summary_max", "/summary render, max", "ms", "lo", "", None),
    ("cl_errors", "errors in the closed-loop runs (socket + non-2xx)", "", None, "", None),
    ("other_errors", "errors in the other runs (open loop, streams, 1 MiB, idle)", "", None, "", None),
]


def fmt(v, unit):
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if unit == "rounds":
        return f"{v[0]} of {v[1]}"
    if unit == "MiB":
        return f"{v / 1024:.1f}"
    if unit == "ms":
        return f"{v:.2f}"
    if unit == "KiB":
        return f"{v:.1f}"
    if unit == "×":
        return f"{v:.3f}"
    if abs(v) >= 100 or unit in ("req/s", ""):
        return f"{v:.0f}"
    return f"{v:.1f}"


def ratio(a, b):
    if a is None or b is None or b == 0 or a != a or b != b:
        return "–"
    return f"{a / b:.2f}"


def render(R, args):
    errs = {t: sum(R.get(k, {}).get(t, 0) for k in ("cl1_err", "cl16_err", "cl64_err", "cl256_err", "sdk64_err",
                                                      "sdk256_err")) for t in TARGETS}
    R["cl_errors"] = errs
    R["other_errors"] = {t: sum(R.get(k, {}).get(t, 0) for k in ("ol_err", "ol2_err", "st_bad", "lb_bad", "idle_bad"))
                         for t in TARGETS}
    hdr = ["measurement", "unit", "direct", "nginx", "relaymeter", "rm/nginx", "rm/direct", "issue 4 target", "met"]
    rows = []
    for key, label, unit, better, ttext, tfn in ROWS:
        d = R.get(key, {})
        dv, nv, rv = d.get("direct"), d.get("nginx"), d.get("relaymeter")
        met = ""
        if tfn and rv is not None:
            try:
                met = "yes" if tfn(rv, nv if nv is not None else float("nan")) else "NO"
            except TypeError:
                met = "?"
        rows.append([label, unit, fmt(dv, unit), fmt(nv, unit), fmt(rv, unit),
                     ratio(rv, nv) if better else "–", ratio(rv, dv) if better else "–", ttext, met])
    widths = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(len(hdr))]
    lines = ["  ".join(str(c).ljust(widths[i]) if i in (0, 1, 7) else str(c).rjust(widths[i]) for i, c in enumerate(r))
             for r in [hdr] + rows]
    lines.insert(1, "-" * len(lines[0]))
    md = ["| " + " | ".join(hdr) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 5 + ["---", "---"]) + "|"]
    for r in rows:
        md.append("| " + " | ".join(r) + " |")
    legend = ("Ratios are relaymeter ÷ nginx and relaymeter ÷ direct: for req/s higher is better, for everything "
              "else lower is better. \"Added over direct\" = the proxied figure minus the direct figure at the same "
              "percentile. Latencies of the open loop are measured from each request's scheduled send time "
              "(corrected for coordinated omission).")
    return {"text": "\n".join(lines), "md": "\n".join(md) + "\n\n" + legend}


if __name__ == "__main__":
    sys.exit(main())
