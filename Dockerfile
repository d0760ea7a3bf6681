# qvl: multi-stage build. The default image runs on the CPU; for GPUs build with a CUDA runtime
# base that provides cuBLAS, e.g. --build-arg BASE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
# (the NVIDIA container toolkit mounts libcuda at run time).
ARG BASE=debian:12-slim

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o /out/qvl ./cmd/qvl

FROM ${BASE}
RUN useradd --create-home --uid 10001 qvl
COPY --from=build /out/qvl /usr/local/bin/qvl
USER qvl
ENV QVL_CACHE_DIR=/home/qvl/.cache/qvl
EXPOSE 8000
ENTRYPOINT ["qvl"]
CMD ["serve", "--addr", "0.0.0.0:8000"]
