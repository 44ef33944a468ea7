#!/usr/bin/env python3
"""Benchmark #8: a hello-world wasi:http component behind runnel's gateway.

Serves the same component (functions/hello-http, `GET /hello`) with runnel
and with `wasmtime serve` (the CLI of runnel's wasmtime version, best
configuration: `-S cli -O pooling-allocator=y`), and the same answer from a
plain axum handler in native Rust (examples/hello_axum.rs, the physical
limit). Each side gets the machine to itself in turn, and the load comes
from oha on the same two cores (`-c 32` connections, as the issue's `wrk
-t2 -c32`): requests/s and p50/p99 at full load, alternating sides over
ROUNDS rounds, then runnel's p99 at half of its own maximum rate (`-q`).
Prints Markdown rows; raw figures go to $CARGO_TARGET_DIR/bench/http_hello.json.
"""
import json
import os
import shutil
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
AXUM = os.path.join(TARGET, "release", "examples", "hello_axum")
COMPONENT = os.path.join(TARGET, "wasm32-wasip2", "release", "hello_http.wasm")
WASMTIME = shutil.which("wasmtime") or os.path.expanduser("~/.cargo/bin/wasmtime")
OHA = shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
ROUNDS = int(os.environ.get("RUNNEL_BENCH_HTTP_ROUNDS", "3"))
SECONDS = os.environ.get("RUNNEL_BENCH_HTTP_SECONDS", "10")
CONNECTIONS = "32"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url, process, seconds=120):
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if process.poll() is not None:
            sys.exit(f"{process.args[0]} exited with {process.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing served {url} within {seconds} s")


def runnel_side(port):
    work = workdir.make("runnel-bench-http-")
    pipelines = os.path.join(work, "pipelines")
    os.makedirs(pipelines)
    # One slot per connection, so full load is never answered 503.
    with open(os.path.join(pipelines, "hello.toml"), "w") as f:
        f.write(f'name = "hello"\nconcurrency = 64\n[source]\ntype = "http"\nroutes = ["/hello"]\n'
                f'[function]\npath = "{COMPONENT}"\nmemory_limit = "16MiB"\ntimeout = "2s"\n')
    config = os.path.join(work, "runnel.toml")
    with open(config, "w") as f:
        f.write(f'data_dir = "{work}/data"\n[http]\nlisten = "127.0.0.1:{port}"\n'
                f'[functions]\ncache_dir = "{work}/cache"\n')
    return [BINARY, "--config", config, "--log-format", "json", "up", pipelines], {"RUST_LOG": "warn"}


def wasmtime_side(port):
    return [WASMTIME, "serve", "-S", "cli", "-O", "pooling-allocator=y",
            "--addr", f"127.0.0.1:{port}", COMPONENT], {}


def axum_side(port):
    return [AXUM, f"127.0.0.1:{port}"], {}


def load(url, rate=None):
    command = [OHA, "-z", f"{SECONDS}s", "-c", CONNECTIONS, "--no-tui", "--output-format", "json", url]
    if rate:
        command[1:1] = ["-q", str(rate)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    codes = report.get("statusCodeDistribution", {})
    bad = {code: n for code, n in codes.items() if code != "200"}
    if bad:
        sys.exit(f"{url}: answers other than 200: {bad}")
    latency = report["latencyPercentiles"]
    return {
        "rps": report["summary"]["requestsPerSec"],
        "p50_ms": latency["p50"] * 1000,
        "p99_ms": latency["p99"] * 1000,
    }


def measure(side, rate=None):
    port = free_port()
    command, env = side(port)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, **env})
    try:
        url = f"http://127.0.0.1:{port}/hello"
        wait_for(url, process)
        # A short warm-up: the pool's slots, the JIT'd code's pages.
        subprocess.run([OHA, "-n", "2000", "-c", CONNECTIONS, "--no-tui", url],
                       check=True, capture_output=True)
        return load(url, rate)
    finally:
        process.kill()
        process.wait()


def main():
    for path, what in ((BINARY, "cargo build --release"), (AXUM, "cargo build --release --example hello_axum"),
                       (COMPONENT, "cd functions && cargo build --release --target wasm32-wasip2"),
                       (WASMTIME, "cargo install wasmtime-cli@48.0.8"), (OHA, "cargo install oha")):
        if not os.path.exists(path):
            sys.exit(f"{path} missing: {what}")
    sides = {"runnel": runnel_side, "wasmtime serve": wasmtime_side, "axum": axum_side}
    runs = {name: [] for name in sides}
    for _ in range(ROUNDS):
        for name, side in sides.items():
            runs[name].append(measure(side))
    median = lambda name, key: statistics.median(r[key] for r in runs[name])
    runnel_rps = median("runnel", "rps")
    half = measure(runnel_side, rate=max(1, int(runnel_rps / 2)))
    vs_wasmtime = runnel_rps / median("wasmtime serve", "rps")
    vs_axum = runnel_rps / median("axum", "rps")
    spread = lambda name: (f"{min(r['rps'] for r in runs[name]):,.0f}–"
                           f"{max(r['rps'] for r in runs[name]):,.0f}")
    print(f"| 8 | hello-world wasi:http component, requests/s (oha -c {CONNECTIONS}, {SECONDS} s, "
          f"median of {ROUNDS}) | {runnel_rps:,.0f} ({spread('runnel')}); p50 "
          f"{median('runnel', 'p50_ms'):.2f} ms, p99 {median('runnel', 'p99_ms'):.2f} ms | "
          f"wasmtime serve -S cli -O pooling-allocator=y: {median('wasmtime serve', 'rps'):,.0f} "
          f"({spread('wasmtime serve')}), p99 {median('wasmtime serve', 'p99_ms'):.2f} ms | "
          f"{vs_wasmtime:.2f}× | ≥ 3× | {'yes' if vs_wasmtime >= 3 else 'no'} |")
    print(f"| 8b | the same, against a plain axum handler (native) | {runnel_rps:,.0f} | axum: "
          f"{median('axum', 'rps'):,.0f} ({spread('axum')}) | {vs_axum:.2f}× | ≥ 0.25× | "
          f"{'yes' if vs_axum >= 0.25 else 'no'} |")
    print(f"| 8c | runnel's p99 at half its maximum rate ({half['rps']:,.0f} requests/s) | "
          f"{half['p99_ms']:.2f} ms (p50 {half['p50_ms']:.2f}) | — | — | ≤ 2 ms | "
          f"{'yes' if half['p99_ms'] <= 2 else 'no'} |")
    os.makedirs(os.path.join(TARGET, "bench"), exist_ok=True)
    with open(os.path.join(TARGET, "bench", "http_hello.json"), "w") as f:
        json.dump({"runs": runs, "half_rate": half}, f, indent=2)


if __name__ == "__main__":
    main()
