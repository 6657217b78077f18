"""A 2-process torchrun statistics pass equals the 1-process pass.

This file is also the worker script: ``python -m torch.distributed.run --nproc_per_node=2
tests/test_distributed.py DATA MODEL OUT`` (tiny model and data saved as safetensors in a tmp folder).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from sinf_core.runtime import Runtime
from test_stats import one_thread  # noqa: F401  (autouse fixture)

HERE = Path(__file__).resolve().parent
SAMPLE = np.array([1, 8, 33, 34, 70, 101])
INDICES = np.arange(3, 117)  # not a multiple of the world size or the batch size


def _load(data_path: str, model_path: str):
    from safetensors.torch import load_file

    from conftest import make_tiny_dataset, make_tiny_resnet
    from sinf_core.data import ImageDataset
    from sinf_core.models import load_state_dict_checked

    t = load_file(data_path)
    h = make_tiny_dataset(n_per_class=1).hierarchy
    ds = ImageDataset("tiny", t["images"], t["labels"], h, (0.3, 0.3, 0.3), (0.25, 0.25, 0.25))
    model = make_tiny_resnet(seed=123)
    load_state_dict_checked(model, load_file(model_path), model_path)
    return model.eval(), ds


def worker(data_path: str, model_path: str, out_path: str) -> None:
    from sinf_core import distributed
    from sinf_core.stats import save_stats

    device = distributed.init_distributed("cpu")
    rank, size = distributed.world()
    assert size == 2, size
    model, ds = _load(data_path, model_path)
    seen = []
    st = distributed.collect_stats_sharded(model, ds, INDICES, rt=Runtime(device=device, batch_size=8), feature_sample=SAMPLE,
                                           on_batch=seen.append)
    assert sum(seen) == len(distributed.shard_indices(INDICES, rank, size))
    if distributed.is_main():
        save_stats(out_path, st, {"world": size, "shard": sum(seen)})
    distributed.shutdown()


def test_two_process_torchrun_matches_one_process(tmp_path):
    from safetensors.torch import save_file

    from conftest import make_tiny_dataset, make_tiny_resnet
    from sinf_core.distributed import collect_stats_sharded, shard_indices
    from sinf_core.stats import collect_stats, load_stats

    ds = make_tiny_dataset(n_per_class=20, seed=3)
    model = make_tiny_resnet(seed=7)  # weights differ from the worker's seed: they must come from the file
    save_file({"images": ds.images.contiguous(), "labels": ds.labels.contiguous()}, str(tmp_path / "data.safetensors"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    out = tmp_path / "stats.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(Path(__file__)),
         str(tmp_path / "data.safetensors"), str(tmp_path / "model.safetensors"), str(out)],
        capture_output=True, text=True, timeout=600, cwd=HERE.parent,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two, meta = load_stats(out)
    assert meta["world"] == 2 and meta["shard"] == len(shard_indices(INDICES, 0, 2))

    one = collect_stats(model, ds, INDICES, rt=Runtime(device="cpu", batch_size=8), feature_sample=SAMPLE)
    assert collect_stats_sharded(model, ds, INDICES, rt=Runtime(device="cpu", batch_size=8), feature_sample=SAMPLE).to_tensors().keys() \
        == one.to_tensors().keys()  # single-process fallback of the sharded call
    t1, t2 = one.to_tensors(), two.to_tensors()
    assert t1.keys() == t2.keys()
    for k in t1:  # sums over ~100 images of float32 values: equal to 1e-5 relative
        assert torch.allclose(t1[k].double(), t2[k].double(), rtol=1e-5, atol=1e-5), k
    for name in one.layers:  # and the per-class means / zero fractions to 1e-5 absolute
        assert torch.allclose(one.class_mean(name), two.class_mean(name), rtol=0, atol=1e-5)
        assert torch.allclose(one.class_zero_fraction(name), two.class_zero_fraction(name), rtol=0, atol=1e-5)
    assert two.total == len(INDICES) and torch.equal(two.confusion, one.confusion)
    # sample rows outside INDICES (position 1) stay unseen and are left out of .sample()
    assert two.sample_seen.tolist() == np.isin(SAMPLE, INDICES).astype(float).tolist()
    assert two.sample()[0].tolist() == SAMPLE[np.isin(SAMPLE, INDICES)].tolist()


def test_shard_indices_partition():
    from sinf_core.distributed import shard_indices

    idx = np.arange(10, 33)
    parts = [shard_indices(idx, r, 3) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == idx.tolist()
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    worker(*sys.argv[1:4])
