"""Pruning: shapes consistent through residual adds, params really reduced, artifacts reload."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from resnetkit import load_model

from resnetkit.shrink import compare
from resnetkit.shrink.prune import PruningError, prune

from conftest import eager_source, make_image


@pytest.fixture(autouse=True)
def fast_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compare, "LATENCY_SECONDS", 0.05)


@pytest.mark.slow
def test_channel_pruning_resnet18_shrinks_consistently(tmp_path: Path) -> None:
    report = prune(eager_source("resnet18", pretrained=False), "channel", tmp_path / "r18.pt", amount=0.3, check_images=8)
    assert report.params_after < 0.75 * report.params_before
    assert report.macs_after <= 0.75 * report.macs_before
    assert all(after % 8 == 0 for _, after in report.widths.values())
    pruned = load_model(report.path, backend="eager")  # not auto, whose tuning of the new file took ~15 s
    module = pruned.module
    for block in (b for stage in (module.layer1, module.layer2, module.layer3, module.layer4) for b in stage):
        shortcut = block.downsample[0].out_channels if block.downsample is not None else block.conv1.in_channels
        assert block.conv2.out_channels == shortcut == block.bn2.num_features  # the residual add lines up
    assert module.fc.out_features == 1000
    assert pruned.logits(torch.randn(2, 3, 224, 224)).shape == (2, 1000)
    assert (pruned.meta.name, pruned.meta.arch, report.source) == ("r18", "resnet18", "resnet18")
    [step] = pruned.meta.provenance.recipe
    assert (step.operation, step.method, step.settings["amount"]) == ("prune", "channel", 0.3)


def test_cifar_pruning_touches_only_inner_convs(tmp_path: Path) -> None:
    report = prune(eager_source("cifar_resnet20", pretrained=False), "channel", tmp_path / "c.pt", amount=0.3, check_images=8)
    assert report.widths and all(name.endswith(".conv1") and name.startswith("layer") for name in report.widths)
    module = load_model(report.path).module
    for stage, width in ((module.layer1, 16), (module.layer2, 32), (module.layer3, 64)):
        assert all(block.conv2.out_channels == width for block in stage)  # option-A shortcuts pin these
    assert report.params_after < report.params_before


def test_l1_unstructured_is_permanent_and_honest(tmp_path: Path) -> None:
    report = prune(eager_source("cifar_resnet20", pretrained=False), "l1-unstructured", tmp_path / "l.pt", amount=0.5, check_images=8)
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    assert report.macs_after == report.macs_before
    assert report.params_after < report.params_before
    assert any("do not make dense kernels faster" in note for note in report.notes)
    assert any(note.startswith("the model has random weights") for note in report.notes)
    state = torch.load(report.path, weights_only=True)["state_dict"]
    assert not any(key.endswith(("_orig", "_mask")) for key in state)
    weights = [m.weight for m in load_model(report.path).module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.5, abs=0.01)


def test_finetune_keeps_structure_and_sparsity(tmp_path: Path) -> None:
    from resnetkit.core.zoo import CIFAR10_CLASSES

    for i, name in enumerate(CIFAR10_CLASSES):
        make_image(tmp_path / "train" / name / f"{i}.png", size=(32, 32), seed=i)
    report = prune(eager_source("cifar_resnet20", pretrained=False), "l1-unstructured", tmp_path / "l.pt", amount=0.4,
                   finetune_dir=str(tmp_path / "train"), epochs=1, workers=0, check_images=8)
    assert report.finetune is not None
    module = load_model(report.path).module
    assert sum(int((m.weight == 0).sum()) for m in module.modules() if isinstance(m, nn.Conv2d)) > 0


def test_bad_prune_requests(tmp_path: Path) -> None:
    with pytest.raises(PruningError, match="unsupported for shufflenet_v2_x1_0: its channel shuffle"):
        prune(eager_source("shufflenet_v2_x1_0", pretrained=False), "channel", tmp_path / "s.pt", check_images=8)
    with pytest.raises(PruningError, match="Unknown pruning method 'random'"):
        prune(eager_source("cifar_resnet20", pretrained=False), "random", tmp_path / "s.pt", check_images=8)
    with pytest.raises(PruningError, match="between 0 and 1"):
        prune(eager_source("cifar_resnet20", pretrained=False), "channel", tmp_path / "s.pt", amount=30, check_images=8)


def test_channel_amount_is_the_fraction_removed_and_grows_with_it(tmp_path: Path) -> None:
    import copy

    from resnetkit.core.measure import count_params
    from resnetkit.shrink.prune import channel_prune, conv_widths

    source = eager_source("cifar_resnet20", pretrained=False)
    params = []
    for amount in (0.3, 0.7, 0.9, 0.99):
        module = copy.deepcopy(source.module)
        channel_prune(module, source.meta, amount, 4)
        widths = conv_widths(module)
        params.append(count_params(module))
        # the multiple of 4 nearest to (1 - amount) of the channels, never none
        expected = [max(4, 4 * round(c * (1 - amount) / 4)) for c in (16, 32, 64)]
        assert [widths[f"layer{i}.0.conv1"] for i in (1, 2, 3)] == expected
    assert params == sorted(params, reverse=True) and len(set(params)) == 4


def test_an_amount_that_prunes_nothing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PruningError, match=r"--amount 0.02 removes no channel: .* multiples of 4, .* \(64 channels\) "
                                           r"loses some only above --amount 0.0312"):
        prune(eager_source("cifar_resnet20", pretrained=False), "channel", tmp_path / "p.pt", amount=0.02, check_images=8)
    assert not (tmp_path / "p.pt").exists()


def test_a_bad_eval_folder_or_output_stops_before_pruning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from resnetkit.core.errors import DatasetError, OutputError
    from resnetkit.shrink.prune import check_prune_request

    make_image(tmp_path / "eval" / "not-a-class" / "0.png", size=(32, 32))
    monkeypatch.setattr(sys.modules[prune.__module__], "channel_prune", lambda *a: pytest.fail("pruned first"))
    with pytest.raises(DatasetError, match="match no class"):
        prune(eager_source("cifar_resnet20", pretrained=False), "channel", tmp_path / "p.pt",
              eval_dir=str(tmp_path / "eval"), check_images=8)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OutputError, match="Cannot write"):
        check_prune_request("channel", 0.3, tmp_path / "a-file" / "p.pt")


def test_top1_says_how_many_images_it_is_on(tmp_path: Path) -> None:
    from resnetkit.core.zoo import CIFAR10_CLASSES
    from resnetkit.shrink.compare import eval_images

    for i, name in enumerate(CIFAR10_CLASSES * 2):
        make_image(tmp_path / name / f"{i}.png", size=(32, 32), seed=i)
    meta = eager_source("cifar_resnet20", pretrained=False).meta
    assert (eval_images(tmp_path, meta, 5), eval_images(tmp_path, meta, None)) == ("5 of 20 images", "all 20 images")
