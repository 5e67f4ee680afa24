# syntax=docker/dockerfile:1
#
# The game-session container image: the server, and gsctl beside it for
# probes by hand and the chart's `helm test` hook (the runtime image has no
# shell). Build and run it:
#
#   docker build -t game-session:dev .
#   docker run --rm -p 50051:50051 -p 50053:50053 -p 9464:9464 game-session:dev
#
# That runs with auth off, reachable by anyone who reaches the published
# ports; give it a key source (e.g. -e GAME_SESSION_JWT_HS256_SECRET_FILE and
# a mounted file) to turn auth on (README, "Security").
#
# Build arguments:
#   RUST_VERSION  the toolchain of the build stage (default 1.95);
#   VERSION       the image's org.opencontainers.image.version label
#                 (default 0.1.0, the crate's version);
#   REVISION      the image's org.opencontainers.image.revision label, the
#                 commit it was built from (default: empty).
#
# Dependency caching follows Docker's Rust guide: the sources are bind-mounted
# into the build step, and cargo's registry and target directory are BuildKit
# cache mounts, so a rebuild after a source change recompiles only this crate.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
# One target cache per platform, so a multi-platform build never copies
# another platform's binary.
ARG TARGETPLATFORM
WORKDIR /src
RUN --mount=type=bind,source=Cargo.toml,target=Cargo.toml \
    --mount=type=bind,source=Cargo.lock,target=Cargo.lock \
    --mount=type=bind,source=build.rs,target=build.rs \
    --mount=type=bind,source=proto,target=proto \
    --mount=type=bind,source=src,target=src \
    --mount=type=cache,target=/usr/local/cargo/git/db \
    --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=game-session-target-${TARGETPLATFORM},sharing=locked \
    cargo build --release --locked --bin game-session --bin gsctl \
    && install -D -m 0755 -t /out target/release/game-session target/release/gsctl

# distroless/cc: glibc, libgcc and CA certificates, no shell or package
# manager. The `nonroot` variant's user is 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=""
LABEL org.opencontainers.image.title="game-session" \
      org.opencontainers.image.description="A game session microservice: bidirectional gRPC Play streams, relay sessions and a backend session API." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# The listen addresses, explicit: with auth off the server would otherwise
# bind 127.0.0.1, which nothing outside the container reaches. The chart sets
# both itself.
ENV GAME_SESSION_LISTEN=0.0.0.0:50051 \
    GAME_SESSION_HEALTH_LISTEN=0.0.0.0:50053
# 50051: gRPC (players, the backend API, health, reflection; TLS when
#        GAME_SESSION_TLS_CERT_FILE is set).
# 50053: grpc.health.v1 alone, plain text and open, for probes.
# 9464: Prometheus metrics (GET /metrics).
# 50052: the backend API apart from players, when run with
#        --backend-listen 0.0.0.0:50052 (the chart's backend.enabled).
EXPOSE 50051 50053 9464 50052
ENTRYPOINT ["/usr/local/bin/game-session"]
