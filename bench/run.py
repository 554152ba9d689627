#!/usr/bin/env python3
"""The benchmark: messaging-service against a bare actix-web baseline, in one run.

    python3 bench/run.py [--duration SECONDS] [--out DIR] [--postgres URL] [--large]

It builds both in release mode, starts the service on a temporary SQLite database with
default durability (WAL, synchronous = FULL) and the baseline (examples/baseline.rs: same
request shape, no storage), and drives them alternately with the same wrk script at 1, 16,
64 and 256 connections. Then, on fresh services, it measures end-to-end dispatch (from 202
to `sent`, until no message is pending) with zero and with 100 ms provider latency, the
peak RSS of 40 concurrent readers of a conversation page of 100 messages of 250 KB, and
end to end with status callbacks to a local receiver and with the real provider kinds
(twilio, sendgrid) against local stand-ins of their APIs (the baseline binary answers as
their documentation says, so the figures are the service's cost, not a slow fake's).

PostgreSQL (skipped when --postgres names no reachable server; default
postgres://postgres@127.0.0.1:5432): pgbench's one-row-insert rate from 64 clients and its
rate in 64-row transactions on the same server, then ingest and end-to-end for one
instance and for two instances sharing the database (the same 64 connections split
between them), and ingest for one and two instances when each message goes to one of
10,000 recipients (a conversation each) instead of all to one. pgbench's one-row rate is
measured right before and right after one instance's ingest, and one instance's ingest
right before and right after two instances' (with the default two writers each, and again
with `database.writers = 1` each): each ratio is against the mean of the two.

--large adds "flat as the data grows": ingest and the p99 of the four read endpoints on a
SQLite database holding 1 M and then 10 M messages in 50,000 conversations, against one
holding a message in each conversation, measured on a fresh copy right before and right
after each larger one (5 to 17 more minutes on two cores, most of it writing the 10 M
rows).

It writes result.json and chart.svg (throughput and p99 against connections, and a bar
for every other figure) to --out, after each part.
Ratios, not absolute figures, are the result: the machines are shared and noisy, and
everything compared is measured in the same run, one after the other.
"""

import argparse
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONNECTIONS = [1, 16, 64, 256]
SMS = {"from": "+12016661234", "to": "+18045551234", "type": "sms",
       "body": "Hello! This is a test SMS message.", "attachments": None,
       "timestamp": "2024-11-01T14:00:00Z"}
EMAIL = {"from": "user@usehatchapp.com", "to": "contact@gmail.com",
         "body": "Hello! This is a test email message.", "attachments": None,
         "timestamp": "2024-11-01T14:00:00Z"}


def post_script(body):
    return """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
""" % json.dumps(body)


WRK_SCRIPT = post_script(SMS)
# The same SMS to one of 10,000 recipients (a conversation each), each instance its own
# sequence, the same in every run.
MANY_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
-- Each instance's wrk draws a sequence of its own (its index is the script's argument):
-- two instances in lockstep would create every new conversation at the same moment.
function init(args)
  math.randomseed(1 + tonumber(args[1] or "0"))
end
local head = '%s'
local tail = '%s'
request = function()
  return wrk.format(nil, nil, nil, head .. string.format("+1804%%07d", math.random(0, 9999)) .. tail)
end
""" % tuple(json.dumps({**SMS, "to": "TO"}).split("TO"))
EMAIL_SCRIPT = post_script(EMAIL)
CONVERSATIONS = 50_000


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def ensure_tools():
    """wrk always; pgbench and psql for the PostgreSQL part (Debian's postgresql-client)."""
    missing = [pkg for tool, pkg in (("wrk", "wrk"), ("pgbench", "postgresql-client"),
                                     ("psql", "postgresql-client"))
               if not shutil.which(tool)]
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        sh("apt-get", "update", "-qq")
        sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", *sorted(set(missing)),
           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return
    if not shutil.which("wrk"):
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


def service(db_dir, latency_ms=0, database_url=None, extra="", env=None):
    """The service on `database_url` (default: a new SQLite file in `db_dir`), with
    `extra` TOML appended to its settings."""
    settings = os.path.join(db_dir, "settings-%d.toml" % random.getrandbits(32))
    with open(settings, "w") as f:
        f.write("[outcomes]\nlatency_ms = %d\n%s" % (latency_ms, extra))
    url = database_url or "sqlite://%s/bench.db" % db_dir
    return Server([os.path.join(ROOT, "target/release/messaging-service"), "--config", settings],
                  env={"MESSAGING__SERVER__BIND": "127.0.0.1:0",
                       "MESSAGING__DATABASE__URL": url, **(env or {})})


def to_ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s|m|h)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0,
                           "h": 3_600_000.0}[unit]


def wrk(url, connections, duration, script, instance=0):
    out = subprocess.run(["wrk", "-t1", "-c%d" % connections, "-d%ds" % duration, "--latency",
                          "-s", script, url, "--", str(instance)],
                         check=True, capture_output=True, text=True).stdout
    # The distribution's lines start with the percentile; the thread statistics' "+/- Stdev"
    # column also holds percentages (85.50%), which an unanchored "50%" would match.
    if not re.search(r"^\s*99%\s+[\d.]+(us|ms|s|m|h)\b", out, re.M):
        sys.exit("bench: wrk printed no latency distribution:\n" + out)
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
        "p50_ms": to_ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1)),
        "p99_ms": to_ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1)),
    }


def metric_sum(server, name, labels=""):
    text = urllib.request.urlopen(server.url("/metrics"), timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{" + labels) or line.startswith(name + " "))


def drive(servers, connections, duration, script):
    """wrk against every server at once, `connections` split between them; the summed
    req/s and the worst p99."""
    points = [None] * len(servers)

    def one(i):
        points[i] = wrk(servers[i].url(script[1]), connections // len(servers), duration,
                        script[0], i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(servers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"connections": connections, "instances": len(servers),
            "rps": round(sum(p["rps"] for p in points), 1),
            "p99_ms": max(p["p99_ms"] for p in points),
            "non_2xx": sum(p["non_2xx"] for p in points)}


def end_to_end(servers, duration, script, label, callbacks=False):
    """Messages per second from the first 202 to the moment nothing is pending (and, with
    callbacks, every final status delivered to the receiver), across `servers`."""
    def total(name, labels=""):
        return sum(metric_sum(s, name, labels) for s in servers)

    def busy():
        if any(metric_sum(s, "messaging_pending_messages") > 0 for s in servers):
            return True
        # The gauge counts what providers hold, not a dispatch still on its way to one (a
        # worker's gathered list, a mailbox): every accepted message has an attempt first.
        if (total("messaging_dispatch_outcomes_total")
                < total("messaging_messages_accepted_total")):
            return True
        if callbacks:
            # A callback given up has had its fate too (none is, against the stand-in).
            return (total("messaging_callbacks_total", 'outcome="delivered"')
                    + total("messaging_callbacks_total", 'outcome="given_up"')
                    < total("messaging_messages_accepted_total"))
        return False

    def drain(since):
        while busy():
            if time.time() - since > 600:
                sys.exit("bench: %s did not drain in 10 minutes" % label)
            time.sleep(0.05)

    # Servers used before (the PostgreSQL part measures ingest on them first) finish that
    # work, and only this run's messages count.
    drain(time.time())
    accepted_before = total("messaging_messages_accepted_total")
    finished_before = total("messaging_dispatch_outcomes_total")
    started = time.time()
    load = drive(servers, 64, duration, script)
    drain(started)
    elapsed = time.time() - started
    accepted = total("messaging_messages_accepted_total") - accepted_before
    finished = total("messaging_dispatch_outcomes_total") - finished_before
    point = {"run": label, "instances": len(servers), "accepted": int(accepted),
             "attempts_finished": int(finished), "seconds": round(elapsed, 3),
             "messages_per_second": round(accepted / elapsed, 1),
             "ingest_rps": load["rps"], "ingest_p99_ms": load["p99_ms"]}
    print("end to end, %-34s %7d messages in %6.2f s = %7.0f messages/s (ingest %.0f req/s)"
          % (label + ":", point["accepted"], point["seconds"], point["messages_per_second"],
             point["ingest_rps"]), flush=True)
    return point


def dispatch_rate(latency_ms, duration, script, label=None, extra="", env=None,
                  callbacks=False):
    with tempfile.TemporaryDirectory() as db_dir:
        server = service(db_dir, latency_ms, extra=extra, env=env)
        try:
            point = end_to_end([server], duration, script,
                               label or "simulator, %d ms latency" % latency_ms, callbacks)
            point["provider_latency_ms"] = latency_ms
            return point
        finally:
            server.stop()


def features(duration, scripts):
    """End to end with this round's features on: callbacks to a local receiver, and the
    real provider kinds against local stand-ins of Twilio's and SendGrid's APIs."""
    fake = Server([os.path.join(ROOT, "target/release/examples/baseline"), "127.0.0.1:0"])
    base = "http://%s" % fake.addr
    real = ('[server]\npublic_url = "http://127.0.0.1:9"\n'
            '[providers.sms-mms]\nkind = "twilio"\nbase_url = "%s"\n'
            'account_sid = "AC00000000000000000000000000000000"\n'
            'auth_token_env = "BENCH_TWILIO_TOKEN"\n'
            '[providers.email]\nkind = "sendgrid"\nbase_url = "%s"\n'
            'api_key_env = "BENCH_SENDGRID_KEY"\n' % (base, base))
    secrets = {"BENCH_TWILIO_TOKEN": "bench-token", "BENCH_SENDGRID_KEY": "SG.bench"}
    try:
        return [
            dispatch_rate(0, duration, scripts["sms"], "simulator, callbacks on",
                          extra='[callbacks]\nurl = "%s/callbacks"\n' % base, callbacks=True),
            dispatch_rate(0, duration, scripts["sms"], "twilio (local stand-in)",
                          extra=real, env=secrets),
            dispatch_rate(0, duration, scripts["email"], "sendgrid (local stand-in)",
                          extra=real, env=secrets),
        ]
    finally:
        fake.stop()


def read_memory():
    """The read budget under its worst case: 100 messages of 250 KB in one conversation,
    then 40 concurrent readers of the 100-message page (25 MB each); peak RSS."""
    with tempfile.TemporaryDirectory() as db_dir:
        server = service(db_dir)
        try:
            filler = "x" * (250_000 - 100)
            for n in range(100):
                body = dict(SMS, body="%03d%s" % (n, filler))
                request = urllib.request.Request(
                    server.url("/api/messages/sms"), data=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"})
                accepted = json.load(urllib.request.urlopen(request, timeout=30))
            path = "/api/conversations/%d/messages?page_size=100" % accepted["conversation_id"]
            before = server.peak_rss()
            answers = []

            def reader():
                page = json.load(urllib.request.urlopen(server.url(path), timeout=300))
                answers.append(sum(len(m["body"]) for m in page["items"]))

            started = time.time()
            threads = [threading.Thread(target=reader) for _ in range(40)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            point = {"readers": 40, "page_bytes_of_bodies": max(answers, default=0),
                     "answers_complete": len(answers) == 40 and len(set(answers)) == 1,
                     "seconds": round(time.time() - started, 2),
                     "peak_rss_bytes_before": before, "peak_rss_bytes": server.peak_rss()}
        finally:
            server.stop()
    print("40 readers of 25 MB pages: peak RSS %.1f MB, every answer complete: %s"
          % (point["peak_rss_bytes"] / 1e6, point["answers_complete"]), flush=True)
    return point


def psql(url, sql):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True,
                   capture_output=True, text=True)


def with_database(server_url, name):
    parts = urllib.parse.urlparse(server_url)
    return urllib.parse.urlunparse(parts._replace(path="/" + name))


def pgbench(url, duration, sql, clients=64):
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(sql)
    try:
        out = subprocess.run(["pgbench", "-n", "-M", "prepared", "-c%d" % clients, "-j2",
                              "-T%d" % duration, "-f", f.name, url],
                             check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    return float(re.search(r"tps = ([\d.]+)", out).group(1))


def postgres(server_url, duration, scripts):
    """pgbench's insert rates, then one and two instances on one database. Each figure a
    target compares with another is measured right before and right after it, and the
    ratio is against their mean: the parts are tens of seconds apart, and the machine's
    speed drifts over that time (pgbench's rate moved by a third within a minute)."""
    try:
        if not shutil.which("pgbench"):
            raise FileNotFoundError("pgbench is not installed")
        psql(with_database(server_url, "postgres"), "SELECT 1")
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        print("bench: no PostgreSQL at %s, its part is skipped (%s)" % (server_url, e))
        return None
    result = {}
    name = "bench_%d" % os.getpid()
    admin = with_database(server_url, "postgres")
    insert = "INSERT INTO one_row (body) VALUES ('%s');\n" % SMS["body"]

    def fresh():
        psql(admin, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
        psql(admin, "CREATE DATABASE %s" % name)
        return with_database(server_url, name)

    def one_row_table():
        url = fresh()
        psql(url, "CREATE TABLE one_row (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL, "
                  "created_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        return url

    def one_row_inserts():
        rate = round(pgbench(one_row_table(), duration, insert), 1)
        print("pgbench, 64 clients: %.0f one-row inserts/s" % rate, flush=True)
        return rate

    def instances(count, script, label, e2e=False, extra=""):
        """`count` instances on a fresh database, `extra` added to their settings: ingest,
        then end to end if `e2e`."""
        with tempfile.TemporaryDirectory() as settings_dir:
            url = fresh()
            servers = []
            try:
                for _ in range(count):
                    servers.append(service(settings_dir, database_url=url, extra=extra))
                ingest = drive(servers, 64, duration, script)
                print("postgres, %d instance(s)%s: ingest %.0f req/s, p99 %.2f ms"
                      % (count, label, ingest["rps"], ingest["p99_ms"]), flush=True)
                if not e2e:
                    return ingest
                return ingest, end_to_end(servers, duration, script,
                                          "postgres, %d instance(s)" % count)
            finally:
                for server in servers:
                    server.stop()

    def mean(a, b):
        return (a + b) / 2

    try:
        before = one_row_inserts()
        result["pgbench_rows_per_second_in_64_row_transactions"] = round(
            64 * pgbench(one_row_table(), duration, "BEGIN;\n" + insert * 64 + "COMMIT;\n"), 1)
        print("pgbench, 64 clients: %.0f rows/s in 64-row transactions"
              % result["pgbench_rows_per_second_in_64_row_transactions"], flush=True)
        one, one_e2e = instances(1, scripts["sms"], "", e2e=True)
        after = one_row_inserts()
        two, two_e2e = instances(2, scripts["sms"], "", e2e=True)
        one_again = instances(1, scripts["sms"], ", again")
        # The README's advice for instances sharing a small server: one writer each.
        two_one_writer = instances(2, scripts["sms"], ", one writer each",
                                   extra="[database]\nwriters = 1\n")
        one_third = instances(1, scripts["sms"], ", a third time")
        many = [instances(n, scripts["sms_many"], ", 10,000 recipients") for n in (1, 2, 1)]
        result["pgbench_one_row_inserts_per_second"] = round(mean(before, after), 1)
        result["pgbench_one_row_inserts_per_second_before"] = before
        result["pgbench_one_row_inserts_per_second_after"] = after
        result["instances_1"] = {"ingest": one, "end_to_end": one_e2e, "ingest_again": one_again,
                                 "ingest_third": one_third,
                                 "ingest_10000_recipients": many[0],
                                 "ingest_10000_recipients_again": many[2]}
        result["instances_2"] = {"ingest": two, "end_to_end": two_e2e,
                                 "ingest_one_writer_each": two_one_writer,
                                 "ingest_10000_recipients": many[1]}
        result["ratios"] = {
            "one_instance_over_pgbench_one_row": round(
                one["rps"] / result["pgbench_one_row_inserts_per_second"], 3),
            "two_instances_over_one": round(
                two["rps"] / mean(one["rps"], one_again["rps"]), 3),
            "two_instances_one_writer_each_over_one": round(
                two_one_writer["rps"] / mean(one_again["rps"], one_third["rps"]), 3),
            "two_instances_over_one_10000_recipients": round(
                many[1]["rps"] / mean(many[0]["rps"], many[2]["rps"]), 3),
            # End to end has one measurement of one instance: it drains for seconds after.
            "two_instances_over_one_end_to_end": round(
                two_e2e["messages_per_second"] / one_e2e["messages_per_second"], 3),
        }
        print("postgres ratios: %s" % json.dumps(result["ratios"]), flush=True)
        return result
    finally:
        psql(admin, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


def seed(db_path, messages):
    """Writes `messages` sent SMS into CONVERSATIONS conversations straight into SQLite (the
    schema is the service's own, made by its first start), in the shape the service
    stores them; each conversation's count comes from the insert trigger, as in service."""
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA synchronous = OFF")
    db.execute("PRAGMA journal_mode = WAL")
    now = "2026-11-01T00:00:00.000000Z"
    with db:
        # `last_message_at` starts before every message: the insert trigger raises it.
        db.executemany(
            "INSERT OR IGNORE INTO conversations (participant_a, participant_b, message_count, "
            "created_at, last_message_at) VALUES (?, ?, 0, ?, '2000-01-01T00:00:00.000000Z')",
            (("+12016661234", "+1555%07d" % c, now) for c in range(CONVERSATIONS)))
    ids = [row[0] for row in db.execute("SELECT id FROM conversations ORDER BY id")]
    batch = 200_000
    for start in range(0, messages, batch):
        def rows():
            for n in range(start, min(start + batch, messages)):
                c = n % CONVERSATIONS
                at = "2024-%02d-%02dT%02d:%02d:%02d.000000Z" % (
                    1 + n // 2_000_000 % 12, 1 + n // 80_000 % 28, n // 3600 % 24,
                    n // 60 % 60, n % 60)
                yield (ids[c], "+12016661234", "+1555%07d" % c,
                       "Seeded message number %d, a text of ordinary length." % n, at, now, now)
        with db:
            db.executemany(
                "INSERT INTO messages (conversation_id, direction, channel, from_addr, to_addr, "
                "body, timestamp, provider_name, status, attempt_count, created_at, updated_at) "
                "VALUES (?, 'outbound', 'sms', ?, ?, ?, ?, 'sms-mms', 'sent', 1, ?, ?)", rows())
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def read_script(path):
    return """
wrk.method = "GET"
wrk.path = "%s"
""" % path


def at_scale(duration, out_dir, scripts):
    """Ingest and the four read endpoints' p99 with 50 k, 1 M and 10 M messages stored.

    Each larger database is measured between two measurements of a fresh copy of the
    50 k one, taken right before and right after it, and its ratios are against their
    mean: the sizes are minutes apart (the seeding), and this machine's speed drifts over
    minutes, so a slower stretch measured on the larger database alone would read as
    growth."""

    def measure(db_dir):
        server = service(db_dir)
        try:
            ingest = drive([server], 64, duration, scripts["sms"])
            # The ingest's conversation and one of its messages: the same reads in every
            # database, whatever else it holds.
            request = urllib.request.Request(
                server.url("/api/messages/sms"), data=json.dumps(SMS).encode(),
                headers={"Content-Type": "application/json"})
            accepted = json.load(urllib.request.urlopen(request, timeout=30))
            conversation, message = accepted["conversation_id"], accepted["id"]
            reads = {}
            for name, path in (
                    ("conversations", "/api/conversations?page_size=50"),
                    ("conversation_messages",
                     "/api/conversations/%d/messages?page_size=50" % conversation),
                    ("message", "/api/messages/%d" % message),
                    ("providers", "/api/providers")):
                script = os.path.join(out_dir, "read_%s.lua" % name)
                with open(script, "w") as f:
                    f.write(read_script(path))
                point = wrk(server.url(path), 16, duration, script)
                reads[name] = {"rps": round(point["rps"], 1), "p99_ms": point["p99_ms"],
                               "non_2xx": point["non_2xx"]}
        finally:
            server.stop()
        return {"ingest_rps": ingest["rps"], "ingest_p99_ms": ingest["p99_ms"], "reads": reads}

    def seeded(db_dir, messages):
        server = service(db_dir)  # its first start makes the schema
        server.stop()
        started = time.time()
        seed(os.path.join(db_dir, "bench.db"), messages)
        # The seed wrote without syncing: its gigabytes of dirty pages would otherwise be
        # written back while the service runs, and its commits' fsyncs wait behind them
        # (a p99 of 1.1 s at 10 M that was the disk's, not the service's).
        os.sync()
        return round(time.time() - started, 1)

    def show(messages, point):
        print("with %8d messages stored: ingest %.0f req/s; read p99 %s"
              % (messages, point["ingest_rps"],
                 ", ".join("%s %.2f ms" % (k, v["p99_ms"]) for k, v in point["reads"].items())),
              flush=True)
        return point

    # The smallest database holds one message in each of the 50,000 conversations, so that
    # every size answers the same pages (an empty one lists one conversation). Each of its
    # measurements is on a fresh copy: ingest adds to it.
    with tempfile.TemporaryDirectory() as smallest_dir:
        seconds = seeded(smallest_dir, CONVERSATIONS)

        def smallest():
            with tempfile.TemporaryDirectory() as db_dir:
                shutil.copy(os.path.join(smallest_dir, "bench.db"), db_dir)
                return show(CONVERSATIONS, measure(db_dir))

        points = []
        for messages in (1_000_000, 10_000_000):
            with tempfile.TemporaryDirectory() as db_dir:
                seconds_large = seeded(db_dir, messages)
                before = smallest()
                if not points:
                    points.append({"stored_messages": CONVERSATIONS, "seed_seconds": seconds,
                                   **before})
                point = show(messages, measure(db_dir))
            after = smallest()

            def mean(f):
                return (f(before) + f(after)) / 2

            points.append({
                "stored_messages": messages, "seed_seconds": seconds_large, **point,
                "smallest_before": before, "smallest_after": after,
                "ingest_over_smallest": round(
                    point["ingest_rps"] / mean(lambda p: p["ingest_rps"]), 3),
                "read_p99_over_smallest": {
                    k: round(v["p99_ms"] / mean(lambda p: p["reads"][k]["p99_ms"]), 2)
                    for k, v in point["reads"].items()}})
    return points


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
    bars(parts, result, top=height)
    parts.append("</svg>")
    svg = "\n".join(parts) + "\n"
    # The bar panels below the two line panels make the picture taller than it began.
    svg = svg.replace('height="%d"' % height, 'height="%d"' % (height + bars_height(result)), 1)
    with open(path, "w") as f:
        f.write(svg)


def bar_rows(result):
    """Every other figure of the run, as (group, label, value) rows for the bar panels."""
    rows = []
    at64 = {name: next((p for p in result.get(name, []) if p["connections"] == 64), None)
            for name in ("service", "baseline")}
    if at64["service"] and at64["baseline"]:
        rows += [("per second", "bare baseline, ingest at 64 connections", at64["baseline"]["rps"]),
                 ("per second", "SQLite, ingest at 64 connections", at64["service"]["rps"])]
    for d in result.get("dispatch", []) + result.get("features", []):
        rows.append(("per second", "SQLite, end to end, " + d["run"], d["messages_per_second"]))
    pg = result.get("postgres")
    if pg:
        for when in ("before", "after"):
            key = "pgbench_one_row_inserts_per_second_" + when
            if key in pg:
                rows.append(("per second", "pgbench, one-row inserts, 64 clients, " + when,
                             pg[key]))
        rows.append(("per second", "pgbench, one-row inserts, 64 clients%s"
                     % (", mean" if "pgbench_one_row_inserts_per_second_before" in pg else ""),
                     pg["pgbench_one_row_inserts_per_second"]))
        for n in (1, 2):
            part = pg["instances_%d" % n]
            rows += [("per second", "PostgreSQL, %d instance(s), ingest" % n, part["ingest"]["rps"]),
                     ("per second", "PostgreSQL, %d instance(s), end to end" % n,
                      part["end_to_end"]["messages_per_second"])]
            for key, label in (("ingest_again", "again"), ("ingest_third", "a third time"),
                               ("ingest_one_writer_each", "one writer each")):
                if key in part:
                    rows.append(("per second", "PostgreSQL, %d instance(s), ingest, %s"
                                 % (n, label), part[key]["rps"]))
            for key, label in (("ingest_10000_recipients", ""),
                               ("ingest_10000_recipients_again", ", again")):
                if key in part:
                    rows.append(("per second", "PostgreSQL, %d instance(s), ingest, 10,000 "
                                 "recipients%s" % (n, label), part[key]["rps"]))
    for point in result.get("at_scale", []):
        stored = "%.2g M stored" % (point["stored_messages"] / 1e6)
        rows.append(("per second", "SQLite, ingest, %s" % stored, point["ingest_rps"]))
        for name, read in point["reads"].items():
            rows.append(("p99 ms", "read %s, %s" % (name, stored), read["p99_ms"]))
    return rows


def bars_height(result):
    rows = bar_rows(result)
    groups = len({g for g, _, _ in rows})
    return 18 * len(rows) + 40 * groups + 10


def bars(parts, result, top):
    """Horizontal bars, one panel per unit, each bar labelled with its figure."""
    rows = bar_rows(result)
    y = top
    for group in dict.fromkeys(g for g, _, _ in rows):
        members = [r for r in rows if r[0] == group]
        most = max(v for _, _, v in members) or 1
        parts.append('<text x="60" y="%d" font-size="14">%s</text>' % (y + 25, group))
        y += 35
        for _, label, value in members:
            width = 420 * value / most
            parts.append('<text x="390" y="%d" text-anchor="end">%s</text>' % (y + 12, label))
            parts.append('<rect x="400" y="%d" width="%.1f" height="14" fill="#1f77b4"/>'
                         % (y, width))
            parts.append('<text x="%.1f" y="%d">%s</text>'
                         % (405 + width, y + 12, "%.0f" % value if value >= 100 else "%.2f" % value))
            y += 18
        y += 5


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    parser.add_argument("--postgres", default=os.environ.get(
        "MESSAGING_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432"),
        help="a PostgreSQL server to measure on (its databases are made and dropped)")
    parser.add_argument("--large", action="store_true",
                        help="also measure with 1 M and 10 M messages stored (5 to 17 minutes more)")
    args = parser.parse_args()
    ensure_tools()
    sh("cargo", "build", "--release", "--quiet", "--bin", "messaging-service",
       "--example", "baseline", cwd=ROOT)
    os.makedirs(args.out, exist_ok=True)
    script = os.path.join(args.out, "post_sms.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    email_script = os.path.join(args.out, "post_email.lua")
    with open(email_script, "w") as f:
        f.write(EMAIL_SCRIPT)
    many_script = os.path.join(args.out, "post_sms_many.lua")
    with open(many_script, "w") as f:
        f.write(MANY_SCRIPT)
    scripts = {"sms": (script, "/api/messages/sms"),
               "sms_many": (many_script, "/api/messages/sms"),
               "email": (email_script, "/api/messages/email")}

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
    print("at 64 connections: service/baseline requests/s %.3f, p99 %.2fx; peak RSS %.1f MB"
          % (result["ratios_at_64"]["ingest_rps_service_over_baseline"],
             result["ratios_at_64"]["p99_service_over_baseline"],
             result["service_peak_rss_bytes_after_64"] / 1e6), flush=True)

    def save():
        """After every part, so a part that fails leaves the earlier ones written."""
        with open(os.path.join(args.out, "result.json"), "w") as f:
            json.dump(result, f, indent=2)
        chart(result, os.path.join(args.out, "chart.svg"))

    save()
    result["dispatch"] = [dispatch_rate(0, args.duration, scripts["sms"]),
                          dispatch_rate(100, args.duration, scripts["sms"])]
    save()
    result["read_memory"] = read_memory()
    save()
    result["features"] = features(args.duration, scripts)
    save()
    result["postgres"] = postgres(args.postgres, args.duration, scripts)
    save()
    if args.large:
        result["at_scale"] = at_scale(args.duration, args.out, scripts)
        save()
    print("wrote %s and %s" % (os.path.join(args.out, "result.json"),
                               os.path.join(args.out, "chart.svg")))


if __name__ == "__main__":
    main()
