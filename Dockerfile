# Builds the careboard binary and runs it against DATABASE_URL.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
# A workspace member: cargo reads its manifest even when building the server alone.
COPY bench bench
COPY migrations migrations
RUN cargo build --release --bin careboard

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home careboard
COPY --from=build /src/target/release/careboard /usr/local/bin/careboard
USER careboard
ENV CAREBOARD_BIND=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["careboard"]
CMD ["serve"]
