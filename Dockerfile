# Multi-stage build of messaging-service: compile with the full toolchain, run on a slim
# image with only the PostgreSQL client library the binary links against.
FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin messaging-service

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq5 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/messaging && chown nobody /var/lib/messaging
COPY --from=build /src/target/release/messaging-service /usr/local/bin/messaging-service
COPY settings.toml /etc/messaging/settings.toml
ENV MESSAGING_CONFIG=/etc/messaging/settings.toml \
    MESSAGING__SERVER__BIND=0.0.0.0:8080 \
    MESSAGING__DATABASE__URL=sqlite:///var/lib/messaging/messaging.db
WORKDIR /var/lib/messaging
USER nobody
EXPOSE 8080
CMD ["messaging-service"]
