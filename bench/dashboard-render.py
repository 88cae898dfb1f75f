#!/usr/bin/env python3
"""Render time of the dashboard's devices page with 10,000 devices.

Starts nothing: point it at a running merpati (release build) with its admin token.
Creates an account with N devices on 10 channels (each reported connected, then every
tenth disconnected, so bars have history), signs in as a browser would, and times
GET /devices (100 devices with their 24 h and 30 d bars) and a filtered page.

    MERPATI_ADMIN_TOKEN=... merpati serve &
    bench/dashboard-render.py --url http://127.0.0.1:8080 --devices 10000
"""
import argparse, http.client, json, os, re, statistics, time, urllib.parse

p = argparse.ArgumentParser()
p.add_argument("--url", default="http://127.0.0.1:8080")
p.add_argument("--devices", type=int, default=10000)
p.add_argument("--runs", type=int, default=50)
args = p.parse_args()
u = urllib.parse.urlparse(args.url)
admin = os.environ["MERPATI_ADMIN_TOKEN"]
conn = http.client.HTTPConnection(u.hostname, u.port)

def call(method, path, token=None, body=None, headers=None):
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    data = None
    if body is not None:
        data = json.dumps(body) if not isinstance(body, (bytes, str)) else body
        h.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    raw = r.read()
    return r.status, r.getheaders(), raw

account = "bench_%d" % int(time.time())
call("POST", "/v1/accounts", admin, {"id": account, "name": "Render bench"})
_, _, raw = call("POST", "/v1/accounts/%s/api-keys" % account, admin, {})
key = json.loads(raw)["key"]
call("POST", "/v1/businesses", key, {"id": "biz", "name": "Toko"})
for c in range(10):
    call("POST", "/v1/channels", key, {"id": "ch%d" % c, "name": "Channel %d" % c,
                                       "engine": "wa" if c % 2 else "sms", "business_id": "biz"})
t0 = time.time()
tokens = []
for i in range(args.devices):
    _, _, raw = call("POST", "/v1/devices", key, {"id": "d%05d" % i, "name": "Phone %d" % i,
                                                 "channel_id": "ch%d" % (i % 10)})
    tokens.append(json.loads(raw)["token"])
for t in tokens:
    call("POST", "/v1/device/status", t, {"status": "connected"})
for t in tokens[::10]:
    call("POST", "/v1/device/status", t, {"status": "disconnected"})
print("seeded %d devices in %.1f s" % (args.devices, time.time() - t0))

_, h, raw = call("GET", "/login")
def cookie(headers, name):
    for k, v in headers:
        if k.lower() == "set-cookie" and v.startswith(name + "="):
            return v.split(";")[0]

login_cookie = cookie(h, "merpati_login")
csrf = re.search(rb'name="_csrf" value="([^"]+)"', raw).group(1).decode()
form = urllib.parse.urlencode({"_csrf": csrf, "api_key": key, "next": "/devices"})
_, h, _ = call("POST", "/login", body=form, headers={
    "Content-Type": "application/x-www-form-urlencoded", "Cookie": login_cookie})
session = cookie(h, "merpati_session")

def timed(path):
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        status, _, raw = call("GET", path, headers={"Cookie": session})
        times.append((time.perf_counter() - start) * 1000)
        assert status == 200, status
    rows = raw.count(b"data-device=")
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print("%-40s rows %3d  p50 %6.1f ms  p99 %6.1f ms  (%d KiB)" % (
        path, rows, statistics.median(times), p99, len(raw) // 1024))

timed("/devices")
timed("/devices?status=disconnected")
timed("/devices?channel_id=ch3&engine=wa")
timed("/devices/d00007")
