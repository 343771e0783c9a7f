# syntax=docker/dockerfile:1
# inflight controller image. Build from the repository root:
#   docker build -f deploy/docker/controller.Dockerfile -t REGISTRY/inflight-controller:TAG .
# Static binary (CGO off) on distroless/static, running as the nonroot user
# (65532) that deploy/base's securityContext also sets.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w" -o /out/controller ./cmd/controller

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/controller /controller
USER 65532:65532
ENTRYPOINT ["/controller"]
