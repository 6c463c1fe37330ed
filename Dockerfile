# resnetkit serve in a container (CPU). docs/docker.md has the details.
#   docker build -t resnetkit .
#   docker run --rm -p 127.0.0.1:8000:8000 -v resnetkit-weights:/weights -e RESNETKIT_MODELS=resnet50 resnetkit
# Offline or behind a mirror: put every wheel in wheelhouse/ (scripts/docker_check.sh shows how), or point
# INDEX_URL / TORCH_INDEX_URL at your mirror. The server binds 0.0.0.0 inside the container: publish the port
# only where it should be reachable, and set RESNETKIT_TOKEN when others can reach it.
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
# Packages come from these indexes unless wheelhouse/ holds wheels or FIND_LINKS names a wheelhouse served over
# HTTP (e.g. http://127.0.0.1:8080/ with --network host: the wheels then stay out of the build context and its
# layers); torch and torchvision from the CPU-only index
ARG INDEX_URL=https://pypi.org/simple
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG FIND_LINKS=
ARG EXTRAS=serve
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY wheelhouse/ /wheelhouse/
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN python3 -m venv /opt/venv \
 && links="${FIND_LINKS}" && if ls /wheelhouse/*.whl >/dev/null 2>&1; then links=/wheelhouse; fi \
 && if [ -n "$links" ]; then \
      /opt/venv/bin/pip install --no-index --find-links "$links" "/src[${EXTRAS}]"; \
    else \
      /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.6,<2.15" "torchvision>=0.21,<0.30" \
      && /opt/venv/bin/pip install --index-url "${INDEX_URL}" "/src[${EXTRAS}]"; \
    fi \
 && /opt/venv/bin/resnetkit --version

FROM ${BASE}
RUN useradd --create-home --uid 10001 app && mkdir /weights && chown app /weights
COPY --from=build /opt/venv /opt/venv
USER app
WORKDIR /home/app
# Weights: torch.hub's cache under /weights (hub/checkpoints/); mount a volume there to keep downloads, or a
# read-only folder of checkpoints. auto's tuning cache stays in the home folder.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 TORCH_HOME=/weights \
    RESNETKIT_HOST=0.0.0.0 RESNETKIT_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ['RESNETKIT_PORT'], timeout=4)"]
# Models from RESNETKIT_MODELS or the command's arguments. SIGTERM (docker stop) finishes in-flight requests.
ENTRYPOINT ["resnetkit", "serve"]
