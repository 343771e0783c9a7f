# syntax=docker/dockerfile:1
# inflight extproc image. Build from the repository root:
#   docker build -f deploy/docker/extproc.Dockerfile -t REGISTRY/inflight-extproc:TAG .
# Static binary (CGO off) on distroless/static, running as the nonroot user
# (65532) that deploy/base's securityContext also sets.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w" -o /out/extproc ./cmd/extproc

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/extproc /extproc
USER 65532:65532
ENTRYPOINT ["/extproc"]
