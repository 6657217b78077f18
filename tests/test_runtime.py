"""The one object for how things run (``sinf_core.runtime.Runtime``): its flags come from its fields,
its defaults are the library's, and what it runs equals the same work done by hand."""

import argparse
import dataclasses

import pytest
import torch

from conftest import make_tiny_dataset, make_tiny_resnet
from sinf_core.device import bf16_is_fast
from sinf_core.errors import SinfError
from sinf_core.runtime import RUNTIME_OPTIONS, Runtime, add_runtime_options, runtime_from_args


def _parse(argv, names=RUNTIME_OPTIONS):
    p = argparse.ArgumentParser()
    add_runtime_options(p, names)
    return p.parse_args(argv)


def test_flags_are_derived_from_the_fields_and_keep_their_defaults():
    rt = runtime_from_args(_parse([]))
    for f in dataclasses.fields(Runtime):
        if f.name in ("device", "on_progress"):
            continue
        assert getattr(rt, f.name) == f.default, f.name
    rt = runtime_from_args(_parse(["--device", "cpu", "--bf16", "--no-channels-last", "--batch-size", "7",
                                   "--threads", "1"]))
    assert (rt.device, rt.bf16, rt.channels_last, rt.batch_size, rt.threads) == (torch.device("cpu"), True, False, 7, 1)
    # a command with only some of the flags: the others keep the defaults
    rt = runtime_from_args(_parse(["--batch-size", "3"], ("batch_size",)))
    assert (rt.batch_size, rt.channels_last, rt.bf16) == (3, Runtime.channels_last, Runtime.bf16)
    # the help shows the field's default, written once in the field
    help_text = argparse.ArgumentParser()
    add_runtime_options(help_text, ("batch_size",))
    assert f"(default {Runtime.batch_size})" in help_text.format_help()


def test_bad_values_are_clear_errors():
    with pytest.raises(SinfError, match="batch size"):
        Runtime(device="cpu", batch_size=0)
    with pytest.raises(SinfError, match="batch size"):
        Runtime(device="cpu", batch_size=True)
    with pytest.raises(SinfError, match="threads"):
        Runtime(device="cpu", threads=0)
    with pytest.raises(SinfError, match="unknown device"):
        Runtime.create("tpu:9")


def test_auto_bf16_and_the_module_device():
    assert Runtime.create("cpu", bf16=None).bf16 == bf16_is_fast("cpu")
    assert Runtime.create("cpu").bf16 is False
    m = make_tiny_resnet()
    assert Runtime.resolve(None, m).device == torch.device("cpu")
    rt = Runtime(device="cpu", batch_size=5)
    assert Runtime.resolve(rt, m) is rt
    assert rt.with_(bf16=True) == Runtime(device="cpu", batch_size=5, bf16=True)
    assert rt.with_(on_progress=print) == rt  # progress is not part of its identity


def test_running_on_it_equals_the_work_done_by_hand():
    model = make_tiny_resnet().eval()
    ds = make_tiny_dataset(n_per_class=4)
    from sinf_core.data import normalise
    from sinf_core.evaluate import collect_logits

    x = normalise(ds.images, ds.mean, ds.std)
    with torch.no_grad():
        ref = model(x)
    for rt in (Runtime(device="cpu", batch_size=5), Runtime(device="cpu", batch_size=100, channels_last=False)):
        torch.testing.assert_close(collect_logits(model, ds, rt=rt), ref, rtol=1e-5, atol=1e-5)
    rt = Runtime(device="cpu", channels_last=True)
    ready = rt.ready(model, fold_bn=True)
    assert ready is not model and rt.inputs(x).is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(ready(rt.inputs(x)), ref, rtol=1e-4, atol=1e-4)
    assert [(s.start, s.stop) for s in Runtime(device="cpu", batch_size=4).batches(10)] == [(0, 4), (4, 8), (8, 10)]


def test_threads_and_progress():
    before = torch.get_num_threads()
    with Runtime(device="cpu", threads=1).applied():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    seen = []
    rt = Runtime(device="cpu", on_progress=lambda *a: seen.append(a))
    count = rt.counter("pass", 10)
    count(4)
    count(6)
    assert seen == [("pass", 4, 10), ("pass", 10, 10)]
