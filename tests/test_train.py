import json
import subprocess
import sys

import pytest
import torch

from conftest import make_tiny_dataset, make_tiny_resnet
from sinf_core.runtime import Runtime
from sinf_core.train import CHECKPOINT, FINAL, TrainConfig, lr_at, train


def _cfg(**kw):
    base = dict(model="tiny", epochs=3, batch_size=16, lr=0.05, bf16=False, channels_last=False,
                checkpoint_every=2, warmup_epochs=0.5)
    return TrainConfig(**{**base, **kw})


def test_training_learns_tiny_task(tmp_path):
    data = make_tiny_dataset(n_per_class=16)
    model = make_tiny_resnet()
    model.train()
    s = train(model, data, _cfg(label_smoothing=0.0), tmp_path)
    assert (tmp_path / FINAL).is_file() and s["steps"] == 3 * 6
    assert s["history"][-1]["train_loss"] < s["history"][0]["train_loss"]
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 18


def test_resume_mid_epoch_matches_uninterrupted(tmp_path):
    data = make_tiny_dataset(n_per_class=16)
    a = make_tiny_resnet(seed=1)
    train(a, data, _cfg(), tmp_path / "a")
    b = make_tiny_resnet(seed=1)
    r = train(b, data, _cfg(), tmp_path / "b", stop_after_steps=8)  # killed in epoch 2 (6 steps/epoch)
    assert r["stopped_at_step"] == 8 and (tmp_path / "b" / CHECKPOINT).is_file()
    c = make_tiny_resnet(seed=99)  # a fresh process would build a fresh model
    s = train(c, data, _cfg(), tmp_path / "b")
    assert s["resumed_from_step"] == 8
    for (k, va), vc in zip(a.state_dict().items(), c.state_dict().values()):
        assert torch.allclose(va.float(), vc.float(), atol=1e-5), k


def test_lr_schedule():
    assert lr_at(0, 100, 10, 1.0) == 0.1
    assert abs(lr_at(10, 100, 10, 1.0) - 1.0) < 1e-9
    assert lr_at(100, 100, 10, 1.0) < 1e-9


def test_publish_copies_weights_with_a_card_that_eval_reproduces(tmp_path, monkeypatch):
    from sinf_core.errors import SinfError
    from sinf_core.evaluate import accuracy_report, collect_logits
    from sinf_core.io import sha256_file
    from sinf_core.models import registry
    from sinf_core.models.registry import ModelEntry, Weights, load_model, publish_weights

    data = make_tiny_dataset(n_per_class=16)
    monkeypatch.setitem(registry.MODELS, "tiny", ModelEntry("tiny", make_tiny_resnet, weights=Weights(file="tiny.safetensors"),
                                                            protocol="heldout", description="tiny test ResNet"))
    monkeypatch.setattr(registry, "ASSETS_DIR", tmp_path / "assets")
    with pytest.raises(SinfError, match="not a finished"):
        publish_weights(tmp_path / "run", "tiny", tmp_path / "assets", None)
    model = make_tiny_resnet()
    train(model, data, _cfg(epochs=1), tmp_path / "run")

    def measure(path):
        m = load_model("tiny", checkpoint=path)
        return accuracy_report(collect_logits(m, data, rt=Runtime(device="cpu", batch_size=32)).argmax(1).numpy(), data.labels.numpy(), data.hierarchy)

    card = publish_weights(tmp_path / "run", "tiny", tmp_path / "assets", measure)
    weights = tmp_path / "assets" / "tiny.safetensors"
    assert card["sha256"] == sha256_file(weights) and card["epochs"] == 1 and card["recipe"]["lr"] == 0.05
    assert json.loads((tmp_path / "assets" / "tiny.json").read_text()) == card
    by_name = load_model("tiny")  # from assets/, no network, strict
    pred = collect_logits(by_name, data, rt=Runtime(device="cpu", batch_size=32)).argmax(1)
    assert card["test_top1"] == round(100.0 * float((pred == data.labels).double().mean()), 2)
    for k, v in model.state_dict().items():
        assert torch.equal(v.float(), by_name.state_dict()[k].float()), k
    # float16 storage: half the tensors' bytes, loaded as float32, the card measured on the stored file
    half = publish_weights(tmp_path / "run", "tiny", tmp_path / "assets", measure, dtype="float16")
    from safetensors.torch import load_file

    stored = load_file(str(weights))
    assert half["dtype"] == "float16" and all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    by_half = load_model("tiny")
    assert all(v.dtype != torch.float16 for v in by_half.state_dict().values())
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v.half().float(), by_half.state_dict()[k]), k
    with pytest.raises(SinfError, match="float32 or float16"):
        publish_weights(tmp_path / "run", "tiny", tmp_path / "assets", measure, dtype="int8")


def test_bf16_auto_follows_the_cpu():
    """bf16 defaults to 'where it is fast': on a CPU only with AMX or AVX-512 bf16 (read from /proc/cpuinfo here)."""
    from pathlib import Path

    from sinf_core.device import resolve_bf16

    info = Path("/proc/cpuinfo")
    fast = info.is_file() and any({"amx_bf16", "avx512_bf16"} & set(line.split()) for line in info.read_text().splitlines()
                                  if line.startswith("flags"))
    assert resolve_bf16(None, "cpu") is fast
    assert resolve_bf16(True, "cpu") is True and resolve_bf16(False, "cpu") is False


def test_warm_restart_from_published_weights_records_both_stages(tmp_path, monkeypatch):
    """`sinf train --init published`: stage 2 starts from the published weights (strictly loaded) and
    its card names them (sha256) and adds the stages' epochs and wall time."""
    from sinf_core.commands.train import _load_init
    from sinf_core.errors import SinfError
    from sinf_core.models import registry
    from sinf_core.models.registry import ModelEntry, Weights, publish_weights

    data = make_tiny_dataset(n_per_class=16)
    monkeypatch.setitem(registry.MODELS, "tiny", ModelEntry("tiny", make_tiny_resnet, weights=Weights(file="tiny.safetensors"),
                                                            protocol="heldout", description="tiny test ResNet"))
    monkeypatch.setattr(registry, "ASSETS_DIR", tmp_path / "assets")
    measure = lambda path: {"top1": 1.0}  # noqa: E731 (accuracy is not what this test is about)
    with pytest.raises(SinfError, match="no weights in assets|no weights file"):
        _load_init(make_tiny_resnet(), "tiny", "published")
    first = make_tiny_resnet(seed=1)
    train(first, data, _cfg(epochs=1), tmp_path / "stage1")
    card1 = publish_weights(tmp_path / "stage1", "tiny", tmp_path / "assets", measure)

    second = make_tiny_resnet(seed=2)
    init = _load_init(second, "tiny", "published")
    for k, v in first.state_dict().items():
        assert torch.equal(v, second.state_dict()[k]), k
    assert init["sha256"] == card1["sha256"] and init["card"]["epochs"] == 1
    train(second, data, _cfg(epochs=2, lr=1e-9, init=init), tmp_path / "stage2")
    for (k, v), w in zip(first.named_parameters(), second.parameters()):
        assert torch.allclose(v, w, atol=1e-6), k  # a vanishing learning rate keeps the stage-1 weights
    card2 = publish_weights(tmp_path / "stage2", "tiny", tmp_path / "assets", measure)
    assert card2["init"]["sha256"] == card1["sha256"] and card2["total_epochs"] == 3
    assert card2["total_wall_time_s"] >= card1["wall_time_s"] and card2["trained_on"]["cpu"]
    third = make_tiny_resnet(seed=3)  # a third stage counts all three
    train(third, data, _cfg(epochs=1, lr=1e-9, init=_load_init(third, "tiny", "published")), tmp_path / "stage3")
    card3 = publish_weights(tmp_path / "stage3", "tiny", tmp_path / "assets", measure)
    assert card3["init"]["card"]["init"]["sha256"] == card1["sha256"] and card3["total_epochs"] == 4
    assert card3["total_wall_time_s"] == pytest.approx(card2["total_wall_time_s"] + card3["wall_time_s"], abs=0.2)
    with pytest.raises(SinfError, match="no weights file"):
        _load_init(make_tiny_resnet(), "tiny", str(tmp_path / "missing.safetensors"))
