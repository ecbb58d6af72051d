# Builds the careboard binary and runs it against DATABASE_URL.
# Every file the build reads is copied below; .ci/run builds a copy of exactly these
# paths so a file the binary embeds cannot be left out again.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
# A workspace member: cargo reads its manifest even when building the server alone.
COPY bench bench
COPY migrations migrations
COPY static static
RUN cargo build --release --bin careboard

FROM debian:bookworm-slim
# curl: the healthcheck asks /readyz (database reachable and migrated).
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home careboard
COPY --from=build /src/target/release/careboard /usr/local/bin/careboard
USER careboard
ENV CAREBOARD_BIND=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["careboard"]
CMD ["serve"]
