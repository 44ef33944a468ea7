#!/usr/bin/env python3
"""Benchmark #10: a thousand functions in one process.

For N = 1, 10, 100, 300 and 1,000 storage pipelines (the probe component
echoing each object into a bucket of its own, embedded defaults, one
shared and already warm component cache), starts `runnel up` and measures:
the start (process spawn to /healthz answering, which is after every
function is loaded), idle RSS, threads and virtual size two seconds later,
whether the pooling allocator is in use, N sequential uploads (one to each
pipeline's bucket, each PUT answered), and one upload at a time to the
first pipeline, from the PUT to its output being readable (p50 and p99
over LATENCY_ROUNDS), against the same with one pipeline.

Goals at 1,000 pipelines (issue 21): start <= 3 s, idle RSS <= 150 MiB,
threads bounded by the cores and the events in flight (not the number of
pipelines: at most 8 more than with one pipeline), the pooling allocator in
use, and an upload's latency within 1.2x of one pipeline's. Raw figures go
to $CARGO_TARGET_DIR/bench/many_pipelines.json.
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

import workdir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
BINARY = os.environ.get("RUNNEL_BIN") or os.path.join(TARGET, "release", "runnel")
PROBE = os.path.join(TARGET, "wasm32-wasip2", "release", "probe.wasm")
COUNTS = [int(n) for n in os.environ.get("RUNNEL_BENCH_PIPELINES", "1,10,100,300,1000").split(",")]
LATENCY_ROUNDS = 40
# Issue 21's "before" (release build of 198f6cf, the machine also busy).
BEFORE = {
    10: "40 threads, 44 MiB, 1.2 TB, pooling, 0.1 s",
    100: "310 threads, 79 MiB, 10 TB, pooling, 0.9 s",
    300: "910 threads, 160 MiB, 31 TB, pooling, 4.8 s",
    1000: "3,010 threads, 441 MiB, 8.5 GB, no pooling, 36.5 s; latency p50 74.7 ms against 8.7 ms (8.6x), start 3.4 s",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method, url, body=None):
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=30) as response:
        return response.status, response.read()


def status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def write_pipelines(directory, count):
    paths = []
    for i in range(count):
        path = os.path.join(directory, f"p{i}.toml")
        with open(path, "w") as f:
            f.write(f'name = "p{i}"\n[source]\ntype = "storage"\nbucket = "in-{i}"\n'
                    f'[function]\npath = "{PROBE}"\n[function.config]\nmode = "echo"\n'
                    f'[sinks.out]\ntype = "storage"\nbucket = "out-{i}"\n')
        paths.append(path)
    return paths


def run(count, cache_dir):
    work = workdir.make(f"runnel-bench-many-{count}-")
    pipelines = os.path.join(work, "pipelines")
    os.makedirs(pipelines)
    write_pipelines(pipelines, count)
    port = free_port()
    config = os.path.join(work, "runnel.toml")
    with open(config, "w") as f:
        f.write(f'data_dir = "{work}/data"\n[http]\nlisten = "127.0.0.1:{port}"\n'
                f'[functions]\ncache_dir = "{cache_dir}"\n')
    base = f"http://127.0.0.1:{port}"
    log_path = os.path.join(work, "runnel.log")
    log = open(log_path, "w")
    started = time.monotonic()
    process = subprocess.Popen([BINARY, "--config", config, "up", pipelines],
                               stdout=subprocess.DEVNULL, stderr=log,
                               env={**os.environ, "RUST_LOG": "warn,runnel=info"})
    try:
        while True:
            if process.poll() is not None:
                sys.exit(f"runnel exited while starting; see {log_path}")
            try:
                request("GET", f"{base}/healthz")
                break
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.01)
        start = time.monotonic() - started
        time.sleep(2)
        idle = {
            "rss_mib": status(process.pid, "VmRSS") / 1024,
            "threads": status(process.pid, "Threads"),
            "virtual_gib": status(process.pid, "VmSize") / 1024 / 1024,
        }
        pooling = "pooling allocator unavailable" not in open(log_path).read()
        t = time.monotonic()
        for i in range(count):
            request("PUT", f"{base}/v1/objects/in-{i}/warm.txt", b"x")
        sequential = time.monotonic() - t
        latencies = []
        for r in range(LATENCY_ROUNDS):
            key = f"l{r}.txt"
            t = time.monotonic()
            request("PUT", f"{base}/v1/objects/in-0/{key}", b"hello")
            while True:
                try:
                    request("GET", f"{base}/v1/objects/out-0/{key}")
                    break
                except urllib.error.HTTPError:
                    time.sleep(0.0005)
            latencies.append((time.monotonic() - t) * 1000)
        latencies.sort()
        return {
            "pipelines": count, "start_s": start, **idle, "pooling": pooling,
            "sequential_uploads_s": sequential,
            "latency_p50_ms": statistics.median(latencies),
            "latency_p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        }
    finally:
        process.kill()
        process.wait()


def main():
    for path in (BINARY, PROBE):
        if not os.path.exists(path):
            sys.exit(f"{path} missing: scripts/bench builds it")
    cache = workdir.make("runnel-cache-many-")
    run(1, cache)  # compile the probe into the cache: every run below starts warm
    results = {n: run(n, cache) for n in COUNTS}
    one = results[COUNTS[0]]
    for n, r in results.items():
        ratio = r["latency_p50_ms"] / one["latency_p50_ms"]
        figure = (f"start {r['start_s']:.2f} s, idle {r['rss_mib']:.0f} MiB, {r['threads']} threads, "
                  f"{r['virtual_gib']:.1f} GiB virtual, pooling {'yes' if r['pooling'] else 'NO'}, "
                  f"{n} uploads {r['sequential_uploads_s']:.2f} s; upload → output p50 "
                  f"{r['latency_p50_ms']:.1f} ms, p99 {r['latency_p99_ms']:.1f} ms")
        if n < 1000:
            print(f"| 10 | {n} pipelines in one process | {figure} | before: {BEFORE.get(n, '-')} "
                  f"| latency {ratio:.2f}× one pipeline's | — | — |")
            continue
        met = (r["start_s"] <= 3 and r["rss_mib"] <= 150 and r["pooling"]
               and r["threads"] <= one["threads"] + 8 and ratio <= 1.2)
        print(f"| 10 | {n} pipelines in one process | {figure} | before: {BEFORE[1000]} "
              f"| latency {ratio:.2f}× one pipeline's; threads {r['threads']} against {one['threads']} "
              f"| start ≤ 3 s, RSS ≤ 150 MiB, threads ≤ one pipeline's + 8, pooling, latency ≤ 1.2× "
              f"| {'yes' if met else 'no'} |")
    out = os.path.join(TARGET, "bench")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "many_pipelines.json"), "w") as f:
        json.dump(list(results.values()), f, indent=2)


if __name__ == "__main__":
    main()
