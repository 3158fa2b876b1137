# One small static image for the connector and both simulators (docker-compose.yml).
#   docker build -t connector .
#   docker run --rm connector help
FROM golang:1.26.8 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# CGO_ENABLED=0: a static binary that runs on distroless/static (no libc).
# REVISION (e.g. --build-arg REVISION=$(git rev-parse --short HEAD)) is what
# `connector version` reports: .git is not in the build context.
ARG REVISION=unknown
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.revision=${REVISION}" -o /out/connector ./cmd/connector

# distroless/static: no shell, no package manager; health checks use `connector probe`.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/connector /connector
# nonroot (65532); its home is writable, for the embedded server's ./data/nats.
USER 65532:65532
WORKDIR /home/nonroot
# /healthz, /readyz, /metrics, /status. Inside a container the HTTP surface
# must listen on all interfaces to be reachable through a published port.
ENV CONNECTOR_HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/connector"]
CMD ["run"]
