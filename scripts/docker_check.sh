#!/usr/bin/env bash
# Build the Docker image from a wheelhouse made on this host, run it with the CIFAR ResNet-20 weights of
# ../shared on a read-only volume, and check it from the host: the page, /predictions and /v2 infer with real
# CIFAR-10 images, a junk upload, the health check, a non-root process, and a docker stop that answers the
# requests in flight. Prints the image size and the build time, then removes everything it made.
#   scripts/docker_check.sh          exit 0: passed; 1: a check failed; 3: Docker cannot run here, or the
#                                    disk has too little room for the build (says why)
#   RESNETKIT_DOCKER_CHECK=0 scripts/test.sh   the test command without it
# Where no base image can be pulled (no registry), it makes one: Debian bookworm (Python 3.11) by debootstrap
# from the Debian mirror (DEBIAN_MIRROR), imported with docker import. Set DOCKER_CHECK_BASE to use another
# local image whose python3 matches this host's (the wheelhouse is built here, for this Python).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${RESNETKIT_SHARED:-../shared}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
TAG=resnetkit-check-$$
work=$(mktemp -d)
started_dockerd=""
made_base=""
wheel_server=""

export NEEDRESTART_SUSPEND=1  # apt: no needrestart prompt or noise in the log

cannot() { echo "docker check: skipped: $*" >&2; exit 3; }
say() { echo "docker check: $*"; }

cleanup() {
  docker rm -f "$TAG" >/dev/null 2>&1 || true
  docker rmi -f "$TAG:latest" "$TAG-build:latest" >/dev/null 2>&1 || true
  [ -z "$made_base" ] || docker rmi -f "$made_base" >/dev/null 2>&1 || true
  docker image prune -f >/dev/null 2>&1 || true  # the build stage's layers
  [ -z "$wheel_server" ] || kill "$wheel_server" 2>/dev/null || true
  if [ -n "$started_dockerd" ]; then kill "$started_dockerd" 2>/dev/null || true; wait "$started_dockerd" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

ensure_dockerd() {
  docker info >/dev/null 2>&1 && return
  if ! command -v dockerd >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || cannot "no dockerd, and no root + apt-get to install docker.io"
    say "installing docker.io"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive nice -n 19 apt-get install -y -qq docker.io >/dev/null) \
      || cannot "could not install docker.io"
  fi
  [ "$(id -u)" = 0 ] || cannot "dockerd is not running and only root can start it"
  nice -n 19 dockerd --iptables=false >"$work/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; kill -0 "$started_dockerd" 2>/dev/null || break; sleep 1; done
  cannot "dockerd did not start: $(tail -n 3 "$work/dockerd.log" | tr '\n' ' ')"
}

# Docker's classic builder writes each layer twice before it drops the container's copy: at its peak (copying
# the venv, 5.8 GB with a CUDA build of torch, into the final stage) it held 17.4 GB, measured here (2026-12-05);
# the wheelhouse takes 2.9 GB until then. Where the disk has less, skip and say so rather than fail mid-build.
free_gb() { df -P -B1G "$1" | awk 'NR == 2 { print $4 }'; }
check_disk() {
  local root need_root=18 need_work=3
  root=$(docker info -f '{{.DockerRootDir}}')
  [ "$(free_gb "$root")" -ge "$need_root" ] \
    || cannot "$(free_gb "$root") GB free on $root's disk; the image build needs about $need_root GB (free some space)"
  [ "$(free_gb "$work")" -ge "$need_work" ] \
    || cannot "$(free_gb "$work") GB free on $work's disk; the wheelhouse needs about $need_work GB (free some space)"
}

# A base image with python3 (and useradd) for the Dockerfile's BASE argument
make_base() {
  if [ -n "${DOCKER_CHECK_BASE:-}" ]; then echo "$DOCKER_CHECK_BASE"; return; fi
  if ! command -v debootstrap >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive nice -n 19 apt-get install -y -qq debootstrap >/dev/null) \
      || cannot "no base image can be pulled, and debootstrap could not be installed"
  fi
  nice -n 19 debootstrap --variant=minbase --include=python3,python3-venv bookworm "$work/rootfs" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || cannot "debootstrap from $MIRROR failed: $(tail -n 2 "$work/debootstrap.log" | tr '\n' ' ')"
  rm -rf "$work"/rootfs/var/cache/apt/* "$work"/rootfs/var/lib/apt/lists/*
  tar -C "$work/rootfs" -c . | docker import - "$TAG-base:bookworm" >/dev/null
  made_base="$TAG-base:bookworm"
  echo "$made_base"
}

[ "${RESNETKIT_DOCKER_CHECK:-1}" != 0 ] || cannot "RESNETKIT_DOCKER_CHECK=0"
[ -d "$SHARED/weights/cifar10" ] && [ -d "$SHARED/data/cifar10/test" ] || cannot "$SHARED (CIFAR weights and data) is missing"
ensure_dockerd
check_disk
t0=$SECONDS
base=$(make_base)
base_py=$(docker run --rm "$base" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
host_py=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$base_py" = "$host_py" ] || cannot "the base image has Python $base_py, this host $host_py: the wheelhouse would not fit"
say "base image $base (Python $base_py) in $((SECONDS - t0)) s"

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The wheelhouse is served to the build over loopback (FIND_LINKS, the build on the host's network) instead of
# sent in the build context: that would hold 2.9 GB twice more on the disk (the context and its COPY layer)
t0=$SECONDS
nice -n 19 "$PYTHON" -m pip download --quiet --dest "$work/wheelhouse" ".[serve]" "setuptools>=77" 2>&1 | grep -v "is ignored" || true
say "wheelhouse: $(find "$work/wheelhouse" -name '*.whl' | wc -l) wheels, $(du -sh "$work/wheelhouse" | cut -f1), in $((SECONDS - t0)) s"
wheel_port=$(free_port)
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$work/wheelhouse" "$wheel_port" >"$work/wheels.log" 2>&1 &
wheel_server=$!

build() {  # [DOCKER BUILD ARGS]: the same build arguments each time, so that the second build reuses the first
  DOCKER_BUILDKIT=0 nice -n 19 docker build --quiet --network host --build-arg BASE="$base" \
    --build-arg FIND_LINKS="http://127.0.0.1:$wheel_port/" "$@" . >>"$work/build.log" 2>&1 \
    || { tail -n 30 "$work/build.log"; echo "docker check: FAIL docker build" >&2; exit 1; }
}
t0=$SECONDS
build --target build -t "$TAG-build"
kill "$wheel_server"; wheel_server=""; rm -rf "$work/wheelhouse"  # installed: its room goes to the final stage
build -t "$TAG"
build_s=$((SECONDS - t0))
size=$(docker image inspect -f '{{.Size}}' "$TAG")
say "image built in ${build_s} s: $(awk -v b="$size" 'BEGIN { printf "%.2f GB", b / 1e9 }')"

port=$(free_port)
docker run -d --name "$TAG" -p "127.0.0.1:$port:8000" -e RESNETKIT_OFFLINE=1 \
  -v "$(cd "$SHARED/weights/cifar10" && pwd):/weights/hub/checkpoints:ro" "$TAG" cifar_resnet20 >/dev/null
t0=$SECONDS
until [ "$(docker inspect -f '{{.State.Health.Status}}' "$TAG")" = healthy ]; do
  if [ $((SECONDS - t0)) -gt 240 ] || [ "$(docker inspect -f '{{.State.Running}}' "$TAG")" != true ]; then
    docker logs "$TAG" 2>&1 | tail -n 20
    echo "docker check: FAIL the container did not turn healthy" >&2; exit 1
  fi
  sleep 1
done
say "ok   health check healthy after $((SECONDS - t0)) s"
uid=$(docker exec "$TAG" awk '/^Uid:/ { print $2 }' /proc/1/status)
[ "$uid" != 0 ] || { echo "docker check: FAIL the server runs as root" >&2; exit 1; }
say "ok   the server (PID 1) runs as uid $uid ($(docker exec "$TAG" id -un))"

if ! "$PYTHON" scripts/docker_probe.py "http://127.0.0.1:$port" "$TAG" "$SHARED/data/cifar10/test" | sed 's/^/docker check: /'; then
  docker logs "$TAG" 2>&1 | tail -n 20; exit 1
fi
code=$(docker inspect -f '{{.State.ExitCode}}' "$TAG")
[ "$code" = 0 ] || { docker logs "$TAG" 2>&1 | tail -n 20; echo "docker check: FAIL exit code $code after docker stop (137: killed at the end of the grace period)" >&2; exit 1; }
say "ok   exited with code 0 within docker stop's grace period"
say "passed: image $(awk -v b="$size" 'BEGIN { printf "%.2f GB", b / 1e9 }'), built in ${build_s} s"
