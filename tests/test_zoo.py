"""Zoo entries: counts measured from the built models match the published ones."""

from __future__ import annotations

import io

import pytest
import torch

from resnetkit import get_spec, list_models
from resnetkit.core.cifar_resnet import CifarResNet, ZeroPadShortcut
from resnetkit.core.errors import UnknownModelError
from resnetkit.run.loading import load_model
from resnetkit.core.measure import _count_macs, count_macs, count_params, serialized_size_bytes

IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2", "shufflenet_v2_x1_0", "efficientnet_b0"]


def test_zoo_lists_every_required_model():
    names = list_models()
    assert names[:8] == IMAGENET
    assert [n for n in names if n.startswith("cifar_")] == [f"cifar_resnet{d}" for d in (20, 32, 44, 56, 110)]
    assert list_models("resnet*") == IMAGENET[:5]


@pytest.mark.parametrize("name, params_m", [("resnet18", 11.69), ("resnet34", 21.80), ("resnet50", 25.56),
                                            ("resnet101", 44.55), ("resnet152", 60.19)])
def test_resnet_params_match_published(name, params_m):
    assert round(count_params(get_spec(name).build()) / 1e6, 2) == params_m


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("resnet") and n != "resnet18" else n
                                  for n in IMAGENET])  # counting the big ResNets takes seconds each
def test_counted_macs_within_2_percent_of_torchvision_published_ops(name):
    spec = get_spec(name)
    published = spec.default_weights.metrics.gmacs
    counted = count_macs(spec.build(), (3, 224, 224)) / 1e9
    assert abs(counted - published) / published < 0.02, (counted, published)


@pytest.mark.parametrize("name", ["cifar_resnet20", "mobilenet_v2"])
def test_macs_counted_on_meta_stand_ins_equal_a_pass_on_the_real_weights(name):
    module = get_spec(name).build().eval()
    shape = (3, 32, 32) if name.startswith("cifar") else (3, 224, 224)
    on_weights = _count_macs(module, torch.zeros(1, *shape), None)
    assert count_macs(module, shape) == on_weights > 0
    assert count_macs(module.to(torch.bfloat16), shape) == on_weights  # counted in fp32 whatever the weights' dtype


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_the_counted_state_dict_size_is_what_torch_save_writes(dtype):
    module = get_spec("cifar_resnet20").build()
    state = module.state_dict()
    if dtype:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    written = io.BytesIO()
    torch.save(state, written)
    assert serialized_size_bytes(module, dtype) == len(written.getvalue()) > count_params(module) * (2 if dtype else 4)


def test_random_weights_repeat_on_every_load_and_leave_the_callers_random_state_alone():
    state = torch.random.get_rng_state()
    one, two = (load_model("cifar_resnet20", pretrained=False, backend="eager").module.state_dict() for _ in range(2))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("depth, params_m", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)])
def test_cifar_resnet_params_match_paper(depth, params_m):
    # He et al. 2016, table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M
    assert round(count_params(get_spec(f"cifar_resnet{depth}").build()) / 1e6, 2 if depth < 100 else 1) == params_m


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
    shortcut = ZeroPadShortcut(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0
    assert sum(p.numel() for p in shortcut.parameters()) == 0


def test_cifar_resnet_structure_and_output():
    model = CifarResNet(20).eval()
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 3
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    with pytest.raises(ValueError):
        CifarResNet(21)


def test_specs_carry_torchvision_metadata():
    weights = get_spec("resnet50").get_weights("imagenet1k_v2")
    assert weights.tag == "IMAGENET1K_V2"
    assert weights.preprocessing.resize_size == 232 and weights.preprocessing.crop_size == 224
    assert weights.metrics.top1 == pytest.approx(80.858)
    assert len(weights.categories) == 1000 and weights.categories[0] == "tench"
    assert weights.file_name == "resnet50-11ad3fa6.pth" and weights.hash_prefix == "11ad3fa6"
    cifar = get_spec("cifar_resnet56").default_weights
    assert cifar.sha256 == "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"
    assert get_spec("cifar_resnet110").default_weights.expected_hash == "1d1ed7c2"


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="Did you mean: resnet50"):
        get_spec("resnet05")
    with pytest.raises(UnknownModelError, match="has no weights 'V9'"):
        get_spec("resnet50").get_weights("V9")


@pytest.mark.parametrize("pattern, hint", [("nosuchmodel", ""), ("[", ""), ("cifar", " Did you mean '*cifar*'?")])
def test_models_include_matching_nothing_says_so(pattern, hint):
    from conftest import run_cli

    result = run_cli("models", "--include", pattern)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: No model name matches '{pattern}' (shell-style patterns match whole names, e.g. 'resnet*').{hint} "
        "Run 'resnetkit models' to list every name."]
