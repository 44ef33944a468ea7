# runnel with its functions prebuilt: no Rust toolchain in the final image.
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && cd functions && cargo build --release --locked --target wasm32-wasip2

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/*
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
EXPOSE 8080
ENTRYPOINT ["runnel"]
CMD ["--config", "deploy/runnel.kafka-s3.toml", "up", "pipelines", "--listen", "0.0.0.0:8080"]
