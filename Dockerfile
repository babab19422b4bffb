# Container image for agentid. Not built by this repository's CI (its machines have no container engine);
# `cargo build --release` is what the tests exercise.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin agentid

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/agentid /usr/local/bin/agentid
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/agentid"]
