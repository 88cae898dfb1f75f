#!/usr/bin/env python3
"""Server CPU with N dashboards open during mass drops.

Starts a release `merpati serve` on a fresh data directory and a `merpati simulate` fleet
of device links against it that drops a share of its devices at once, every cycle, and
brings them back. It measures the server's CPU (from /proc) over whole cycles, first with
no dashboard open, then with N dashboards open on the devices page: each signs in as a
browser does, loads /devices, and follows /ui/stream?kinds=devices exactly as the page's
script does (the devices page patches its rows in place from the stream and fetches
nothing more). It prints CPU per cycle with and without, and what each dashboard received.

    cargo build --release
    bench/dashboard-browsers.py --browsers 20 --devices 5000 --drop-fraction 0.2
"""
import argparse, http.client, json, os, re, secrets, shutil, signal, socket, statistics
import subprocess, tempfile, threading, time, urllib.parse

p = argparse.ArgumentParser()
p.add_argument("--binary", default="target/release/merpati")
p.add_argument("--browsers", type=int, default=20)
p.add_argument("--devices", type=int, default=5000)
p.add_argument("--drop-fraction", type=float, default=0.2)
p.add_argument("--cycle", type=float, default=20.0, help="seconds between drops")
p.add_argument("--cycles", type=int, default=3, help="cycles measured each way")
args = p.parse_args()

TICK = os.sysconf("SC_CLK_TCK")
admin = secrets.token_hex(16)
data = tempfile.mkdtemp(prefix="merpati-browsers-")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
url = "http://127.0.0.1:%d" % port
env = dict(os.environ, MERPATI_ADMIN_TOKEN=admin, MERPATI_PRESENCE_GRACE="2s",
           MERPATI_LOG="warn")
server = subprocess.Popen([args.binary, "serve", "--listen", "127.0.0.1:%d" % port,
                           "--data-dir", data], env=env)
fleet = None


def call(method, path, token=None, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    payload = None
    if body is not None:
        payload = body if isinstance(body, (bytes, str)) else json.dumps(body)
        h.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=payload, headers=h)
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    return r.status, r.getheaders(), raw


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cookie(headers, name):
    for k, v in headers:
        if k.lower() == "set-cookie" and v.startswith(name + "="):
            return v.split(";")[0]


def sign_in(key):
    _, h, raw = call("GET", "/login")
    csrf = re.search(rb'name="_csrf" value="([^"]+)"', raw).group(1).decode()
    form = urllib.parse.urlencode({"_csrf": csrf, "api_key": key, "next": "/devices"})
    _, h, _ = call("POST", "/login", body=form, headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": cookie(h, "merpati_login")})
    return cookie(h, "merpati_session")


class Dashboard(threading.Thread):
    """What the devices page does: load, then follow the stream of device changes."""

    def __init__(self, session):
        super().__init__(daemon=True)
        self.session = session
        self.messages = 0
        self.devices = 0
        self.largest = 0
        self.bytes = 0
        self.page_ms = None
        self.stop = False

    def run(self):
        start = time.perf_counter()
        status, _, _ = call("GET", "/devices", headers={"Cookie": self.session})
        assert status == 200, status
        self.page_ms = (time.perf_counter() - start) * 1000
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/ui/stream?kinds=devices", headers={
            "Cookie": self.session, "Accept": "text/event-stream"})
        r = conn.getresponse()
        assert r.status == 200, r.status
        event = None
        while not self.stop:
            line = r.fp.readline()
            if not line:
                break
            self.bytes += len(line)
            line = line.decode().rstrip("\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "devices":
                n = len(json.loads(line[5:])["devices"])
                self.messages += 1
                self.devices += n
                self.largest = max(self.largest, n)
        conn.close()


def measure(label):
    """Server CPU over whole drop cycles, and its busiest second."""
    per_cycle, peak = [], 0.0
    for _ in range(args.cycles):
        t0, c0 = time.time(), cpu_seconds(server.pid)
        last_t, last_c = t0, c0
        while time.time() - t0 < args.cycle:
            time.sleep(1)
            now, c = time.time(), cpu_seconds(server.pid)
            peak = max(peak, (c - last_c) / (now - last_t))
            last_t, last_c = now, c
        per_cycle.append((cpu_seconds(server.pid) - c0) / (time.time() - t0))
    print("%-28s server CPU a cycle: %s  (mean %.1f%% of a core; busiest second %.0f%%)" % (
        label, "  ".join("%.1f%%" % (c * 100) for c in per_cycle),
        statistics.mean(per_cycle) * 100, peak * 100))
    return statistics.mean(per_cycle)


try:
    for _ in range(200):
        try:
            if call("GET", "/readyz")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.05)
    fleet = subprocess.Popen([
        args.binary, "simulate", "--url", url, "--devices", str(args.devices),
        "--drop-every", "%ds" % args.cycle, "--drop-fraction", str(args.drop_fraction),
        "--down-for", "%ds" % (args.cycle / 2)],
        env=dict(env, MERPATI_ADMIN_TOKEN=admin), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    # The fleet's account, once its devices are all connected.
    deadline = time.time() + 300
    account = None
    while time.time() < deadline:
        _, _, raw = call("GET", "/v1/accounts?limit=500", admin)
        found = [a["id"] for a in json.loads(raw)["data"] if a["id"].startswith("sim")]
        if found:
            account = found[0]
            break
        time.sleep(0.5)
    _, _, raw = call("POST", "/v1/accounts/%s/api-keys" % account, admin)
    key = json.loads(raw)["key"]
    while time.time() < deadline:
        _, _, raw = call("GET", "/metrics", admin)
        links = re.search(rb"^merpati_links_open (\d+)", raw, re.M)
        if links and int(links.group(1)) >= args.devices:
            break
        time.sleep(0.5)
    time.sleep(args.cycle)  # every device linked, and a first cycle behind
    print("%d devices, %d%% dropped at once every %.0f s and back after %.0f s; %d cores" % (
        args.devices, args.drop_fraction * 100, args.cycle, args.cycle / 2, os.cpu_count()))

    without = measure("no dashboard open:")

    dashboards = [Dashboard(sign_in(key)) for _ in range(args.browsers)]
    for d in dashboards:
        d.start()
    time.sleep(2)
    with_them = measure("%d dashboards open:" % args.browsers)
    for d in dashboards:
        d.stop = True

    print("dashboards' cost: %.1f%% of a core (%.2f%% each)" % (
        (with_them - without) * 100, (with_them - without) * 100 / args.browsers))
    pages = sorted(d.page_ms for d in dashboards)
    print("devices page loads: p50 %.0f ms, max %.0f ms" % (statistics.median(pages), pages[-1]))
    d = dashboards[0]
    cycles = args.cycles
    print("each dashboard received a cycle: %.1f messages, %.0f device updates, "
          "%.0f KiB; at most %d devices in one message" % (
              d.messages / cycles, d.devices / cycles, d.bytes / 1024 / cycles, d.largest))
finally:
    if fleet:
        fleet.send_signal(signal.SIGINT)
        try:
            fleet.wait(10)
        except subprocess.TimeoutExpired:
            fleet.kill()
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
    shutil.rmtree(data, ignore_errors=True)
