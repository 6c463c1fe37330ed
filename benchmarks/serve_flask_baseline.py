"""The naive baseline of the serve load benchmark: the classic Flask demo.

One request -> decode -> preprocess -> one forward pass at batch 1 -> top-5, no batching, Flask's
own threaded server. It reuses resnetkit's loader and image pipeline. ``--backend eager`` (the
default) is the classic PyTorch demo; ``--backend auto`` runs resnetkit's default runtime, so
that only the serving strategy differs from ``resnetkit serve``.

    python benchmarks/serve_flask_baseline.py MODEL_REF --port 8001 [--backend eager] [--threads N]
"""

from __future__ import annotations

import argparse
import logging

from flask import Flask, jsonify, request

from resnetkit.backends.base import RunnerOptions
from resnetkit.core.errors import ImageError
from resnetkit.core.images import prepare_image
from resnetkit.run.loading import load_model
from resnetkit.run.classify import predict_tensors


def create_app(ref: str, backend: str, threads: int | None = None) -> Flask:
    classifier = load_model(ref, backend=backend, options=RunnerOptions(threads=threads))
    preprocessing = classifier.meta.preprocessing
    app = Flask(__name__)

    @app.get("/ping")
    def ping():
        return jsonify(status="Healthy")

    @app.post("/predict")
    def predict():
        upload = request.files.get("file")
        if upload is None:
            return jsonify(error="send the image as multipart field 'file'"), 422
        try:
            tensor = prepare_image(upload.read(), preprocessing)
        except ImageError as exc:
            return jsonify(error=str(exc)), 422
        [predictions] = predict_tensors(classifier, tensor.unsqueeze(0), 5)
        return jsonify(predictions=[vars(p) for p in predictions])

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="zoo name or resnetkit model file")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--backend", default="eager", help="resnetkit backend (default: eager, the classic demo)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of the model's runner (default: the runtime's own)")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request log line, as for resnetkit serve
    create_app(args.model, args.backend, args.threads).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
