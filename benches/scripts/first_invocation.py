#!/usr/bin/env python3
"""Benchmark #2: first invocation after start.

Starts `runnel up` on the shipped image-upload pipeline with a fresh data
directory, uploads one small JPEG as soon as the API answers, and measures
the time from process start until its first thumbnail is readable: with a
cold component cache (the thumbnail component is compiled at start) and a
warm one (loaded precompiled). Alternates cold and warm runs and reports
medians and spread as a Markdown table row; raw figures go to
$CARGO_TARGET_DIR/bench/first_invocation.json.
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

import workdir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
BINARY = os.environ.get("RUNNEL_BIN") or os.path.join(TARGET, "release", "runnel")
PHOTO = os.path.join(REPO, "tests", "fixtures", "images", "baseline.jpg")
ROUNDS = 5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method, url, body=None):
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=5) as response:
        return response.status


def run_once(cache_dir):
    work = workdir.make("runnel-bench-first-")
    port = free_port()
    config = os.path.join(work, "runnel.toml")
    with open(config, "w") as f:
        f.write(f'data_dir = "{work}/data"\n[http]\nlisten = "127.0.0.1:{port}"\n'
                f'[functions]\ncache_dir = "{cache_dir}"\n')
    base = f"http://127.0.0.1:{port}"
    photo = open(PHOTO, "rb").read()
    started = time.monotonic()
    process = subprocess.Popen(
        [BINARY, "--config", config, "up", os.path.join(REPO, "pipelines", "image-upload.toml")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                request("PUT", f"{base}/v1/objects/uploads/p.jpg", photo)
                break
            except OSError:
                time.sleep(0.005)
        up = time.monotonic() - started
        while True:
            try:
                request("GET", f"{base}/v1/objects/thumbnails/p-128.jpg")
                return up, time.monotonic() - started
            except OSError:
                time.sleep(0.005)
    finally:
        process.kill()
        process.wait()


def main():
    if not os.path.exists(BINARY):
        sys.exit(f"{BINARY} missing: build with cargo build --release first")
    cold, warm = [], []
    warm_cache = workdir.make("runnel-cache-")
    run_once(warm_cache)  # fill the warm cache (and build the function if needed)
    for _ in range(ROUNDS):
        cold_cache = workdir.make("runnel-cache-")
        cold.append(run_once(cold_cache))
        warm.append(run_once(warm_cache))
    ms = lambda xs: [x * 1000 for x in xs]
    rows = {}
    for name, runs in (("cold", cold), ("warm", warm)):
        first = ms([r[1] for r in runs])
        rows[name] = {"first_event_ms": first, "api_up_ms": ms([r[0] for r in runs]),
                      "median_ms": statistics.median(first)}
    print(f"| 2 | first invocation after start (start → first thumbnail stored), "
          f"component cache cold / warm | {rows['cold']['median_ms']:.0f} ms "
          f"({min(rows['cold']['first_event_ms']):.0f}–{max(rows['cold']['first_event_ms']):.0f}) / "
          f"{rows['warm']['median_ms']:.0f} ms "
          f"({min(rows['warm']['first_event_ms']):.0f}–{max(rows['warm']['first_event_ms']):.0f}) | — | "
          f"report; Lambda's Rust init is 11–18 ms | — |")
    os.makedirs(os.path.join(TARGET, "bench"), exist_ok=True)
    with open(os.path.join(TARGET, "bench", "first_invocation.json"), "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
