"""Investigation (issue 3): does DCS close the gap to mean activation with more fit images per class?
Decision data = calibration split; report split printed for reference only."""
import json, sys, time
import torch
torch.set_num_threads(1)
from sinf_core.experiment import open_experiment
from sinf_core.bundle import Bundle
from sinf_core.pipeline import default_bundle_dir
from sinf_core.stats import ActivationStats
from sinf_core.scores import compute_all_scores
from sinf_core.subgraph import make_cluster_specs, evaluate_cluster_subgraphs
exp = open_experiment("cifar100_resnet56", runtime="cpu")
m = exp.model.eval()
b = Bundle.open(default_bundle_dir("cifar100_resnet56"), model="cifar100_resnet56")
stats = ActivationStats.from_tensors(b.tensors("stats.safetensors"))
t0 = time.time()
tables = compute_all_scores(["dcs_lda", "mean_act"], m, None, exp.fit_data(), exp.hierarchy, stats, {"max_per_class": 100}, rt=exp.runtime)
print("scores", round(time.time() - t0), flush=True)
caches = {"calib": {}, "report": {}}
out = {}
for meth, tab in tables.items():
    for r in (0.1, 0.3, 0.5, 0.7, 0.9):
        specs = make_cluster_specs(m, "cifar100_resnet56", "layer3.0", tab, exp.hierarchy, 0.05, r)
        for split, data in (("calib", exp.calib_data()), ("report", exp.report_data())):
            res = evaluate_cluster_subgraphs(m, specs, data, exp.hierarchy, exp.runtime, stem_cache=caches[split])
            out.setdefault(meth, {}).setdefault(split, {})[r] = round(res["mean"]["accuracy"], 2)
        print(meth, r, out[meth]["calib"][r], out[meth]["report"][r], flush=True)
print(json.dumps(out, indent=1))
