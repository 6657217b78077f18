"""Investigation (issue 6): exit and route heads trained on the labels only or distilled from the base model
(TapHeads.distill). For each distill weight: exit- and route-head top-1 on calibration, the exit head's
agreement with the base model, and the share of calibration images that can exit while the combined
accuracy (exit where confident, else the base model) stays within 1 / 1.5 / 2 points of the base.
Calibration split only (it is what operating points are chosen on).
Run: python docs/investigate_head_distillation.py [MODEL TAPS DISTILLS],
e.g. python docs/investigate_head_distillation.py cifar100_vgg16_bn_sinf features.17,features.20,features.24 0,0.5,0.9"""
import sys
import time

import numpy as np
import torch

from sinf_core.bench import _head_outputs, stem_features
from sinf_core.experiment import open_experiment
from sinf_core.router import ExitPredictor, RoutePredictor, fit_heads

model_name = sys.argv[1] if len(sys.argv) > 1 else "cifar100_vgg16_bn_sinf"
taps = (sys.argv[2] if len(sys.argv) > 2 else "features.17,features.20,features.24").split(",")
distills = [float(v) for v in (sys.argv[3] if len(sys.argv) > 3 else "0,0.5,0.9").split(",")]
torch.set_num_threads(2)
exp = open_experiment(model_name)
calib = exp.calib_data()
feats, base_pred = stem_features(exp.model.eval(), calib, taps, exp.runtime.with_(channels_last=False))
y = calib.labels
base_acc = 100.0 * float((base_pred == y).double().mean())
print(f"base model, calibration top-1 {base_acc:.2f} %")
for d in distills:
    t0 = time.time()
    exit_heads = ExitPredictor(taps=taps, max_fit_samples=50000, epochs=8, distill=d)
    route_heads = RoutePredictor(taps=taps, max_fit_samples=50000, epochs=8, distill=d)
    fit_heads([exit_heads, route_heads], exp.model, exp.fit_data(), calib)
    for t in taps:
        conf, pred = _head_outputs(exit_heads.heads_[t], feats[t], exp.runtime)
        shares = []
        for loss in (1.0, 1.5, 2.0):
            best = 0.0
            for tau in np.linspace(0.05, 1.0, 96):
                exits = conf >= tau
                acc = 100.0 * float((torch.where(exits, pred, base_pred) == y).double().mean())
                if acc >= base_acc - loss:
                    best = max(best, float(exits.double().mean()))
            shares.append(f"{100 * best:.0f} %")
        agree = 100.0 * float((pred == base_pred).double().mean())
        print(f"distill {d} {t}: exit head {100 * exit_heads.calib_accuracy_[t]:.2f} %, agreement with base "
              f"{agree:.2f} %, route head {100 * route_heads.calib_accuracy_[t]:.2f} %; can exit within "
              f"1 / 1.5 / 2 points: {' / '.join(shares)} ({time.time() - t0:.0f} s)")
