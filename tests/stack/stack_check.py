#!/usr/bin/env python3
"""Stack check: validates docker/ without a Docker engine and checks every
PromQL expression of the Grafana dashboard against a real Prometheus that
scrapes a running relaymeter carrying traffic.

  (a) promtool check config / check rules / test rules on docker/prometheus,
      amtool check-config on docker/alertmanager (when amtool is installed)
  (b) docker-compose -f docker/docker-compose.yml config; the Dockerfile's
      runtime stage installs the package of every shared library that
      build/relaymeter links (ldd + dpkg -S)
  (c) fake upstream + relaymeter + Prometheus (scrape_interval 1s, the real
      alerts.yml loaded): every dashboard expression returns data with a
      finite value, every rule evaluates without error, and every metric name
      of the dashboard and of alerts.yml is in relaymeter's /metrics (with
      the ledger on), except `up`, which Prometheus writes itself.
Exit status 0 when everything passed. Usage: python3 tests/stack/stack_check.py
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ROOT = common.ROOT
DOCKER = os.path.join(ROOT, "docker")
DASHBOARD = os.path.join(DOCKER, "grafana", "dashboards", "relaymeter.json")
ALERTS = os.path.join(DOCKER, "prometheus", "alerts.yml")
SLOW_MODEL = "slow-model"  # the fake upstream answers it after 2.1 s
# 1.5 s: under the 2 s threshold. Prometheus estimates its p95 from the
# latency buckets: between 1 and 2.5 (no 2) that was 2.4 s and the rule fired.
MEDIUM_MODEL = "medium-model"

failures = []


def report(ok, what, detail=""):
    print(f"  [{'PASS' if ok else 'FAIL'}] {what}" + (f" — {detail}" if detail else ""), flush=True)
    if not ok:
        failures.append(what)


def run(argv, cwd=ROOT, timeout=120, env=None):
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    return r.returncode, (r.stdout + r.stderr).strip()


# ----------------------------------------------------------------- (a) promtool
def check_promtool():
    print("== promtool / amtool")
    pdir = os.path.join(DOCKER, "prometheus")
    for argv in (["promtool", "check", "config", "prometheus.yml"],
                 ["promtool", "check", "rules", "alerts.yml"],
                 ["promtool", "test", "rules", "alerts_test.yml"]):
        rc, out = run(argv, cwd=pdir)
        report(rc == 0, " ".join(argv), "" if rc == 0 else out)
    if shutil.which("amtool"):
        rc, out = run(["amtool", "check-config", "alertmanager/alertmanager.yml"], cwd=DOCKER)
        report(rc == 0, "amtool check-config alertmanager/alertmanager.yml", "" if rc == 0 else out)
    else:
        print("  [SKIP] amtool not installed (apt-get install prometheus-alertmanager)")


# ----------------------------------------------------------- (b) docker files
def check_docker():
    print("== docker")
    env = dict(os.environ)
    env.pop("DOCKER_HOST", None)
    rc, out = run(["docker-compose", "-f", "docker/docker-compose.yml", "config", "-q"], env=env)
    report(rc == 0, "docker-compose -f docker/docker-compose.yml config", "" if rc == 0 else out)
    rc, out = run(["docker-compose", "-f", "docker/docker-compose.yml", "config", "--services"], env=env)
    services = set(out.split())
    want = {"relaymeter", "prometheus", "grafana", "alertmanager"}
    report(want <= services, "compose services", ", ".join(sorted(services)))

    # Runtime stage of the Dockerfile: every shared library of the binary comes
    # from a package it installs (libc/libstdc++/libgcc are in debian:12-slim).
    with open(os.path.join(DOCKER, "Dockerfile")) as f:
        dockerfile = f.read()
    runtime = dockerfile.split("AS runtime", 1)[-1]
    rc, out = run(["ldd", os.path.join(common.BUILD, "relaymeter")])
    if rc != 0:
        report(False, "ldd build/relaymeter", out)
        return
    base = {"libc6", "libstdc++6", "libgcc-s1"}
    missing = []
    for lib in re.findall(r"=> (/\S+)", out):
        pkg = "?"
        real = os.path.realpath(lib)  # merged /usr: dpkg may know either spelling
        for path in (lib, real, re.sub(r"^/usr/lib/", "/lib/", real), re.sub(r"^/lib/", "/usr/lib/", real)):
            rc, owner = run(["dpkg", "-S", path])
            if rc == 0:
                pkg = owner.split(":", 1)[0]
                break
        if pkg not in base and not re.search(r"\b" + re.escape(pkg) + r"\b", runtime):
            missing.append(f"{os.path.basename(lib)} ({pkg})")
    report(not missing, "Dockerfile runtime stage installs every library build/relaymeter links",
           "missing: " + ", ".join(missing) if missing else "")


# ------------------------------------------------------------ PromQL helpers
GRAFANA_VARS = {  # Grafana's built-in variables, replaced as a Grafana would with a 1s scrape
    "$__rate_interval": "1m", "${__rate_interval}": "1m", "$__interval": "15s", "${__interval}": "15s",
    "$__range": "5m", "${__range}": "5m",
}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "bool", "offset", "inf", "nan", "atan2", "le"}
# Series Prometheus writes for every scrape target (not in any /metrics).
SCRAPE_SERIES = {"up"}


def dashboard_exprs(dash):
    """[(where, promql)] for every panel target and every query variable."""
    out = []

    def walk_panels(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f'panel "{p.get("title")}" {t.get("refId", "")}', t["expr"]))
            walk_panels(p.get("panels", []))

    walk_panels(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", q)
        if m:  # Grafana's label_values(series, label) = the label's values on that series
            q = f"group by ({m.group(2)}) ({m.group(1)})"
        if q:
            out.append((f'variable ${v["name"]}', q))
    return out


def substitute(expr, variables):
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    for name, value in variables.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    if "$" in expr:
        raise ValueError(f"unresolved variable in {expr}")
    return expr


def metric_names(expr):
    """Metric names an expression selects (strings, label matchers, ranges,
    grouping lists and function names removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", e):
        if m.group(2) or m.group(1).lower() in KEYWORDS:
            continue
        names.add(m.group(1))
    return names


def alert_exprs():
    """(alert name, expr) from alerts.yml, read without a YAML library: an
    `expr:` is either inline or a `|` block."""
    lines = open(ALERTS).read().splitlines()
    out, name, i = [], None, 0
    while i < len(lines):
        s = lines[i].strip()
        if s.startswith("- alert:") or s.startswith("- record:"):
            name = s.split(":", 1)[1].strip()
        elif s.startswith("expr:"):
            rest = s[5:].strip()
            if rest in ("|", "|-", ">", ">-"):
                indent = len(lines[i + 1]) - len(lines[i + 1].lstrip())
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) >= indent):
                    block.append(lines[i].strip())
                    i += 1
                out.append((name, " ".join(b for b in block if b)))
                continue
            out.append((name, rest.strip("'\"")))
        i += 1
    return out


def exported_names(metrics_text):
    names = set()
    for line in metrics_text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][\w:]*", line).group(0))
    return names


# --------------------------------------------------- (c) real Prometheus run
def prom_get(port, path, params=None):
    url = f"http://127.0.0.1:{port}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def prom_query(port, q):
    return prom_get(port, "/api/v1/query", {"query": q})


def check_prometheus():
    print("== dashboard and alert expressions against a real Prometheus")
    work = common.tmpdir("relaymeter-stack-")
    os.makedirs(common.ARTIFACTS, exist_ok=True)
    # every 10th response is a 429: error-rate and status-code panels get data
    fake, rm, port = common.start_pair(work, ["--error-rate", "0.1", "--error-status", "429",
                                              "--latency-ms", "5", "--chunks", "4", "--chunk-interval-ms", "2",
                                              "--model-latency", f"{SLOW_MODEL}=2100",
                                              "--model-latency", f"{MEDIUM_MODEL}=1500"],
                                       extra_config="alerts: { interval_s: 1 }\n"
                                                    f"ledger: {{ path: {os.path.join(work, 'ledger.jsonl')} }}\n")
    print(f"  relaymeter on 127.0.0.1:{port}; logs kept in {os.path.join(common.ARTIFACTS, 'logs', 'stack')}")
    common.drive(port, rounds=4)
    traffic = common.Background(port)
    try:
        pport = common.free_port()
        pdir = os.path.join(work, "prometheus")
        os.makedirs(os.path.join(pdir, "data"))
        shutil.copy(ALERTS, os.path.join(pdir, "alerts.yml"))
        with open(os.path.join(pdir, "prometheus.yml"), "w") as f:
            f.write("global: { scrape_interval: 1s, evaluation_interval: 1s }\n"
                    "rule_files: [alerts.yml]\n"
                    "scrape_configs:\n"
                    "  - job_name: relaymeter\n"
                    f"    static_configs: [{{ targets: ['127.0.0.1:{port}'] }}]\n")
        prom = common.Proc("prometheus", [
            shutil.which("prometheus") or "/usr/bin/prometheus",
            "--config.file", os.path.join(pdir, "prometheus.yml"),
            "--storage.tsdb.path", os.path.join(pdir, "data"),
            f"--web.listen-address=127.0.0.1:{pport}", "--log.level=warn"], work)
        # Ready, then a few scrapes of relaymeter (polling the HTTP API with a deadline).
        deadline = time.monotonic() + 90
        scrapes = 0
        while time.monotonic() < deadline:
            if prom.p.poll() is not None:
                raise RuntimeError("prometheus exited:\n" + prom.tail())
            try:
                r = prom_query(pport, 'count_over_time(up{job="relaymeter"}[5m])')
                res = r["data"]["result"]
                up = prom_query(pport, 'up{job="relaymeter"}')["data"]["result"]
                scrapes = int(float(res[0]["value"][1])) if res else 0
                if scrapes >= 8 and up and up[0]["value"][1] == "1":
                    break
            except OSError:
                pass
            time.sleep(0.25)
        report(scrapes >= 8, "Prometheus scraped relaymeter", f"{scrapes} scrapes, up=1")
        if scrapes < 8:
            print(prom.tail())
            return

        # One model slower than the 2 s latency threshold (the fake delays it
        # 2.1 s), so that the latency rule and the daemon's high_latency alert
        # are compared below as well. Prometheus's rates only see increases of a
        # series it already knows: one request creates the series, then 24 at
        # once (above the 20-request guards) while it scrapes. The background
        # traffic pauses meanwhile, so that the fake's every-10th-request
        # errors fall 2 or 3 times in each of the two counts and both sides see
        # the same error rate for this model (> 5 % either way).
        bg_errors = traffic.stop()
        if bg_errors:
            report(False, "background traffic", "; ".join(bg_errors[:3]))

        def wait_prom_count(model, n):
            deadline, seen = time.monotonic() + 30, 0.0
            while time.monotonic() < deadline:
                res = prom_query(pport, f'sum(ai_requests_total{{model="{model}"}})')["data"]["result"]
                seen = float(res[0]["value"][1]) if res else 0.0
                if seen >= n:
                    break
                time.sleep(0.25)  # polling the API with a deadline: no event to wait on
            return seen

        for model in (SLOW_MODEL, MEDIUM_MODEL):
            common.chat(port, model)
        for model in (SLOW_MODEL, MEDIUM_MODEL):
            wait_prom_count(model, 1)
        slow = [threading.Thread(target=common.chat, args=(port, model))
                for model in (SLOW_MODEL, MEDIUM_MODEL) for _ in range(24)]
        for t in slow:
            t.start()
        for t in slow:
            t.join(timeout=30)
        for model in (SLOW_MODEL, MEDIUM_MODEL):
            seen = wait_prom_count(model, 25)
            report(seen >= 25, f"Prometheus scraped the {model} requests", f"{seen:g} of 25")
        traffic = common.Background(port)

        # The daemon's alert engine (when the build has one) fires high_error_rate
        # for the model that collects the 429s; wait (bounded) until Prometheus
        # has scraped ai_alerts_firing, which the dashboard's alerts panel shows.
        if common.request(port, "GET", "/alerts")[0] == 200:
            deadline, firing = time.monotonic() + 45, []
            while time.monotonic() < deadline and not firing:
                firing = prom_query(pport, "ai_alerts_firing > 0")["data"]["result"]
                if not firing:
                    time.sleep(0.25)  # polling the APIs with a deadline: no event to wait on
            report(bool(firing), "Prometheus scraped a firing ai_alerts_firing",
                   ", ".join(f'{x["metric"].get("type")}/{x["metric"].get("model", "")}' for x in firing))

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            metrics_text = r.read().decode()
        with open(os.path.join(common.ARTIFACTS, "stack_metrics.txt"), "w") as f:
            f.write(metrics_text)
        exported = exported_names(metrics_text)

        dash = json.load(open(DASHBOARD))
        exprs = dashboard_exprs(dash)
        report(len(exprs) >= 8, f"dashboard has {len(exprs)} PromQL expressions")
        print("  -- every dashboard expression returns data ($__rate_interval=1m, $model=.*)")
        for where, expr in exprs:
            q = substitute(expr, {"model": ".*", "datasource": "prometheus"})
            try:
                r = prom_query(pport, q)
            except Exception as e:  # noqa: BLE001
                report(False, where, f"{q}: {e}")
                continue
            res = r.get("data", {}).get("result", [])
            finite = [x for x in res if math.isfinite(float(x["value"][1]))]
            sample = ", ".join(f'{x["metric"].get("model", x["metric"].get("code", "")) or "-"}={float(x["value"][1]):.4g}'
                               for x in finite[:4])
            report(r.get("status") == "success" and bool(finite), where,
                   f"{len(res)} series, {len(finite)} finite ({sample}) :: {q}")

        print("  -- every metric name is exported by relaymeter /metrics")
        refs = {}
        for where, expr in exprs:
            for n in metric_names(expr):
                refs.setdefault(n, set()).add("dashboard")
        for name, expr in alert_exprs():
            for n in metric_names(expr):
                refs.setdefault(n, set()).add(f"alerts.yml:{name}")
        report(len(refs) >= 8, f"{len(refs)} metric names referenced")
        for n in sorted(refs):
            if n in SCRAPE_SERIES:  # written by Prometheus itself for each target
                report(bool(prom_query(pport, f'{n}{{job="relaymeter"}} == 1')["data"]["result"]), n,
                       "Prometheus's own series for the relaymeter target is 1; used by " + ", ".join(sorted(refs[n])))
                continue
            report(n in exported, n, "used by " + ", ".join(sorted(refs[n])))

        print("  -- alerts.yml loaded: every rule evaluates without error")
        rules = [r for g in prom_get(pport, "/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        report(len(rules) == len(alert_exprs()) == 6, f"{len(rules)} rules loaded", ", ".join(r["name"] for r in rules))
        # A rule's health is "unknown" until its first evaluation: poll briefly.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(r["health"] == "unknown" for r in rules):
            time.sleep(0.25)
            rules = [r for g in prom_get(pport, "/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        for r in rules:
            report(r["health"] == "ok", f'rule {r["name"]}', f'health={r["health"]} state={r.get("state")} {r.get("lastError", "")}')
        # The alert expressions (before their `for:`) agree with /summary: the
        # run is shorter than their 5m window, so both cover the same requests.
        # The fake fails every 10th request; the traffic cycles over 5 models,
        # so one model collects the errors and crosses 5 %.
        summary = common.get_json(port, "/summary")
        expect = {
            "HighErrorRate": sorted(m["model"] for m in summary["models"]
                                    if m["error_rate_percent"] > 5 and m["total_requests"] >= 20),
            "HighLatency": sorted(m["model"] for m in summary["models"]
                                  if m["p95_latency_ms"] > 2000 and m["total_requests"] >= 20),
            "HighCost": ["all"] if sum(h["cost_usd"] for h in summary["hourly_cost_usd"]) > 100 else [],
            # relaymeter is up and its ledger (on in this run) writes without
            # errors or waits: the daemon group selects nothing.
            "RelaymeterDown": [],
            "LedgerWriteErrors": [],
            "LedgerBackpressure": [],
        }
        for name, expr in alert_exprs():
            res = prom_query(pport, expr)["data"]["result"]
            got = sorted(x["metric"].get("model", "all") for x in res)
            report(got == expect[name], f"alert expression {name} agrees with /summary",
                   f"Prometheus: {', '.join(got) or 'none'}; /summary: {', '.join(expect[name]) or 'none'}")

        # The daemon's own alert engine (GET /alerts, when the daemon has it) fires
        # the same (type, model) pairs as the rule expressions select.
        status, _ = common.request(port, "GET", "/alerts")
        if status != 200:
            print(f"  [SKIP] daemon /alerts answers {status}: no alert engine in this build to compare with")
        else:
            types = {"HighLatency": "high_latency", "HighErrorRate": "high_error_rate", "HighCost": "high_cost"}
            want = sorted((types[name], m if m != "all" else "") for name, ms in expect.items() for m in ms)
            got, deadline = None, time.monotonic() + 30
            while time.monotonic() < deadline:  # the engine evaluates every alerts.interval_s (1 s here)
                got = sorted((a["type"], a.get("model") or "") for a in common.get_json(port, "/alerts")["alerts"])
                if got == want:
                    break
                time.sleep(0.25)
            report(got == want, "daemon /alerts agrees with the Prometheus rules",
                   f"/alerts: {got}; rules: {want}")
    finally:
        errors = traffic.stop()
        if errors:
            report(False, "background traffic", "; ".join(errors[:3]))


def main():
    print(f"relaymeter stack check (repo {ROOT})")
    check_promtool()
    check_docker()
    try:
        check_prometheus()
    except Exception as e:  # noqa: BLE001
        report(False, "prometheus run", repr(e))
    print()
    if failures:
        print(f"stack check: {len(failures)} FAILED: " + "; ".join(failures))
        return 1
    print("stack check: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
