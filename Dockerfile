# syntax=docker/dockerfile:1
# Build: docker build -t alert-relay .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY config config
# Cargo.toml names the criterion bench and the load generator: cargo wants
# their files present even when it does not build them.
COPY benches benches
RUN cargo build --release --locked && strip target/release/alert-relay

# glibc and CA certificates, no shell, uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/alert-relay /usr/local/bin/alert-relay
COPY config/alert-relay.yaml /etc/alert-relay/alert-relay.yaml
ENV ALERT_RELAY_CONFIG=/etc/alert-relay/alert-relay.yaml \
    ALERT_RELAY__SPOOL__DIR=/var/lib/alert-relay
USER 65532:65532
WORKDIR /var/lib/alert-relay
VOLUME ["/var/lib/alert-relay"]
EXPOSE 9097
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/alert-relay", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/alert-relay"]
CMD ["serve"]
