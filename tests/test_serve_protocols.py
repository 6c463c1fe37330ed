"""The protocols users migrate from: Open Inference Protocol (KServe v2), KServe v1, TorchServe's
management views and metric names, against a real uvicorn on 127.0.0.1 serving the real CIFAR ResNet-20."""

from __future__ import annotations

import base64
import gzip
import json
import struct
import zlib
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from resnetkit.run.loading import load_model
from resnetkit.run.classify import classify
from resnetkit.serve import ServerThread, ServeSettings

INFER = "/v2/models/cifar_resnet20/infer"


@pytest.fixture(scope="module")
def server(cifar_weights: Path) -> Iterator[str]:
    running = ServerThread(ServeSettings(models=("cifar_resnet20",), port=0, access_log=False, backend="eager")).start()
    try:
        running.wait_ready()
        yield running.url
    finally:
        running.stop()


@pytest.fixture(scope="module")
def images(cifar_test_dir: Path) -> list[Path]:
    """Two CIFAR-10 test JPEGs of each class."""
    return [path for folder in sorted(cifar_test_dir.iterdir()) for path in sorted(folder.glob("*.jpg"))[:2]]


@pytest.fixture(scope="module")
def expected(images: list[Path]) -> list[list[str]]:
    """The top-3 labels ``resnetkit classify`` gives each image."""
    return [[p.label for p in r.predictions] for r in classify(load_model("cifar_resnet20"), images, top_k=3)]


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def bytes_input(data: list[str], name: str = "image") -> dict:
    return {"name": name, "shape": [len(data)], "datatype": "BYTES", "data": data}


def test_v2_infer_with_base64_jpegs_answers_the_right_labels(server, images, expected):
    body = {"id": "r1", "parameters": {"top_k": 3}, "inputs": [bytes_input([b64(p) for p in images])]}
    response = httpx.post(f"{server}{INFER}", json=body, timeout=60)
    assert response.status_code == 200
    answer = response.json()
    assert answer["model_name"] == "cifar_resnet20" and answer["id"] == "r1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert {name: (o["datatype"], o["shape"]) for name, o in outputs.items()} == {
        "label": ("BYTES", [20, 3]), "score": ("FP32", [20, 3]), "index": ("INT64", [20, 3])}
    labels = [outputs["label"]["data"][i * 3:i * 3 + 3] for i in range(20)]
    assert labels == expected
    truth = [p.parent.name for p in images]
    assert sum(row[0] == t for row, t in zip(labels, truth)) >= 16  # ResNet-20 is ~91 % right on CIFAR-10
    categories = httpx.get(f"{server}/v1/models/cifar_resnet20").json()["categories"]
    assert [categories[i] for i in outputs["index"]["data"]] == outputs["label"]["data"]
    scores = outputs["score"]["data"]
    assert all(scores[i] >= scores[i + 1] for i in range(0, 60, 3))


def test_v2_binary_data_extension_gives_the_same_answer(server, images):
    chosen = images[:4]
    raw = b"".join(struct.pack("<I", len(p.read_bytes())) + p.read_bytes() for p in chosen)
    header = json.dumps({"inputs": [{"name": "image", "shape": [4], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "label"}]}).encode()
    response = httpx.post(f"{server}{INFER}", content=header + raw,
                          headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 200
    [output] = response.json()["outputs"]
    as_json = httpx.post(f"{server}{INFER}", json={"inputs": [bytes_input([b64(p) for p in chosen])],
                                                   "outputs": [{"name": "label"}]}).json()["outputs"]
    assert output["name"] == "label" and output["shape"] == [4, 5] and [output] == as_json


@pytest.mark.parametrize("body, status, message", [
    ("junk-image", 400, "Image 1 of input 'image': the uploaded data is not an image format"),
    ({"inputs": [bytes_input(["not base64!"])]}, 400, "Element 0 of the BYTES input is not valid base64"),
    ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, 400, "datatype FP32"),
    ({"inputs": [{**bytes_input(["aGk="]), "shape": [2]}]}, 400, "has shape [2] but holds 1 images"),
    ({"inputs": []}, 400, "exactly one input"),
    ({"instances": []}, 400, "Not an inference request: inputs: Field required"),
    ({"parameters": {"top_k": 0}, "inputs": [bytes_input(["aGk="])]}, 400, "top_k must be an integer from 1"),
    ({"inputs": [bytes_input(["aGk="])], "outputs": [{"name": "logits"}]}, 400, "Unknown output logits"),
    ({"inputs": [{**bytes_input(["aGk="]), "name": "INPUT__0"}]}, 400, "Unknown input 'INPUT__0': the model's one input is 'image'"),
])
def test_v2_bad_requests_are_4xx_with_an_error_body(server, images, body, status, message):
    if body == "junk-image":
        body = {"inputs": [bytes_input([b64(images[0]), base64.b64encode(b"GIF89a junk").decode()])]}
    response = httpx.post(f"{server}{INFER}", json=body)
    assert response.status_code == status and message in response.json()["error"]


def test_v2_unknown_model_and_bad_json(server):
    missing = httpx.post(f"{server}/v2/models/resnet50/infer", json={"inputs": []})
    assert missing.status_code == 404 and "not served here" in missing.json()["error"]
    assert httpx.get(f"{server}/v2/models/resnet50/ready").status_code == 404
    broken = httpx.post(f"{server}{INFER}", content=b"{not json")
    assert broken.status_code == 400 and "Not an inference request" in broken.json()["error"]
    cut = httpx.post(f"{server}{INFER}", content=b"{}", headers={"Inference-Header-Content-Length": "99"})
    assert cut.status_code == 400 and "not a length within the body" in cut.json()["error"]


def test_v2_health_and_metadata(server):
    assert httpx.get(f"{server}/v2").json()["extensions"] == ["binary_tensor_data", "classification"]
    assert httpx.get(f"{server}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{server}/v2/models/cifar_resnet20/ready").json() == {"name": "cifar_resnet20", "ready": True}
    metadata = httpx.get(f"{server}/v2/models/cifar_resnet20").json()
    assert metadata["platform"] == "resnetkit/eager/fp32 on CPU"
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [
        ("label", "BYTES"), ("score", "FP32"), ("index", "INT64")]


def test_kserve_v1_predict(server, images, expected):
    body = {"instances": [{"b64": b64(p)} for p in images[:6]]}
    response = httpx.post(f"{server}/v1/models/cifar_resnet20:predict?top_k=3", json=body)
    assert response.status_code == 200
    assert [[p["label"] for p in row] for row in response.json()["predictions"]] == expected[:6]
    junk = httpx.post(f"{server}/v1/models/cifar_resnet20:predict", json={"instances": [{"b64": "aGVsbG8="}]})
    assert junk.status_code == 400 and junk.json()["error"].startswith("Instance 0: the uploaded data is not an image")
    wrong = httpx.post(f"{server}/v1/models/cifar_resnet20:predict", json={"inputs": []})
    assert wrong.status_code == 400 and "instances" in wrong.json()["error"]
    bad_k = httpx.post(f"{server}/v1/models/cifar_resnet20:predict?top_k=0", json=body)
    assert bad_k.status_code == 400 and bad_k.json()["error"].startswith("top_k: ")  # KServe: every bad request is 400
    broken = httpx.post(f"{server}/v1/models/cifar_resnet20:predict", content=b"{bad json")
    assert broken.status_code == 400 and broken.json()["error"].startswith("Not a KServe v1 request: body: Invalid JSON")


def test_kserve_v1_takes_the_instance_forms_clients_send(server, images, expected):
    forms = [b64(images[0]), {"data": b64(images[1])}, {"image": {"b64": b64(images[2])}}]  # bare, TorchServe, TF
    response = httpx.post(f"{server}/v1/models/cifar_resnet20:predict?top_k=3", json={"instances": forms})
    assert [[p["label"] for p in row] for row in response.json()["predictions"]] == expected[:3]
    both = httpx.post(f"{server}/v1/models/cifar_resnet20:predict", json={"instances": [{"b64": "x", "data": "y"}]})
    assert both.status_code == 400 and both.json()["error"] == (
        'Not a KServe v1 request: instances.0: Value error, give each image as one of: a base64 string, {"b64": ...}, '
        '{"data": ...} or {"image": {"b64": ...}}. Send JSON like {"instances": [{"b64": "<base64 image file>"}]}.')


def test_v2_versioned_paths_name_the_one_version(server, images):
    body = {"inputs": [bytes_input([b64(images[0])])], "outputs": [{"name": "label"}]}
    plain = httpx.post(f"{server}{INFER}", json=body).json()
    versioned = httpx.post(f"{server}/v2/models/cifar_resnet20/versions/1/infer", json=body).json()
    assert versioned == plain and plain["outputs"][0]["shape"] == [1, 5]
    assert httpx.get(f"{server}/v2/models/cifar_resnet20").json()["versions"] == ["1"]
    assert httpx.get(f"{server}/v2/models/cifar_resnet20/versions/1").json()["name"] == "cifar_resnet20"
    assert httpx.get(f"{server}/v2/models/cifar_resnet20/versions/1/ready").json()["ready"] is True
    other = httpx.post(f"{server}/v2/models/cifar_resnet20/versions/2/infer", json=body)
    assert other.status_code == 404 and other.json()["error"].startswith("Model cifar_resnet20 has no version '2'")


def test_kserve_routing_errors_keep_the_protocols_error_body(server):
    wrong_method = httpx.get(f"{server}{INFER}")
    assert wrong_method.status_code == 405 and wrong_method.json() == {"error": "Method Not Allowed"}
    no_route = httpx.post(f"{server}/v2/models/cifar_resnet20/explain", json={})
    assert no_route.status_code == 404 and no_route.json() == {"error": "Not Found"}
    own_api = httpx.get(f"{server}/v1/models/cifar_resnet20/classify")
    assert own_api.status_code == 405 and own_api.json() == {"detail": "Method Not Allowed"}


@pytest.mark.parametrize("path", ["/", "/healthz", "/readyz", "/metrics", "/ping", "/v2/health/live", "/v2/health/ready"])
def test_probes_answer_head_as_get_without_a_body(server, path):
    head, get = httpx.head(f"{server}{path}"), httpx.get(f"{server}{path}")
    assert head.status_code == get.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


def test_torchserve_management_views_versions_and_metric_names(server, images):
    assert httpx.get(f"{server}/models").json() == {
        "models": [{"modelName": "cifar_resnet20", "modelUrl": "cifar_resnet20"}]}
    [described] = httpx.get(f"{server}/models/cifar_resnet20").json()
    assert described["modelVersion"] == "1.0" and described["batchSize"] == 32 and described["runtime"] == "eager/fp32 on CPU"
    assert described["workers"][0]["status"] == "READY" and described["workers"][0]["memoryUsage"] > 10_000_000
    assert httpx.get(f"{server}/models/nope").json()["type"] == "ModelNotFoundException"
    before = ts_metric(server, "ts_inference_requests_total")
    image = images[0].read_bytes()
    plain = httpx.put(f"{server}/predictions/cifar_resnet20", content=image)
    versioned = httpx.put(f"{server}/predictions/cifar_resnet20/1.0", content=image)
    assert plain.status_code == versioned.status_code == 200 and plain.json() == versioned.json()
    assert next(iter(plain.json())) == images[0].parent.name
    other = httpx.put(f"{server}/predictions/cifar_resnet20/2.0", content=image)
    assert other.status_code == 404 and "version 2.0 does not exist" in other.json()["message"]
    assert ts_metric(server, "ts_inference_requests_total") == before + 2
    assert ts_metric(server, "ts_inference_latency_microseconds") > 0
    assert ts_metric(server, "ts_queue_latency_microseconds") >= 0
    assert "resnetkit_http_requests_total" in httpx.get(f"{server}/metrics").text
    assert httpx.post(f"{server}/models", json={"url": "http://evil/x.mar"}).status_code == 405  # never registers


def test_openapi_refs_all_resolve(server):
    document = httpx.get(f"{server}/openapi.json").json()
    refs, stack = set(), [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "$ref" in node:
                refs.add(node["$ref"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    assert {"#/components/schemas/OipRequestInput", "#/components/schemas/KServeV1Instance"} <= refs
    schemas = document["components"]["schemas"]
    assert sorted(r for r in refs if r.removeprefix("#/components/schemas/") not in schemas) == []
    infer_body = document["paths"][INFER.replace("cifar_resnet20", "{model}")]["post"]["requestBody"]
    assert "$defs" not in infer_body["content"]["application/json"]["schema"]


@pytest.mark.parametrize("method, path", [
    ("GET", "/v2/models/cifar_resnet20"), ("GET", "/v2/models/cifar_resnet20/ready"), ("POST", INFER),
    ("PUT", "/predictions/cifar_resnet20"), ("GET", "/models/cifar_resnet20")])
def test_a_version_query_parameter_is_ignored(server, images, method, path):
    image = images[0].read_bytes()
    body = json.dumps({"inputs": [bytes_input([b64(images[0])])]}).encode() if path == INFER else image
    response = httpx.request(method, f"{server}{path}?version=2", content=None if method == "GET" else body)
    assert response.status_code == 200


def test_openapi_documents_no_version_query_parameter(server):
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    queries = {(path, method, p["name"]) for path, operations in paths.items() for method, op in operations.items()
               for p in op.get("parameters", []) if p["in"] == "query"}
    assert [q for q in queries if q[2] == "version"] == []


@pytest.mark.parametrize("path, method", [("/predictions/{model}", "post"), ("/predictions/{model}", "put"),
                                          ("/explanations/{model}", "post")])
def test_predictions_and_explanations_declare_an_image_body(server, path, method):
    body = httpx.get(f"{server}/openapi.json").json()["paths"][path][method]["requestBody"]
    binary = {"type": "string", "format": "binary"}
    assert body["content"]["image/*"]["schema"] == body["content"]["application/octet-stream"]["schema"] == binary
    assert body["content"]["multipart/form-data"]["schema"]["properties"] == {"data": binary}


def test_mime_and_url_safe_base64_are_accepted(server, images):
    image = next(p for p in images if {"+", "/"} & set(b64(p)))  # so that the URL-safe alphabet differs
    plain = b64(image)
    variants = [base64.encodebytes(image.read_bytes()).decode(),  # a line break every 76 characters
                base64.urlsafe_b64encode(image.read_bytes()).decode().rstrip("=")]
    assert "\n" in variants[0] and variants[1] != plain
    v1 = f"{server}/v1/models/cifar_resnet20:predict"
    expected = [p["label"] for p in httpx.post(v1, json={"instances": [plain]}).json()["predictions"][0]]
    answers = httpx.post(v1, json={"instances": [{"b64": v} for v in variants]})
    assert answers.status_code == 200
    assert [[p["label"] for p in row] for row in answers.json()["predictions"]] == [expected, expected]
    v2 = httpx.post(f"{server}{INFER}", json={"inputs": [bytes_input(variants)], "outputs": [{"name": "label"}]})
    assert v2.status_code == 200 and v2.json()["outputs"][0]["data"] == expected * 2
    garbage = httpx.post(v1, json={"instances": ["aGk=*?"]})
    assert garbage.status_code == 400 and garbage.json()["error"] == (
        "Instance 0 is not valid base64; encode the image file with base64 (e.g. base64 -w0 photo.jpg).")


def test_the_page_declares_an_icon_so_browsers_do_not_ask_for_favicon_ico(server):
    assert '<link rel="icon" href="data:,">' in httpx.get(f"{server}/").text


def test_explanations_accept_put_as_curl_t_sends(server, images):
    response = httpx.put(f"{server}/explanations/cifar_resnet20", content=images[0].read_bytes(), timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"


def test_torchserve_routes_answer_routing_errors_in_torchserve_shape(server):
    assert httpx.get(f"{server}/predictions/cifar_resnet20").json() == {
        "code": 405, "type": "MethodNotAllowedException", "message": "Method Not Allowed"}
    assert httpx.delete(f"{server}/models/cifar_resnet20").json()["type"] == "MethodNotAllowedException"
    assert httpx.get(f"{server}/predictions").json() == {"code": 404, "type": "ModelNotFoundException",
                                                         "message": "Not Found"}


def test_v2_classification_extension_as_tritonclient_sends_it(server, images):
    data = [b64(p) for p in images[:2]]
    plain = httpx.post(f"{server}{INFER}", json={"inputs": [bytes_input(data)], "parameters": {"top_k": 3}}).json()
    # tritonclient's InferRequestedOutput("score", class_count=3), byte for byte
    body = {"inputs": [bytes_input(data)], "parameters": {"timeout": 0, "top_k": 2},
            "outputs": [{"name": "score", "parameters": {"classification": 3, "binary_data": True}},
                        {"name": "label", "parameters": {"binary_data": True}}]}
    response = httpx.post(f"{server}{INFER}", json=body)
    assert response.status_code == 200
    classified, labels = response.json()["outputs"]
    assert (classified["name"], classified["datatype"], classified["shape"]) == ("score", "BYTES", [2, 3])
    assert labels["shape"] == [2, 3]  # top_k 2 is raised to the class count
    expected = {o["name"]: o["data"] for o in plain["outputs"]}
    cells = [cell.split(":") for cell in classified["data"]]  # "<score>:<index>:<label>", most probable first
    assert [(int(i), label) for _, i, label in cells] == list(zip(expected["index"], expected["label"]))
    assert all(len(score.split(".")[1]) == 6 for score, _, _ in cells)  # Triton's std::to_string
    assert [float(c[0]) for c in cells] == pytest.approx(expected["score"], abs=1e-4)
    assert labels["data"] == expected["label"]
    wrong = httpx.post(f"{server}{INFER}", json={"inputs": [bytes_input(data)], "outputs": [
        {"name": "label", "parameters": {"classification": 3}}]})
    assert wrong.status_code == 400 and "applies to the 'score' output only" in wrong.json()["error"]


@pytest.mark.parametrize("encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_requests_are_inflated(server, images, encoding, compress):
    body = json.dumps({"inputs": [bytes_input([b64(images[0])])], "outputs": [{"name": "label"}]}).encode()
    plain = httpx.post(f"{server}{INFER}", content=body).json()
    packed = httpx.post(f"{server}{INFER}", content=compress(body), headers={"Content-Encoding": encoding})
    assert packed.status_code == 200 and packed.json() == plain
    raw = httpx.put(f"{server}/predictions/cifar_resnet20", content=compress(images[0].read_bytes()),
                    headers={"Content-Encoding": encoding})
    assert raw.status_code == 200 and next(iter(raw.json())) == images[0].parent.name


def test_a_compressed_body_is_limited_once_inflated_and_unknown_encodings_are_415(server):
    bomb = gzip.compress(b"0" * (11 * 1024 * 1024))  # 11 MiB of zeros in a few KiB; the limit is 10 MiB
    refused = httpx.post(f"{server}{INFER}", content=bomb, headers={"Content-Encoding": "gzip"})
    assert refused.status_code == 413 and refused.json()["error"].startswith(
        "The request is more than 10.00 MiB; the limit is 10.00 MiB (--max-upload-mb)")
    broken = httpx.post(f"{server}{INFER}", content=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert broken.status_code == 400 and "not valid gzip data" in broken.json()["error"]
    cut = httpx.post(f"{server}{INFER}", content=gzip.compress(b"{}" * 100)[:-8], headers={"Content-Encoding": "gzip"})
    assert cut.status_code == 400 and "gzip body is cut short" in cut.json()["error"]
    unknown = httpx.post(f"{server}{INFER}", content=b"{}", headers={"Content-Encoding": "br"})
    assert unknown.status_code == 415 and unknown.json() == {
        "error": "Content-Encoding 'br' is not supported; send the body uncompressed, or compressed with gzip or deflate."}


def test_v2_messages_for_a_string_binary_size_and_for_image_uploads(server, images):
    header = json.dumps({"inputs": [{**bytes_input(["x"]), "data": None, "parameters": {"binary_data_size": "3"}}]})
    size = httpx.post(f"{server}{INFER}", content=header.encode() + b"abc",
                      headers={"Inference-Header-Content-Length": str(len(header))})
    assert size.status_code == 400
    assert size.json()["error"] == "parameters.binary_data_size must be an integer (got '3')."
    for upload in ({"files": {"file": images[0].read_bytes()}},
                   {"content": images[0].read_bytes(), "headers": {"Content-Type": "image/jpeg"}}):
        refused = httpx.post(f"{server}{INFER}", **upload)
        assert refused.status_code == 400 and "takes a JSON inference request" in refused.json()["error"]
        assert "/predictions/{model} or /v1/models/{model}/classify" in refused.json()["error"]


def ts_metric(url: str, name: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("model_name") == "cifar_resnet20":
                return sample.value
    raise AssertionError(f"{name} is not in /metrics")


@pytest.mark.slow
def test_with_a_token_the_kserve_routes_answer_401_as_an_error_body(cifar_weights):
    running = ServerThread(ServeSettings(models=("cifar_resnet20",), port=0, access_log=False, token="t0k")).start()
    try:
        running.wait_ready()
        url = running.url
        refused = httpx.post(f"{url}{INFER}", json={"inputs": []})
        assert refused.status_code == 401 and "Bearer" in refused.json()["error"]
        assert httpx.post(f"{url}/v1/models/cifar_resnet20:predict", json={}).json()["error"].startswith("Missing")
        assert httpx.get(f"{url}/models").json() == {"code": 401, "type": "UnauthorizedException", "message": (
            "Missing or wrong bearer token: send the header 'Authorization: Bearer <token>'.")}
        assert httpx.post(f"{url}/predictions/cifar_resnet20", content=b"x").json()["code"] == 401
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200  # probes stay open
        allowed = httpx.get(f"{url}/v2/models/cifar_resnet20", headers={"Authorization": "Bearer t0k"})
        assert allowed.status_code == 200
    finally:
        running.stop()
