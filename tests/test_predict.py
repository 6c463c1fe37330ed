"""resnetkit predict (local engine): inputs, part files, bad files as rows, --resume after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import make_image
from resnetkit.batch import PartStore, predict, resolve_inputs
from resnetkit.batch.engine import ModelRequest
from resnetkit.batch.inputs import InputError
from resnetkit.batch.output import OutputError
from resnetkit.cli import app
from resnetkit.core.errors import ResnetkitError
from resnetkit.run.classify import classify

RANDOM = ModelRequest("cifar_resnet20", random_weights=True, batch_size=4)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Five small images in two folders, plus one file that is not an image."""
    folder = tmp_path / "images"
    for i in range(5):
        make_image(folder / ("a" if i < 3 else "b") / f"{i}.png", size=(40, 30), seed=i)
    (folder / "b" / "broken.jpg").write_bytes(b"not an image")
    return folder


def test_inputs_folders_globs_lists_and_tables_give_each_path_once(images: Path, tmp_path: Path):
    walked = resolve_inputs([images])
    assert [Path(p).name for p in walked] == ["0.png", "1.png", "2.png", "3.png", "4.png", "broken.jpg"]
    (images / "list.txt").write_text("# two of them\na/0.png\n\nb/3.png\n")
    pq.write_table(pa.table({"file": [str(images / "a/1.png")], "other": [1]}), tmp_path / "t.parquet")
    pcsv.write_csv(pa.table({"path": ["a/2.png"]}), images / "t.csv")
    mixed = resolve_inputs([str(images / "a" / "*.png"), images / "list.txt", images / "t.csv"])
    assert mixed == [str(images / "a" / f"{i}.png") for i in range(3)] + [str(images / "b/3.png")]
    assert resolve_inputs([tmp_path / "t.parquet"], path_column="file") == [str(images / "a/1.png")]
    with pytest.raises(InputError, match="has no column 'path' \\(columns: file, other\\).*--path-column"):
        resolve_inputs([tmp_path / "t.parquet"])
    with pytest.raises(InputError, match="matches no file"):
        resolve_inputs([str(tmp_path / "nothing" / "*.jpg")])
    with pytest.raises(InputError, match="No such file or folder"):
        resolve_inputs([tmp_path / "missing.txt"])


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_file_name_that_is_not_utf8_is_a_row_like_the_others(images: Path, tmp_path: Path, fmt: str):
    latin1 = make_image(images / "a" / os.fsdecode(b"caf\xe9.png"), size=(40, 30), seed=9)
    listed = tmp_path / "list.txt"  # a list written in Latin-1, as the file system names it
    listed.write_bytes(os.fsencode(latin1) + b"\n")
    assert resolve_inputs([listed]) == [str(latin1)]
    out = tmp_path / f"labels.{fmt}"
    summary = predict(RANDOM, [images], out, top_k=1)  # one such name used to lose every row: Arrow needs UTF-8
    rows = {r["source"]: r for r in PartStore(out).read().to_pylist()}
    assert (summary.inputs, summary.written, summary.errors) == (7, 7, 1)
    row = rows[str(images / "a" / "caf\\xe9.png")]
    assert row["error"] is None and row["label"] == classify(RANDOM.load(), [latin1], top_k=1)[0].predictions[0].label
    again = predict(RANDOM, [images], out, top_k=1, resume=True)
    assert (again.already_done, again.written) == (7, 0)  # the escaped name matches its file on --resume


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_predict_writes_one_row_per_input_and_bad_files_are_rows(images: Path, tmp_path: Path, fmt: str):
    out = tmp_path / f"labels.{fmt}"
    summary = predict(RANDOM, [images, tmp_path / "gone.png"], out, top_k=3, part_size=4)
    rows = {r["source"]: r for r in PartStore(out).read().to_pylist()}
    assert (summary.inputs, summary.written, summary.errors) == (7, 7, 2)
    assert sorted(p.name for p in out.iterdir()) == ["_run.json", f"part-000000.{fmt}", f"part-000001.{fmt}"]
    expected = {r.source: r for r in classify(RANDOM.load(), [images], top_k=3)}
    for source, result in expected.items():
        row = rows[source]
        if result.error:
            assert row["label"] is None and row["predictions"] == [] and "not an image format" in row["error"]
        else:
            assert row["error"] is None and len(row["predictions"]) == 3
            assert (row["label"], row["index"]) == (result.predictions[0].label, result.predictions[0].index)
            assert row["score"] == pytest.approx(result.predictions[0].score, abs=1e-6)
    assert rows[str(tmp_path / "gone.png")]["error"] == f"No such file: {tmp_path / 'gone.png'}"


@pytest.mark.slow
def test_resume_skips_what_the_output_holds_and_refuses_to_mix_runs(images: Path, tmp_path: Path):
    out = tmp_path / "labels.parquet"
    predict(RANDOM, [images / "a"], out, part_size=2)
    with pytest.raises(OutputError, match="already holds 2 part file\\(s\\). Add --resume"):  # 2 rows, then 1
        predict(RANDOM, [images], out)
    (out / ".part-000002.parquet.x.partial").write_bytes(b"half a part")  # as a kill -9 mid-write leaves it
    summary = predict(RANDOM, [images], out, resume=True)
    assert (summary.already_done, summary.written) == (3, 3)
    sources = PartStore(out).read().column("source").to_pylist()
    assert sorted(sources) == sorted(resolve_inputs([images])) and not list(out.glob(".*.partial"))
    with pytest.raises(OutputError, match="written by another run"):
        predict(ModelRequest("cifar_resnet32", random_weights=True), [images], out, resume=True)


def test_the_request_carries_its_device_word_and_the_summary_names_what_ran(images: Path, tmp_path: Path):
    import pickle

    request = ModelRequest("cifar_resnet20", random_weights=True, backend="eager", batch_size=4, device="cpu")
    assert pickle.loads(pickle.dumps(request)) == request  # as Ray hands it to its actors, which resolve the word
    summary = predict(request, [images / "a"], tmp_path / "o.jsonl", workers=0)
    assert summary.engine == "local, eager/fp32 on CPU" and summary.written == 3
    assert summary.to_dict()["engine"] == summary.engine
    assert {k: summary.to_dict()["ran"][k] for k in ("backend", "precision", "device")} == \
        {"backend": "eager", "precision": "fp32", "device": "cpu"}


def test_parts_hold_part_size_rows_and_the_summary_counts_labelled_images(images: Path, tmp_path: Path):
    request = ModelRequest("cifar_resnet20", random_weights=True, backend="eager", batch_size=4, device="cpu")
    out = tmp_path / "o.jsonl"
    summary = predict(request, [images], out, part_size=4, workers=0)  # batches of 4 rows from the engine
    assert [len(p.read_text().splitlines()) for p in PartStore(out).parts()] == [4, 2]
    assert (summary.written, summary.errors, summary.labelled) == (6, 1, 5)
    assert summary.line().startswith("5 images labelled in ") and ", 1 unreadable;" in summary.line()
    assert "s of wall time, loading the model included (" in summary.line()  # its images/s is not the model's
    assert summary.line().endswith("; random weights: the labels are meaningless") and summary.to_dict()["random_weights"]
    two = predict(request, [images], tmp_path / "two.jsonl", part_size=5, workers=0)
    assert [len(p.read_text().splitlines()) for p in PartStore(tmp_path / "two.jsonl").parts()] == [5, 1]
    assert two.written == 6


def test_a_run_that_fails_before_its_first_part_leaves_no_output_folder(images: Path, tmp_path: Path):
    def unreachable(*args):
        raise ResnetkitError("Could not join the Ray cluster at 127.0.0.1:1")

    with pytest.raises(ResnetkitError, match="Could not join"):
        predict(RANDOM, [images], tmp_path / "o.parquet", engine=unreachable)
    assert not (tmp_path / "o.parquet").exists()


def test_cli_errors_are_one_clear_line(images: Path, tmp_path: Path, capsys):
    from resnetkit.cli import main

    for args, message in [
        (["predict", "resnet_51", str(images), "-o", str(tmp_path / "x")], "Unknown model 'resnet_51'"),
        (["predict", "cifar_resnet20", str(images), "-o", str(tmp_path / "x.xlsx")], "Unknown output format 'xlsx'"),
        (["predict", "cifar_resnet20", str(images), "-o", str(tmp_path / "x"), "--concurrency", "3"],
         "--concurrency 3 sets the model actors of --ray: add --ray"),
    ]:
        sys.argv = ["resnetkit", *args]
        with pytest.raises(SystemExit) as exit_info:
            main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_json_summary_and_exit_code_1_for_unreadable_files(images: Path, tmp_path: Path):
    import json

    def run(*inputs: Path) -> tuple[int, dict]:
        result = CliRunner().invoke(app, ["predict", "cifar_resnet20", "--random-weights", *map(str, inputs), "-o",
                                          str(tmp_path / f"o{len(inputs)}.jsonl"), "--json"])
        return result.exit_code, json.loads(result.stdout)

    code, summary = run(images)
    assert code == 1  # as classify and embed: every row is written, and the exit code says some files failed
    assert (summary["written"], summary["errors"], summary["format"]) == (6, 1, "jsonl")
    code, summary = run(images / "a", images / "b" / "3.png")
    assert code == 0 and (summary["written"], summary["errors"]) == (4, 0)


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_labels_every_image_exactly_once(cifar_weights, cifar_test_dir, tmp_path: Path):
    paths = resolve_inputs([cifar_test_dir])[:3000]
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(paths))
    out = tmp_path / "labels.parquet"
    command = [sys.executable, "-m", "resnetkit", "predict", "cifar_resnet20", str(listing), "-o", str(out),
               "--part-size", "250", "--batch-size", "50", "--backend", "eager"]  # auto's tuning is tested apart
    process = subprocess.Popen(command, env=os.environ, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(out.glob("part-*"))) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = PartStore(out).read().num_rows
    assert 0 < before < 3000
    subprocess.run(command + ["--resume"], env=os.environ, check=True, stderr=subprocess.DEVNULL, timeout=900)
    sources = PartStore(out).read().column("source").to_pylist()
    assert len(sources) == 3000 and set(sources) == set(paths)
