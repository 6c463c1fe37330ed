# resnetkit serve, CPU only.
#   docker build -t resnetkit-serve .
#   docker run --rm -p 8000:8000 -e RESNETKIT_MODELS=resnet50 -e RESNETKIT_TOKEN=change-me \
#       -v resnetkit-weights:/home/app/.cache/torch resnetkit-serve
# Inside the container the server binds 0.0.0.0 (the container's own network); publish the port
# only where it should be reachable, and set RESNETKIT_TOKEN when it is reachable by others.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    RESNETKIT_HOST=0.0.0.0 RESNETKIT_PORT=8000

# CPU-only PyTorch wheels (no CUDA libraries: a much smaller image).
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.6,<2.15" "torchvision>=0.21,<0.30"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf /src

RUN useradd --create-home app
USER app
WORKDIR /home/app
# Weights are downloaded on first start into $TORCH_HOME; mount a volume there to keep them.
ENV TORCH_HOME=/home/app/.cache/torch
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz').status != 200)"

# Models come from RESNETKIT_MODELS (or append them to the command). SIGTERM drains in-flight requests.
CMD ["resnetkit", "serve"]
