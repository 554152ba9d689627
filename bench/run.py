#!/usr/bin/env python3
"""The benchmark: messaging-service against a bare actix-web baseline, in one run.

    python3 bench/run.py [--duration SECONDS] [--out DIR]

It builds both in release mode, starts the service on a temporary SQLite database with
default durability (WAL, synchronous = FULL) and the baseline (examples/baseline.rs: same
request shape, no storage), and drives them alternately with the same wrk script at 1, 16,
64 and 256 connections. Then, on fresh services, it measures end-to-end dispatch (from 202
to `sent`, until no message is pending) with zero and with 100 ms provider latency. It
writes result.json and chart.svg (throughput and p99 against connections) to --out.

Ratios, not absolute figures, are the result: the machines are shared and noisy, and both
servers are measured in the same run, one after the other.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONNECTIONS = [1, 16, 64, 256]
SMS = {"from": "+12016661234", "to": "+18045551234", "type": "sms",
       "body": "Hello! This is a test SMS message.", "attachments": None,
       "timestamp": "2024-11-01T14:00:00Z"}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
""" % json.dumps(SMS)


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def ensure_wrk():
    if shutil.which("wrk"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        sh("apt-get", "update", "-qq")
        sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk",
           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return
    sys.exit("bench: wrk is needed (Debian: apt-get install wrk)")


class Server:
    """A process that logs a JSON `listening` line with its address."""

    def __init__(self, argv, env=None, cwd=None):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})}, cwd=cwd, text=True)
        deadline = time.time() + 30
        self.addr = None
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("msg") == "listening":
                self.addr = record["addr"]
                break
        if not self.addr:
            sys.exit("bench: %s did not start" % argv[0])
        # Drain the rest of stdout so logging never blocks on a full pipe.
        self.drain = subprocess.Popen(["cat"], stdin=self.proc.stdout,
                                      stdout=subprocess.DEVNULL)

    def url(self, path):
        return "http://%s%s" % (self.addr, path)

    def peak_rss(self):
        with open("/proc/%d/status" % self.proc.pid) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.drain.wait()


def service(db_dir, latency_ms=0):
    settings = os.path.join(db_dir, "settings.toml")
    with open(settings, "w") as f:
        f.write("[outcomes]\nlatency_ms = %d\n" % latency_ms)
    return Server([os.path.join(ROOT, "target/release/messaging-service"), "--config", settings],
                  env={"MESSAGING__SERVER__BIND": "127.0.0.1:0",
                       "MESSAGING__DATABASE__URL": "sqlite://%s/bench.db" % db_dir})


def to_ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url, connections, duration, script):
    out = subprocess.run(["wrk", "-t1", "-c%d" % connections, "-d%ds" % duration, "--latency",
                          "-s", script, url], check=True, capture_output=True, text=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non_2xx = int(non_2xx.group(1)) if non_2xx else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {
        "connections": connections,
        "requests": total,
        "non_2xx": non_2xx,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        # Only answers that were 2xx count as throughput.
        "rps": rps * (total - non_2xx) / total if total else 0.0,
        "p50_ms": to_ms(re.search(r"50%\s+(\S+)", out).group(1)),
        "p99_ms": to_ms(re.search(r"99%\s+(\S+)", out).group(1)),
    }


def metric_sum(server, name):
    text = urllib.request.urlopen(server.url("/metrics"), timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def dispatch_rate(latency_ms, duration, script):
    """Messages per second from the first 202 to the moment nothing is pending."""
    with tempfile.TemporaryDirectory() as db_dir:
        server = service(db_dir, latency_ms)
        try:
            started = time.time()
            load = wrk(server.url("/api/messages/sms"), 64, duration, script)
            while metric_sum(server, "messaging_pending_messages") > 0:
                if time.time() - started > 600:
                    sys.exit("bench: dispatch did not drain in 10 minutes")
                time.sleep(0.05)
            elapsed = time.time() - started
            accepted = metric_sum(server, "messaging_messages_accepted_total")
            sent = metric_sum(server, "messaging_dispatch_outcomes_total")
            return {"provider_latency_ms": latency_ms, "accepted": int(accepted),
                    "attempts_finished": int(sent), "seconds": round(elapsed, 3),
                    "messages_per_second": round(accepted / elapsed, 1),
                    "ingest_rps": round(load["rps"], 1)}
        finally:
            server.stop()


def chart(result, path):
    """Two panels (requests/s and p99 against connections), both servers, as SVG."""
    width, height, pad = 900, 380, 60
    panel_w = (width - 3 * pad) / 2
    colours = {"service": "#1f77b4", "baseline": "#ff7f0e"}
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
             'font-family="sans-serif" font-size="12">' % (width, height),
             '<rect width="100%" height="100%" fill="white"/>']
    for index, (key, title) in enumerate([("rps", "requests/s (2xx)"), ("p99_ms", "p99 latency (ms)")]):
        x0, y0, h = pad + index * (panel_w + pad), 40, height - 115
        top = max(p[key] for name in colours for p in result[name]) * 1.1 or 1
        parts.append('<text x="%.0f" y="25" font-size="14">%s</text>' % (x0, title))
        parts.append('<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>'
                     % (x0, y0 + h, x0 + panel_w, y0 + h))
        parts.append('<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="black"/>'
                     % (x0, y0, x0, y0 + h))
        for tick in range(5):
            value = top * tick / 4
            y = y0 + h - h * tick / 4
            parts.append('<text x="%.0f" y="%.0f" text-anchor="end">%s</text>'
                         % (x0 - 5, y + 4, "%.0f" % value if value >= 10 else "%.2f" % value))
        for i, c in enumerate(CONNECTIONS):
            x = x0 + panel_w * (i + 0.5) / len(CONNECTIONS)
            parts.append('<text x="%.0f" y="%.0f" text-anchor="middle">%d</text>' % (x, y0 + h + 18, c))
        parts.append('<text x="%.0f" y="%.0f" text-anchor="middle">connections</text>'
                     % (x0 + panel_w / 2, y0 + h + 36))
        for name, colour in colours.items():
            points = []
            for i, p in enumerate(result[name]):
                x = x0 + panel_w * (i + 0.5) / len(CONNECTIONS)
                y = y0 + h - h * p[key] / top
                points.append("%.1f,%.1f" % (x, y))
                parts.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (x, y, colour))
            parts.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>'
                         % (" ".join(points), colour))
    for i, (name, colour) in enumerate(colours.items()):
        parts.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>'
                     % (pad + i * 160, height - 22, colour))
        parts.append('<text x="%d" y="%d">%s</text>' % (pad + 18 + i * 160, height - 12,
                     "messaging-service" if name == "service" else "bare baseline"))
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    args = parser.parse_args()
    ensure_wrk()
    sh("cargo", "build", "--release", "--quiet", "--bin", "messaging-service",
       "--example", "baseline", cwd=ROOT)
    os.makedirs(args.out, exist_ok=True)
    script = os.path.join(args.out, "post_sms.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)

    result = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                          "wrk": "wrk -t1 -cN -d%ds --latency" % args.duration},
              "service": [], "baseline": []}
    with tempfile.TemporaryDirectory() as db_dir:
        svc = service(db_dir)
        base = Server([os.path.join(ROOT, "target/release/examples/baseline"), "127.0.0.1:0"])
        try:
            for connections in CONNECTIONS:
                for name, server in (("baseline", base), ("service", svc)):
                    point = wrk(server.url("/api/messages/sms"), connections, args.duration, script)
                    result[name].append(point)
                    print("%-8s c=%-3d %9.0f req/s  p50 %7.2f ms  p99 %7.2f ms  non-2xx %d"
                          % (name, connections, point["rps"], point["p50_ms"], point["p99_ms"],
                             point["non_2xx"]), flush=True)
                if connections == 64:
                    result["service_peak_rss_bytes_after_64"] = svc.peak_rss()
            result["service_peak_rss_bytes"] = svc.peak_rss()
            result["baseline_peak_rss_bytes"] = base.peak_rss()
        finally:
            svc.stop()
            base.stop()

    at64 = {name: next(p for p in result[name] if p["connections"] == 64)
            for name in ("service", "baseline")}
    result["ratios_at_64"] = {
        "ingest_rps_service_over_baseline": round(at64["service"]["rps"] / at64["baseline"]["rps"], 3),
        "p99_service_over_baseline": round(at64["service"]["p99_ms"] / at64["baseline"]["p99_ms"], 2),
    }
    result["dispatch"] = [dispatch_rate(0, args.duration, script),
                          dispatch_rate(100, args.duration, script)]
    for d in result["dispatch"]:
        print("dispatch with %3d ms provider latency: %d messages in %.2f s = %.0f messages/s"
              % (d["provider_latency_ms"], d["accepted"], d["seconds"], d["messages_per_second"]))
    print("at 64 connections: service/baseline requests/s %.3f, p99 %.2fx; peak RSS %.1f MB"
          % (result["ratios_at_64"]["ingest_rps_service_over_baseline"],
             result["ratios_at_64"]["p99_service_over_baseline"],
             result["service_peak_rss_bytes_after_64"] / 1e6))
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    chart(result, os.path.join(args.out, "chart.svg"))
    print("wrote %s and %s" % (os.path.join(args.out, "result.json"),
                               os.path.join(args.out, "chart.svg")))


if __name__ == "__main__":
    main()
