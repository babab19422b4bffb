# Container image for agentid, for users with a registry and a container engine. It produces the
# same layout as `make image` (e2e/tools/image.sh agentid), which builds the image here without an
# engine: the stripped binary at /usr/local/bin/agentid, the loader and only the libraries `ldd`
# lists (at the paths it names), CA certificates, passwd/group naming uid 65532; no shell.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin agentid
RUN set -eux; \
    exe=target/release/agentid; \
    mkdir -p /out/usr/local/bin /out/etc/ssl/certs /out/tmp; \
    objcopy --strip-all "$exe" /out/usr/local/bin/agentid; \
    for lib in $(ldd "$exe" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do \
      mkdir -p "/out$(dirname "$lib")"; cp -L "$lib" "/out$lib"; \
    done; \
    cp -L /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ca-certificates.crt; \
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > /out/etc/passwd; \
    printf 'root:x:0:\nnonroot:x:65532:\n' > /out/etc/group; \
    chmod 0755 /out; chmod 1777 /out/tmp; chmod -R go-w /out/usr /out/etc

FROM scratch
COPY --from=build /out/ /
USER 65532:65532
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
WORKDIR /
ENTRYPOINT ["/usr/local/bin/agentid"]
