# signet-ca: a static binary on a distroless base, as nonroot. For users who
# build with Docker; `make images` builds the same image without an engine.
#   docker build -f deploy/docker/ca.Dockerfile -t signet-ca .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/signet-ca ./cmd/signet-ca

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/signet-ca /signet-ca
USER 65532:65532
ENTRYPOINT ["/signet-ca"]
