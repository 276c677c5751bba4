# signet-agent: a static binary on a distroless base. It runs as root with
# every capability dropped (deploy/base/agent.yaml), only to own its socket
# in the host's root-owned socket directory.
#   docker build -f deploy/docker/agent.Dockerfile -t signet-agent .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/signet-agent ./cmd/signet-agent

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/signet-agent /signet-agent
USER 0:0
ENTRYPOINT ["/signet-agent"]
