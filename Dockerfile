# syntax=docker/dockerfile:1
# Build: the same release binary `cargo build --release --locked` makes anywhere.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY config ./config
RUN cargo build --release --locked && strip target/release/dpss-sync

# Runtime: a small Debian with CA certificates (rustls verifies against them), non-root.
FROM debian:bookworm-slim
# ca-certificates is left unpinned on purpose: it must follow Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/dpss-sync --shell /usr/sbin/nologin dpss-sync \
 && mkdir -p /var/lib/dpss-sync /etc/dpss-sync \
 && chown dpss-sync:dpss-sync /var/lib/dpss-sync
COPY --from=build /src/target/release/dpss-sync /usr/local/bin/dpss-sync
COPY config/example.toml /etc/dpss-sync/example.toml
USER 10001:10001
# State (SQLite + downloads) and a local lake live on volumes; mount the config at
# /etc/dpss-sync/dpss-sync.toml and pass secrets as DPSS_SYNC__AUTH__CLIENT_SECRET.
VOLUME ["/var/lib/dpss-sync"]
ENV DPSS_SYNC__SERVER__LISTEN=0.0.0.0:9464 \
    DPSS_SYNC__LOG__FORMAT=json
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/dpss-sync", "--config", "/etc/dpss-sync/dpss-sync.toml"]
CMD ["run"]
