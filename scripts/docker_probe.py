"""Check a running resnetkit container from the host (stdlib only; scripts/docker_check.sh runs it).

Usage: docker_probe.py URL CONTAINER CIFAR_TEST_DIR. Checks the page, /predictions and /v2 infer with real
CIFAR-10 images and their labels, a junk upload, and then that ``docker stop`` answers requests in flight:
their bodies are half sent when the stop is issued and finished after it; each must still get its labels.
"""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

MODEL = "cifar_resnet20"
IMAGES = [("cat", "0000.jpg"), ("ship", "0001.jpg")]  # labelled right by ResNet-20 (README)


def call(url: str, data: bytes | None = None, method: str = "GET") -> tuple[int, bytes, str]:
    """Status, body and content type of one request (HTTP errors included)."""
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def check(condition: bool, what: str) -> None:
    print(f"{'ok  ' if condition else 'FAIL'} {what}", flush=True)
    if not condition:
        sys.exit(1)


def infer_body(images: list[bytes]) -> bytes:
    """An Open Inference Protocol request with ``images`` as base64 BYTES."""
    data = [base64.b64encode(image).decode() for image in images]
    return json.dumps({"inputs": [{"name": "image", "shape": [len(data)], "datatype": "BYTES", "data": data}],
                       "parameters": {"top_k": 1}}).encode()


def labels_of(body: bytes) -> list[str]:
    outputs = {output["name"]: output["data"] for output in json.loads(body)["outputs"]}
    return outputs["label"]


def check_endpoints(url: str, files: list[bytes], labels: list[str]) -> None:
    status, body, kind = call(url + "/")
    check(status == 200 and kind.startswith("text/html") and b"resnetkit" in body, "GET / serves the page")
    status, _, kind = call(url + "/static/app.js")
    check(status == 200 and "javascript" in kind, "GET /static/app.js (package data in the image)")
    for label, data in zip(labels, files):
        status, body, _ = call(f"{url}/predictions/{MODEL}", data, "PUT")
        top = max(json.loads(body).items(), key=lambda item: item[1])[0] if status == 200 else None
        check(top == label, f"PUT /predictions/{MODEL} with a CIFAR {label}: {status}, top label {top}")
    status, body, _ = call(f"{url}/v2/models/{MODEL}/infer", infer_body(files), "POST")
    got = labels_of(body) if status == 200 else body.decode(errors="replace")
    check(got == labels, f"POST /v2/models/{MODEL}/infer with {len(files)} CIFAR images: {status}, labels {got}")
    status, body, _ = call(f"{url}/predictions/{MODEL}", b"this is not an image\n" * 20, "PUT")
    check(400 <= status < 500, f"junk upload refused with {status}: {body.decode(errors='replace')[:100]}")


def send_half(url: str, body: bytes) -> http.client.HTTPConnection:
    """A connection that has sent the headers and the first half of ``body``."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.putrequest("POST", f"/v2/models/{MODEL}/infer")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders()
    connection.send(body[:len(body) // 2])
    return connection


def check_drain(url: str, container: str, files: list[bytes], labels: list[str], in_flight: int = 4) -> None:
    body = infer_body(files * 8)
    connections = [send_half(url, body) for _ in range(in_flight)]
    time.sleep(1.0)  # the server has read the headers: these requests are in flight
    started = time.monotonic()
    stop = subprocess.Popen(["docker", "stop", container], stdout=subprocess.DEVNULL)
    time.sleep(1.5)  # SIGTERM has arrived; the requests are still being sent
    answers: list[tuple[int, list[str] | str]] = []

    def finish(connection: http.client.HTTPConnection) -> None:
        try:
            connection.send(body[len(body) // 2:])
            response = connection.getresponse()
            data = response.read()
            answers.append((response.status, labels_of(data) if response.status == 200 else data.decode()))
        except OSError as exc:
            answers.append((0, f"lost: {exc!r}"))

    threads = [threading.Thread(target=finish, args=(c,)) for c in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.wait(timeout=60)
    elapsed = time.monotonic() - started
    ok = [a for a in answers if a[0] == 200 and a[1] == labels * 8]
    check(len(ok) == in_flight, f"docker stop: {len(ok)} of {in_flight} requests in flight answered with the right "
                                f"labels ({[a for a in answers if a not in ok][:2] or 'none lost'})")
    check(stop.returncode == 0, f"docker stop returned after {elapsed:.1f} s")


def main() -> None:
    url, container, cifar = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    files = [(cifar / label / name).read_bytes() for label, name in IMAGES]
    labels = [label for label, _ in IMAGES]
    check_endpoints(url, files, labels)
    check_drain(url, container, files, labels)


if __name__ == "__main__":
    main()
