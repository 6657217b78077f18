"""Investigation (issues 3 and 4): mean replacement. A removed channel is replaced by its mean activation
over the cluster's fit images (folded into the next layer's bias / BatchNorm mean) instead of by zero.
Oracle routing, stem after layer3.0, r_M 0.05, the bundle's own scores. Decision data = calibration
split; the report split is printed for reference only. Run: python docs/investigate_mean_replacement.py [MODEL TAP METHODS SPLITS],
e.g. python docs/investigate_mean_replacement.py cifar100_resnet56 layer3.0 dcs_std,std calib,report"""
import json
import sys

import torch

from sinf_core.bundle import Bundle
from sinf_core.experiment import open_experiment
from sinf_core.pipeline import default_bundle_dir, load_scores, score_methods
from sinf_core.stats import ActivationStats
from sinf_core.subgraph import evaluate_cluster_subgraphs, make_cluster_specs

model_name = sys.argv[1] if len(sys.argv) > 1 else "cifar100_resnet56"
tap = sys.argv[2] if len(sys.argv) > 2 else "layer3.0"
methods = sys.argv[3].split(",") if len(sys.argv) > 3 else ["dcs_lda", "mean_act", "chip", "l1"]
splits = sys.argv[4].split(",") if len(sys.argv) > 4 else ["calib", "report"]
torch.set_num_threads(1)
exp = open_experiment(model_name, runtime="cpu")
m = exp.model.eval()
b = Bundle.open(default_bundle_dir(model_name), model=model_name)
stats = ActivationStats.from_tensors(b.tensors("stats.safetensors"))
data = {"calib": exp.calib_data(), "report": exp.report_data()}
caches: dict = {s: {} for s in splits}
out: dict = {}
held = score_methods(b)
missing = [meth for meth in methods if meth not in held]
if missing:  # scores the bundle was built without (e.g. dcs_std, std): same options as the bundle's
    from sinf_core.scores import compute_all_scores

    extra = compute_all_scores(missing, m, None, exp.fit_data(), exp.hierarchy, stats,
                               {"max_per_class": 30}, rt=exp.runtime)
for meth in methods:
    scores = load_scores(b, meth) if meth in held else extra[meth]
    for r in (0.1, 0.3, 0.5, 0.7, 0.9):
        for fill in ("zero", "mean"):
            specs = make_cluster_specs(m, model_name, tap, scores, exp.hierarchy, 0.05, r,
                                       fill_stats=stats if fill == "mean" else None)
            for split in splits:
                res = evaluate_cluster_subgraphs(m, specs, data[split], exp.hierarchy, exp.runtime,
                                                 stem_cache=caches[split])
                out.setdefault(meth, {}).setdefault(fill, {}).setdefault(split, {})[r] = round(res["mean"]["accuracy"], 2)
        print(meth, r, {f: {s: out[meth][f][s][r] for s in splits} for f in ("zero", "mean")}, flush=True)
print(json.dumps(out, indent=1))
