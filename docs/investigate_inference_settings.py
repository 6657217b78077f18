"""Investigation (issue 6): where the wall-clock time of a network goes, with and without BatchNorm folding
and channels_last. For each setting: throughput of the whole network (batch 256) and the share of its time
spent up to each tap (the most an early exit or a subgraph after that tap can ever save). Median of 6
interleaved repetitions on random inputs (timing does not depend on the pixels).
Run: python docs/investigate_inference_settings.py [MODEL TAPS THREADS],
e.g. python docs/investigate_inference_settings.py cifar100_vgg16_bn_sinf features.17,features.20,features.24,features.27 2"""
import statistics
import sys
import time

import torch

from sinf_core.fusion import fold_batchnorm
from sinf_core.models.registry import load_model

model_name = sys.argv[1] if len(sys.argv) > 1 else "cifar100_vgg16_bn_sinf"
taps = (sys.argv[2] if len(sys.argv) > 2 else "features.17,features.20,features.24,features.27").split(",")
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
model = load_model(model_name).eval()
x = torch.randn(256, 3, 32, 32)
settings = {}
for label, fold, cl in (("as trained", False, False), ("BatchNorm folded", True, False),
                        ("channels_last", False, True), ("folded + channels_last", True, True)):
    m = fold_batchnorm(model)[0] if fold else model
    m = m.to(memory_format=torch.channels_last) if cl else m
    settings[label] = (m, x.contiguous(memory_format=torch.channels_last) if cl else x)
fns = {}
for label, (m, inp) in settings.items():
    fns[(label, None)] = lambda m=m, inp=inp: m(inp)
    for t in taps:
        fns[(label, t)] = lambda m=m, inp=inp, t=t: m.forward_stem(inp, t)
times = {k: [] for k in fns}
with torch.inference_mode():
    for f in fns.values():
        f()
    for _ in range(6):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
print(f"| {model_name} | img/s | " + " | ".join(f"stem share at {t}" for t in taps) + " |")
print("|---|---|" + "---|" * len(taps))
for label in settings:
    full = statistics.median(times[(label, None)])
    shares = " | ".join(f"{statistics.median(times[(label, t)]) / full:.2f}" for t in taps)
    print(f"| {label} | {256 / full:,.0f} | {shares} |")
