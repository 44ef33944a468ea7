#!/usr/bin/env python3
"""Benchmarks #6 and #7 on the reference workload (runnel up, embedded
defaults, the shipped image-upload and notify pipelines, a local webhook).

1. Max throughput: uploads a burst of photos from several clients at once and
   measures notifications/s over the burst; the process's peak RSS (VmHWM)
   then is #7's "peak RSS at max throughput".
2. Latency at half of that: uploads at a fixed rate (open loop: a slow
   response does not slow the schedule) and measures, per upload, the time
   from sending it to its webhook notification arriving: p50 and p99 (#6).

Prints Markdown rows; raw figures go to $CARGO_TARGET_DIR/bench/latency.json.
"""
import http.server
import glob
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import workdir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
BINARY = os.environ.get("RUNNEL_BIN") or os.path.join(TARGET, "release", "runnel")
PHOTO = os.path.join(REPO, "tests", "fixtures", "images", "baseline.jpg")
BURST = 300
CLIENTS = 8
PACED = 300
GOAL_P99_MS = 250


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver(http.server.ThreadingHTTPServer):
    """The user's webhook: records when each upload's notification arrived."""

    def __init__(self):
        self.arrivals = {}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        at = time.monotonic()
        key = json.loads(body)["source"]["key"]
        with self.server.lock:
            self.server.arrivals.setdefault(key, at)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def upload(base, key, photo):
    req = urllib.request.Request(f"{base}/v1/objects/uploads/{key}", data=photo, method="PUT",
                                 headers={"x-runnel-meta-user": "bench"})
    with urllib.request.urlopen(req, timeout=30) as response:
        assert response.status in (200, 201), response.status


def status_mib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def wait_for(receiver, keys, timeout=300):
    deadline = time.monotonic() + timeout
    while True:
        with receiver.lock:
            if all(k in receiver.arrivals for k in keys):
                return
        if time.monotonic() > deadline:
            sys.exit(f"timed out: {sum(k in receiver.arrivals for k in keys)} of {len(keys)} notified")
        time.sleep(0.01)


def main():
    if not os.path.exists(BINARY):
        sys.exit(f"{BINARY} missing: build with cargo build --release first")
    if len(sys.argv) > 1:
        # photo-*.jpg only: photos.py keeps its sources in a hidden folder there.
        files = sorted(glob.glob(os.path.join(sys.argv[1], "photo-*.jpg")))
        size = f"{len(files)} photos of benchmark #5 (about 2725×2225), cycled"
    else:
        files = [PHOTO]
        size = "640×480 JPEG (tests/fixtures/images/baseline.jpg)"
    photos = [open(f, "rb").read() for f in files]

    def photo(i):
        return photos[i % len(photos)]

    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    work = workdir.make("runnel-bench-latency-")
    port = free_port()
    config = os.path.join(work, "runnel.toml")
    with open(config, "w") as f:
        f.write(f'data_dir = "{work}/data"\n[http]\nlisten = "127.0.0.1:{port}"\n')
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, NOTIFY_WEBHOOK_URL=f"http://127.0.0.1:{receiver.server_port}/hook",
               RUST_LOG="warn")
    process = subprocess.Popen(
        [BINARY, "--config", config, "up",
         os.path.join(REPO, "pipelines", "image-upload.toml"),
         os.path.join(REPO, "pipelines", "notify.toml")],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "runnel.log"), "w"), env=env)
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except OSError:
                if process.poll() is not None:
                    sys.exit("runnel exited while starting")
                time.sleep(0.05)
        # Warm up: the first event pays the component load.
        upload(base, "warm/0.jpg", photo(0))
        wait_for(receiver, ["warm/0.jpg"])

        # 1. Max throughput, and the memory it takes.
        burst = [f"burst/{i:04}.jpg" for i in range(BURST)]
        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(lambda i: upload(base, burst[i], photo(i)), range(BURST)))
        wait_for(receiver, burst)
        elapsed = time.monotonic() - started
        max_rate = BURST / elapsed
        peak_mib = status_mib(process.pid, "VmHWM:")

        # 2. Latency at half of it, open loop.
        rate = max_rate / 2
        paced = [f"paced/{i:04}.jpg" for i in range(PACED)]
        sent = {}

        def send(i, key):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            sent[key] = time.monotonic()
            upload(base, key, photo(i))

        start = time.monotonic()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(send, range(PACED), paced))
        wait_for(receiver, paced)
        latencies = sorted((receiver.arrivals[k] - sent[k]) * 1000 for k in paced)
        p50 = statistics.median(latencies)
        p99 = latencies[int(round((len(latencies) - 1) * 0.99))]
    finally:
        process.kill()
        process.wait()
        receiver.shutdown()

    print(f"| 6 | latency upload → webhook notification, {size}, at half of max throughput "
          f"({rate:.1f} of {max_rate:.1f} uploads/s), {PACED} uploads | p50 {p50:.0f} ms, "
          f"p99 {p99:.0f} ms | — | — | p99 ≤ {GOAL_P99_MS} ms | "
          f"{'yes' if p99 <= GOAL_P99_MS else '**no**'} |")
    print(f"| 7 | peak RSS at max throughput, reference workload ({BURST} uploads from "
          f"{CLIENTS} clients) | {peak_mib:.0f} MiB | — | — | ≤ 300 MiB | "
          f"{'yes' if peak_mib <= 300 else '**no**'} |")
    os.makedirs(os.path.join(TARGET, "bench"), exist_ok=True)
    with open(os.path.join(TARGET, "bench", "latency.json"), "w") as f:
        json.dump({"photo": size, "max_uploads_per_s": max_rate, "paced_uploads_per_s": rate,
                   "latencies_ms": latencies, "p50_ms": p50, "p99_ms": p99,
                   "peak_rss_mib": peak_mib}, f, indent=2)


if __name__ == "__main__":
    main()
