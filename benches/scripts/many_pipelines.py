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
over LATENCY_ROUNDS), alternating round by round with the same in a
process of one pipeline running beside it.

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
LATENCY_ROUNDS = 100
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


class Runnel:
    """`runnel up` on `count` probe pipelines, started and measured idle."""

    def __init__(self, count, cache_dir):
        self.count = count
        work = workdir.make(f"runnel-bench-many-{count}-")
        pipelines = os.path.join(work, "pipelines")
        os.makedirs(pipelines)
        write_pipelines(pipelines, count)
        port = free_port()
        config = os.path.join(work, "runnel.toml")
        with open(config, "w") as f:
            f.write(f'data_dir = "{work}/data"\n[http]\nlisten = "127.0.0.1:{port}"\n'
                    f'[functions]\ncache_dir = "{cache_dir}"\n')
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = os.path.join(work, "runnel.log")
        started = time.monotonic()
        self.process = subprocess.Popen([BINARY, "--config", config, "up", pipelines],
                                        stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"),
                                        env={**os.environ, "RUST_LOG": "warn,runnel=info"})
        while True:
            if self.process.poll() is not None:
                sys.exit(f"runnel exited while starting; see {self.log_path}")
            try:
                request("GET", f"{self.base}/healthz")
                break
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.01)
        self.start_s = time.monotonic() - started
        self.latencies = []

    def idle(self):
        time.sleep(2)
        pid = self.process.pid
        return {
            "pipelines": self.count, "start_s": self.start_s,
            "rss_mib": status(pid, "VmRSS") / 1024,
            "threads": status(pid, "Threads"),
            "virtual_gib": status(pid, "VmSize") / 1024 / 1024,
            "pooling": "pooling allocator unavailable" not in open(self.log_path).read(),
        }

    def sequential_uploads(self):
        t = time.monotonic()
        for i in range(self.count):
            request("PUT", f"{self.base}/v1/objects/in-{i}/warm.txt", b"x")
        return time.monotonic() - t

    def one_upload(self, key):
        """An upload to the first pipeline, until its output is readable."""
        t = time.monotonic()
        request("PUT", f"{self.base}/v1/objects/in-0/{key}", b"hello")
        while True:
            try:
                request("GET", f"{self.base}/v1/objects/out-0/{key}")
                break
            except urllib.error.HTTPError:
                time.sleep(0.0005)
        self.latencies.append((time.monotonic() - t) * 1000)

    def latency(self):
        ordered = sorted(self.latencies)
        return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]

    def stop(self):
        self.process.kill()
        self.process.wait()


def measure(count, cache, one):
    """Runs `count` pipelines; the upload latency alternates, round by
    round, with `one` (a process with one pipeline, running beside it)."""
    runnel = Runnel(count, cache)
    try:
        result = runnel.idle()
        result["sequential_uploads_s"] = runnel.sequential_uploads()
        one.latencies = []
        for r in range(LATENCY_ROUNDS):
            runnel.one_upload(f"l{r}.txt")
            one.one_upload(f"l{count}-{r}.txt")
        result["latency_p50_ms"], result["latency_p99_ms"] = runnel.latency()
        result["one_p50_ms"], result["one_p99_ms"] = one.latency()
        return result
    finally:
        runnel.stop()


def main():
    for path in (BINARY, PROBE):
        if not os.path.exists(path):
            sys.exit(f"{path} missing: scripts/bench builds it")
    cache = workdir.make("runnel-cache-many-")
    Runnel(1, cache).stop()  # compile the probe into the cache: every start below is warm
    one = Runnel(1, cache)
    try:
        one.sequential_uploads()
        results = {n: measure(n, cache, one) for n in COUNTS}
        one_idle = one.idle()
    finally:
        one.stop()
    for n, r in results.items():
        ratio = r["latency_p50_ms"] / r["one_p50_ms"]
        figure = (f"start {r['start_s']:.2f} s, idle {r['rss_mib']:.0f} MiB, {r['threads']} threads, "
                  f"{r['virtual_gib']:.0f} GiB virtual, pooling {'yes' if r['pooling'] else 'NO'}, "
                  f"{n} uploads {r['sequential_uploads_s']:.2f} s; upload → output p50 "
                  f"{r['latency_p50_ms']:.1f} ms, p99 {r['latency_p99_ms']:.1f} ms")
        against = (f"one pipeline beside it: p50 {r['one_p50_ms']:.1f} ms, p99 {r['one_p99_ms']:.1f} ms, "
                   f"{one_idle['threads']} threads; before: {BEFORE.get(n, '-')}")
        if n < 1000:
            print(f"| 10 | {n} pipelines in one process | {figure} | {against} "
                  f"| latency {ratio:.2f}× | — | — |")
            continue
        met = (r["start_s"] <= 3 and r["rss_mib"] <= 150 and r["pooling"]
               and r["threads"] <= one_idle["threads"] + 8 and ratio <= 1.2)
        print(f"| 10 | {n} pipelines in one process | {figure} | {against} "
              f"| latency {ratio:.2f}× | start ≤ 3 s, RSS ≤ 150 MiB, threads ≤ one pipeline's + 8, "
              f"pooling, latency ≤ 1.2× | {'yes' if met else 'no'} |")
    out = os.path.join(TARGET, "bench")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "many_pipelines.json"), "w") as f:
        json.dump({"one": one_idle, "runs": list(results.values())}, f, indent=2)


if __name__ == "__main__":
    main()
