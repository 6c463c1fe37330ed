"""Embeddings, embedding files and nearest neighbours on real CIFAR-10 images."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from resnetkit.cli import main
from resnetkit.core.errors import ModuleRequiredError, ResnetkitError, UnknownModelError
from resnetkit.features import FeaturesUnavailableError, extract_features, find_similar, load_embeddings
from resnetkit.features.search import CosineIndex, exact_search, unit_rows

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar_files(root: Path, per_class: int, classes=CLASSES) -> list[Path]:
    return [p for c in classes for p in sorted((root / c).glob("*.jpg"))[:per_class]]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the resnetkit entry point in this process; (exit code, stdout, stderr)."""
    old, sys.argv = sys.argv, ["resnetkit", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_leave_one_out_nearest_neighbour_accuracy_is_far_above_chance(cifar_weights, cifar_test_dir):
    files = cifar_files(cifar_test_dir, 100)
    embeddings = extract_features("cifar_resnet20", files, batch_size=64, backend="eager")  # what auto picks is tested apart
    assert embeddings.vectors.shape == (1000, 64) and not any(embeddings.errors)
    labels = np.array([Path(s).parent.name for s in embeddings.sources])
    base = unit_rows(embeddings.vectors)
    _, neighbours = exact_search(base, base, k=2)
    # the nearest row of each image is itself (score 1); its second is the nearest other image
    assert (neighbours[:, 0] == np.arange(1000)).all()
    accuracy = float((labels[neighbours[:, 1]] == labels).mean())
    print(f"leave-one-out 1-NN accuracy of cifar_resnet20 pooled features, 1000 CIFAR-10 test images: {accuracy:.1%}")
    assert accuracy >= 0.60  # chance is 10 %; an independent measurement gives about 75 %


@pytest.mark.slow
def test_embed_writes_parquet_rows_with_error_rows(cifar_weights, cifar_test_dir, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = cifar_files(cifar_test_dir, 3, CLASSES[:2])
    latin1 = tmp_path / os.fsdecode(b"caf\xe9.jpg")  # a name that is not UTF-8: Arrow strings must be
    latin1.write_bytes(files[0].read_bytes())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "emb.parquet"
    code, stdout, stderr = run_cli(capsys, "embed", "cifar_resnet20", *map(str, files), str(latin1), str(broken),
                                   "-o", str(out), "--normalize")
    assert code == 1 and "8 rows (7 embeddings of 64 floats" in stdout and "broken.jpg: error:" in stderr
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert table.column("source").to_pylist() == [*map(str, files), str(tmp_path / "caf\\xe9.jpg"), str(broken)]
    rows = table.column("embedding").to_pylist()
    assert rows[-1] is None and "is not an image format" in table.column("error").to_pylist()[-1]
    assert rows[-2] == rows[0]  # the same picture under the odd name
    assert np.allclose(np.linalg.norm(np.array(rows[:-1]), axis=1), 1.0, atol=1e-5)
    info = load_embeddings(out).info
    assert info["model"] == "cifar_resnet20" and info["weights"] == "CIFAR10_AKAMASTER" and info["normalize"] is True
    assert f"{info['label']}) written to {out}" in stdout and info["device"] in stdout.replace("CPU", "cpu")
    assert not list(tmp_path.glob(".*partial"))  # atomic write left no temporary file


@pytest.mark.slow
def test_embed_npy_with_sidecar_matches_python_api(cifar_weights, cifar_test_dir, tmp_path, capsys):
    files = cifar_files(cifar_test_dir, 2, CLASSES[:3])
    out = tmp_path / "emb.npy"
    code, stdout, _ = run_cli(capsys, "embed", "cifar_resnet20", *map(str, files), "-o", str(out), "--json")
    assert code == 0 and json.loads(stdout)["rows"] == 6
    array = np.load(out)
    sidecar = json.loads((tmp_path / "emb.sources.json").read_text())
    assert array.shape == (6, 64) and array.dtype == np.float32
    assert sidecar["sources"] == list(map(str, files)) and sidecar["errors"] == [None] * 6
    direct = extract_features("cifar_resnet20", files)
    assert np.allclose(array, direct.vectors, atol=1e-5)


@pytest.mark.slow
def test_layer_takes_an_earlier_stage_pooled(cifar_weights, cifar_test_dir):
    files = cifar_files(cifar_test_dir, 1, CLASSES[:2])
    assert extract_features("cifar_resnet20", files, layer="layer2", backend="eager").vectors.shape == (2, 32)
    with pytest.raises(ResnetkitError, match="has no layer 'layer9'. Choose one of: conv1, bn1, layer1, layer2, layer3"):
        extract_features("cifar_resnet20", files, layer="layer9")


@pytest.mark.slow
def test_random_weights_imagenet_model_gives_its_feature_width(tmp_path):
    image = make_image(tmp_path / "a.png", size=(80, 60))
    # the width is the architecture's: eager keeps auto's first-use tuning (an export per model, ~1 min in CI) out
    assert extract_features("resnet18", [image], pretrained=False, backend="eager").vectors.shape == (1, 512)
    assert extract_features("mobilenet_v2", [image], pretrained=False, backend="eager").vectors.shape == (1, 1280)


def test_unknown_model_and_bad_output_name_explain_themselves(tmp_path, capsys):
    with pytest.raises(UnknownModelError, match="Unknown model 'resnet5'.*Did you mean"):
        extract_features("resnet5", [tmp_path])
    make_image(tmp_path / "a.png")
    code, _, stderr = run_cli(capsys, "embed", "resnet18", str(tmp_path), "-o", str(tmp_path / "e.csv"))
    assert code == 2 and "error: e.csv: embedding files end in .parquet or .npy" in stderr


def test_exported_files_say_they_cannot_embed(tmp_path):
    from resnetkit.backends.torchscript import save_torchscript
    from resnetkit.core.zoo import get_spec

    spec = get_spec("cifar_resnet20")
    path = save_torchscript(spec.build().eval(), spec.meta().replace(weights="random"), tmp_path / "m.torchscript")
    with pytest.raises(ModuleRequiredError, match="keeps only the logits output. Use the zoo name"):
        extract_features(path, [make_image(tmp_path / "a.png")])


@pytest.mark.slow
def test_similar_finds_the_query_itself_then_its_class(cifar_weights, cifar_test_dir, tmp_path, capsys):
    files = cifar_files(cifar_test_dir, 30, ("automobile", "frog", "ship"))
    out = tmp_path / "emb.parquet"
    assert run_cli(capsys, "embed", "cifar_resnet20", *map(str, files), "-o", str(out))[0] == 0
    query = files[40]  # a frog
    code, stdout, _ = run_cli(capsys, "similar", str(out), str(query), "-k", "5", "--json")
    result = json.loads(stdout)
    neighbours = result["results"][0]["neighbours"]
    assert code == 0 and result["method"] == "exact" and len(neighbours) == 5
    assert {"backend", "precision", "device", "device_name", "label"} <= set(result)  # what embedded the query
    assert neighbours[0]["source"] == str(query) and neighbours[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert sum(Path(n["source"]).parent.name == "frog" for n in neighbours) >= 4
    hnsw = find_similar(out, [query], k=5, method="hnsw")
    assert hnsw.method == "hnsw" and hnsw.results[0].neighbours[0].source == str(query)
    code, _, stderr = run_cli(capsys, "similar", str(out), str(query), "-k", "1")
    assert code == 0 and f"cosine similarity, exact search; queries embedded by {hnsw.ran.label()}" in stderr
    assert (tmp_path / "emb.parquet.hnsw.faiss").is_file()


@pytest.mark.slow
def test_similar_refuses_random_weight_embeddings(tmp_path):
    from resnetkit.features import embed_to_file

    out = embed_to_file("resnet18", [make_image(tmp_path / "a.png")], tmp_path / "e.parquet", pretrained=False,
                        backend="eager").path  # not auto: tuning resnet18 took ~40 s of this test
    with pytest.raises(ResnetkitError, match="made with random weights"):
        find_similar(out, [tmp_path / "a.png"])


def test_similar_without_query_images_says_so_before_loading_the_model(cifar_weights, cifar_test_dir, tmp_path,
                                                                      monkeypatch):
    from resnetkit.features import embed_to_file, similar

    out = embed_to_file("cifar_resnet20", cifar_files(cifar_test_dir, 1, CLASSES[:1]), tmp_path / "e.parquet",
                        backend="eager").path
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(similar, "load_extractor", lambda *a, **k: pytest.fail("loaded (and tuned) the model first"))
    with pytest.raises(ResnetkitError, match="No query images found"):
        find_similar(out, [tmp_path / "empty"])


def test_similar_on_a_folder_says_it_is_not_an_embedding_file(tmp_path, capsys):
    labels = tmp_path / "labels.parquet"  # a predict output: a folder of part files
    labels.mkdir()
    code, _, stderr = run_cli(capsys, "similar", str(labels), str(make_image(tmp_path / "a.png")))
    assert code == 2 and stderr.startswith(f"error: {labels} is a folder, not an embedding file")
    assert "'resnetkit predict' writes" in stderr and "'resnetkit embed MODEL IMAGES -o FILE.parquet'" in stderr


def test_hnsw_agrees_with_exact_search_on_clustered_vectors():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 64))
    vectors = (centres[rng.integers(0, 50, 5000)] + 0.3 * rng.normal(size=(5000, 64))).astype(np.float32)
    queries = vectors[:100] + 0.05 * rng.normal(size=(100, 64)).astype(np.float32)
    _, exact, _ = CosineIndex(vectors, method="exact").search(queries, 5)
    _, approx, used = CosineIndex(vectors, method="hnsw").search(queries, 5)
    assert used == "hnsw" and CosineIndex(vectors).choose(1) == "exact"
    recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approx, exact)])
    assert recall >= 0.95


@pytest.mark.slow
def test_artifact_on_onnxruntime_gives_the_eager_embeddings_and_is_searchable(cifar_weights, cifar_test_dir, tmp_path):
    from resnetkit.core.artifacts import save_artifact
    from resnetkit.run.loading import load_model

    classifier = load_model("cifar_resnet20")
    artifact = save_artifact(tmp_path / "r20.pt", classifier.module, classifier.meta)
    files = cifar_files(cifar_test_dir, 4, ("cat", "ship"))
    eager = extract_features("cifar_resnet20", files, backend="eager")  # exact fp32, to compare values
    onnx = extract_features(artifact, files, backend="onnxruntime")
    assert onnx.info["backend"] == "onnxruntime" and onnx.info["model"] == str(artifact.resolve())
    assert np.allclose(onnx.vectors, eager.vectors, atol=1e-4)
    from resnetkit.features import embed_to_file

    out = embed_to_file(artifact, files, tmp_path / "e.npy").path
    found = find_similar(out, [files[5]], k=1)
    assert found.method == "exact" and found.results[0].neighbours[0].source == str(files[5])
    artifact.rename(tmp_path / "moved.pt")
    with pytest.raises(ResnetkitError, match="was embedded with .*r20.pt, which no longer exists"):
        find_similar(out, [files[5]])


@pytest.mark.slow
def test_exported_graphs_give_their_pooled_features(cifar_weights, cifar_test_dir, tmp_path):
    from resnetkit.backends.onnxruntime import save_onnx, to_onnx
    from resnetkit.backends.openvino import save_openvino, to_openvino
    from resnetkit.run.loading import load_model

    classifier = load_model("cifar_resnet20", backend="eager")
    files = cifar_files(cifar_test_dir, 3, ("dog", "truck"))
    eager = extract_features(classifier, files).vectors
    onnx_file = save_onnx(to_onnx(classifier.module, classifier.meta), tmp_path / "r20.onnx")
    ir_file = save_openvino(to_openvino(classifier.module, classifier.meta), tmp_path / "r20.xml")
    for path, backend in ((onnx_file, "onnxruntime"), (ir_file, "openvino")):
        exported = extract_features(path, files)
        assert exported.info["backend"] == backend and exported.vectors.shape == (6, 64)
        # OpenVINO runs files without a stored precision in bf16 on CPUs that have it: compare directions
        cosine = (unit_rows(exported.vectors) * unit_rows(eager)).sum(axis=1)
        assert cosine.min() > 0.999, (backend, exported.info["precision"], cosine)
    with pytest.raises(FeaturesUnavailableError, match="gives the pooled features only. --layer needs the PyTorch model"):
        extract_features(onnx_file, files, layer="layer2")
    with pytest.raises(FeaturesUnavailableError, match="run as stored, on onnxruntime"):
        extract_features(onnx_file, files, backend="openvino")


def test_embeddings_record_what_computed_them(tmp_path):
    from resnetkit.features import embed_to_file

    image = make_image(tmp_path / "a.png", size=(40, 30))
    report = embed_to_file("cifar_resnet20", [image], tmp_path / "e.npy", pretrained=False, backend="eager",
                           device="cpu", workers=0)
    assert report.ran.label() == "eager/fp32 on CPU" and report.rows == 1 and not report.failed
    stored = load_embeddings(report.path).info
    assert (stored["backend"], stored["precision"], stored["device"]) == ("eager", "fp32", "cpu")
    assert json.loads(json.dumps(report.to_dict()))["info"] == stored  # what the JSON output says


@pytest.mark.gpu
def test_embeddings_on_the_gpu_match_the_cpu(cifar_weights, cifar_test_dir, tmp_path, capsys):
    files = cifar_files(cifar_test_dir, 20)
    cpu = extract_features("cifar_resnet20", files, backend="eager", precision="fp32", device="cpu")
    out = tmp_path / "gpu.npy"
    code, stdout, _ = run_cli(capsys, "embed", "cifar_resnet20", *map(str, files), "-o", str(out), "--device", "cuda",
                              "--json")
    assert code == 0 and json.loads(stdout)["info"]["device"] == "cuda:0"
    gpu = np.load(out)
    cosine = (unit_rows(gpu) * unit_rows(cpu.vectors)).sum(axis=1)
    assert cosine.min() > 0.99  # fp16 on the GPU
    # the nearest other image of each, as leave-one-out classification would label it: the same for nearly all
    nearest = [exact_search(unit_rows(v), unit_rows(v), k=2)[1][:, 1] for v in (cpu.vectors, gpu)]
    assert (nearest[0] == nearest[1]).mean() >= 0.95


def test_embed_to_an_unwritable_path_fails_before_any_image_is_embedded(tmp_path, monkeypatch):
    from resnetkit.core.errors import OutputError
    from resnetkit.features import store

    monkeypatch.setattr(store, "load_extractor", lambda *a, **k: pytest.fail("loaded the model first"))
    image = make_image(tmp_path / "a.png")
    with pytest.raises(OutputError, match="Cannot write /proc/vectors.parquet"):
        store.embed_to_file("cifar_resnet20", [image], "/proc/vectors.parquet")
    folder = tmp_path / "already-a-folder.parquet"
    folder.mkdir()
    with pytest.raises(OutputError, match="it is a folder"):
        store.embed_to_file("cifar_resnet20", [image], folder)
