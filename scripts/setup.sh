# Sourced by scripts/test and scripts/bench: installs what is missing — the
# pinned toolchain and the wasm32-wasip2 target, componentize-py, the
# services the tests and benchmarks run against, and the checkers they call
# (promtool, kubernetes-validate) — and exports CARGO_TARGET_DIR and PATH.
#
# The target directory lives outside the clone so a fresh clone on a used
# machine reuses earlier builds (override with CARGO_TARGET_DIR).

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/runnel/target}"
toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)

step() { printf '\n==> %s\n' "$*" >&2; }

if ! rustup toolchain list | grep -q "^$toolchain"; then
  step "installing Rust $toolchain"
  if ! rustup toolchain install "$toolchain" --profile minimal --component rustfmt,clippy; then
    # A machine whose only toolchain is "stable" at the pinned version can
    # still run everything: use it instead of the pin.
    if rustup run stable rustc --version | grep -q "^rustc $toolchain "; then
      export RUSTUP_TOOLCHAIN=stable
      toolchain=stable
    else
      echo "cannot install Rust $toolchain and stable is not $toolchain" >&2
      exit 1
    fi
  fi
fi
if ! rustup target list --installed --toolchain "$toolchain" | grep -qx wasm32-wasip2; then
  step "adding the wasm32-wasip2 target"
  rustup target add wasm32-wasip2 --toolchain "$toolchain"
fi

# The services the Kafka and S3 tests run against (they start them on
# loopback themselves). Installed once, then reused.
if ! command -v tansu >/dev/null && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
  step "installing tansu 0.6.0, a Kafka-API broker (about 20 minutes the first time)"
  CARGO_TARGET_DIR="$HOME/.cache/runnel/tansu-target" \
    cargo install tansu@0.6.0 --locked --features libsql,dynostore
fi
if ! command -v moto_server >/dev/null; then
  step "installing moto, an S3 and SQS server"
  python3 -m pip install --quiet 'moto[server]==5.2.1'
fi
if [ "${RUNNEL_SETUP_BENCH:-}" = 1 ] && ! command -v vipsthumbnail >/dev/null; then
  step "installing libvips-tools (vipsthumbnail, benchmark #5's peer)"
  apt-get update -qq && apt-get install -y -qq libvips-tools
fi
# Benchmark #8's peer and load generator, from crates.io: the wasmtime CLI of
# runnel's wasmtime version, and oha.
if [ "${RUNNEL_SETUP_BENCH:-}" = 1 ] && [ ! -x "$HOME/.cargo/bin/wasmtime" ]; then
  step "installing wasmtime-cli 48.0.8 (benchmark #8's peer; about 15 minutes the first time)"
  CARGO_TARGET_DIR="$HOME/.cache/runnel/wasmtime-target" \
    cargo install wasmtime-cli@48.0.8 --locked
fi
if [ "${RUNNEL_SETUP_BENCH:-}" = 1 ] && [ ! -x "$HOME/.cargo/bin/oha" ]; then
  step "installing oha 1 (benchmark #8's load generator)"
  CARGO_TARGET_DIR="$HOME/.cache/runnel/oha-target" cargo install "oha@^1" --locked
fi
# Python functions are built with componentize-py (runnel's build reads its
# version; src/runtime/build/python.rs). JavaScript functions bring jco in
# their own package.json (functions/notify-js), installed by npm from the
# lockfile; Node.js and npm come with the machine.
if ! command -v componentize-py >/dev/null || ! componentize-py --version | grep -q ' 0\.25\.1$'; then
  step "installing componentize-py 0.25.1 (builds Python functions)"
  python3 -m pip install --quiet 'componentize-py==0.25.1'
fi
if ! command -v redis-server >/dev/null; then
  step "installing redis-server (the shared idempotency store's tests)"
  apt-get update -qq && apt-get install -y -qq redis-server
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v psql >/dev/null; then
  step "installing postgresql (the database trigger's tests start their own servers)"
  apt-get update -qq && apt-get install -y -qq postgresql
fi
if ! command -v promtool >/dev/null; then
  # Debian ships promtool only with the server; its service is not started.
  step "installing promtool (checks /metrics and deploy/'s alert rules)"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  step "installing chromium and chromium-driver (tests/dashboard.rs drives the dashboard in a browser)"
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver
fi
if ! command -v kubernetes-validate >/dev/null; then
  step "installing kubernetes-validate (checks deploy/kubernetes against Kubernetes' schemas)"
  python3 -m pip install --quiet 'kubernetes-validate==1.37.0'
fi
if ! python3 -c 'import yaml' 2>/dev/null; then
  step "installing PyYAML (tests/deploy.rs and tests/schema.rs read the Kubernetes manifests)"
  python3 -m pip install --quiet 'PyYAML==6.0.3'
fi
if ! python3 -c 'import jsonschema' 2>/dev/null; then
  step "installing jsonschema (tests/schema.rs checks schemas/ with it)"
  python3 -m pip install --quiet 'jsonschema==4.26.0'
fi
export PATH="$HOME/.cargo/bin:$PATH"

