"""Fused front vs separate stem + head on a runtime: the bundle's point for MODE exported once (into the
bundle's runtime/front_<mode>_<precision>/), run with and without its front piece (same decisions, checked),
paired throughput against the exported base over 2,048 report images and batch-1 latency.

    python docs/investigate_fused_front.py cifar100_vgg16_bn_sinf exit openvino int8
"""
import sys, json, time
import torch, numpy as np
sys.path.insert(0, "/work/main")
from sinf_core.experiment import open_experiment
from sinf_core.bundle import Bundle
from sinf_core.pipeline import default_bundle_dir
from sinf_core.export import routed_model_from_bundle, export_once, calibration_set
from sinf_core.backends import open_runtime
from sinf_core.data import normalise
from sinf_core.timing import interleaved_throughput, paired_ratios
import statistics
model, mode, backend, prec = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
b = Bundle.open(default_bundle_dir(model), model=model)
exp = open_experiment(model)
rm = routed_model_from_bundle(exp, b, mode)
folder = b.root / "runtime" / f"front_{mode}_{prec}"
t = time.perf_counter()
export_once(rm, folder, prec, calibration_set(exp) if prec == "int8" else None)
print("export", round(time.perf_counter() - t, 1), "s")
T = torch.get_num_threads()
fused = open_runtime(folder, backend, prec, threads=T, mode=mode)
plain = open_runtime(folder, backend, prec, threads=T, mode=mode, fused=False)
rep = exp.report_data()
x = normalise(rep.images[:2048], rep.mean, rep.std)
yr = rep.labels[:2048]
assert torch.equal(fused.run_pool(x, 256).pred, plain.run_pool(x, 256).pred)
fns = {"base": lambda z: fused.base_pool(z, 256), "fused": lambda z: fused.run_pool(z, 256).pred,
       "plain": lambda z: plain.run_pool(z, 256).pred}
tp = interleaved_throughput(fns, x, 6, 1, torch.device("cpu"))
out = {k: round(statistics.median(paired_ratios(tp, k)), 3) for k in ("fused", "plain")}
x1 = x[:1]
lat = {}
for k, f in (("base", lambda z: fused.base_pool(z, None)), ("fused", fused.run), ("plain", plain.run)):
    for _ in range(20): f(x1)
    ts = []
    for _ in range(200):
        t = time.perf_counter(); f(x1); ts.append(time.perf_counter() - t)
    lat[k] = round(1000 * statistics.median(ts), 3)
print(json.dumps({"model": model, "mode": mode, "backend": backend, "precision": prec, "threads": T,
                  "throughput_vs_base": out, "bs1_ms": lat}))
