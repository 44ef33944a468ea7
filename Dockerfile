# runnel with its functions prebuilt: no Rust toolchain in the final image.
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && cd functions && cargo build --release --locked --target wasm32-wasip2

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 runnel \
 && useradd --system --uid 10001 --gid runnel --home-dir /var/lib/runnel --no-create-home runnel \
 && install -d -o runnel -g runnel /var/lib/runnel
COPY --from=build /src/target/release/runnel /usr/local/bin/runnel
COPY --from=build /src/functions/target/wasm32-wasip2/release/*.wasm /opt/runnel/components/
# The pipelines name their functions as crates (../functions/<name>); with
# RUNNEL_COMPONENTS_DIR set, runnel takes the prebuilt component of that name.
COPY pipelines /opt/runnel/pipelines
COPY functions /opt/runnel/functions
COPY deploy /opt/runnel/deploy
WORKDIR /opt/runnel
ENV RUNNEL_DATA_DIR=/var/lib/runnel \
    RUNNEL_COMPONENTS_DIR=/opt/runnel/components
# Not root: runnel needs no privilege (it binds 8080, writes only its data
# directory). Kubernetes' runAsNonRoot checks the numeric id.
USER 10001:10001
VOLUME /var/lib/runnel
EXPOSE 8080
# /livez: the process serves (a backend outage must not mark it unhealthy;
# /readyz is for that). The start may compile components first.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/livez || exit 1
ENTRYPOINT ["runnel"]
CMD ["--config", "deploy/runnel.kafka-s3.toml", "up", "pipelines", "--listen", "0.0.0.0:8080"]
