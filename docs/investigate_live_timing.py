"""Does the Live page's batch run tell the truth? One run, side by side on this machine:

1. the benchmark's own harness (``timing.interleaved_throughput`` of ``run_pool`` over 2,048 calibration
   images, batch 256, 6 rounds, paired ratios: what ``sinf bench`` measures) for the bundle's exit point;
2. the Live page itself (Streamlit's AppTest drives the real page): 2,000 report images at batch 256, at the
   benchmark's exit point, and in SINF mode with gamma = 1 and tau = 1 (everything falls back);
3. the benchmark's harness again (so load that drifts shows up as a difference between 1 and 3).

    python docs/investigate_live_timing.py cifar100_vgg16_bn_sinf [cifar100_resnet56 ...]

Prints one JSON object per model (ratios are base time / SINF time: > 1 is faster).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def bench_harness(model_name: str, bundle_dir: Path) -> dict:
    from sinf_core.bundle import Bundle
    from sinf_core.data import normalise
    from sinf_core.engine import SemanticInference
    from sinf_core.experiment import open_experiment
    from sinf_core.fusion import prepare_for_inference
    from sinf_core.timing import interleaved_throughput, paired_ratios
    from sinf_core.tuning import STUDIO_HEADS, STUDIO_JSON, heads_from_tensors

    exp = open_experiment(model_name, runtime="cpu")
    b = Bundle.open(bundle_dir, model=model_name)
    bench, info = b.json("bench.json"), b.json(STUDIO_JSON)
    heads = heads_from_tensors(b.tensors(STUDIO_HEADS), info["heads"], STUDIO_HEADS)
    p = bench["exit"]["operating_point"]
    ready = lambda m: prepare_for_inference(m, fold_bn=True, channels_last=True)  # noqa: E731
    base = ready(exp.model)
    eng = SemanticInference(base, None, None, ready(heads["exit"][p["tap"]]), tap=p["tap"], mode="exit",
                            tau=p["tau"], rt=exp.runtime)
    calib = exp.calib_data()
    pool = normalise(calib.images[:2048], calib.mean, calib.std)

    def base_pool(x):
        return torch.cat([base(c.contiguous(memory_format=torch.channels_last)).argmax(1) for c in x.split(256)])

    tp = interleaved_throughput({"base": base_pool, "exit": lambda x: eng.run_pool(x, 256).pred}, pool, reps=6)
    r = paired_ratios(tp, "exit")
    return {"point": p, "ratio": statistics.median(r), "ratios": [round(v, 4) for v in r],
            "base_ips": tp["base"]["ips"], "bench_json_ratio": bench["exit"].get("throughput_ratio")}


def live_page(model_name: str) -> dict:
    from streamlit.testing.v1 import AppTest

    os.environ["SINF_APP_MODEL"] = model_name
    at = AppTest.from_file(str(REPO / "app" / "streamlit_app.py"), default_timeout=900)
    at.run()
    at.switch_page(str(REPO / "app" / "views" / "live.py"))
    at.run()

    def widget(kind, prefix):
        return next(w for w in getattr(at, kind) if w.label.startswith(prefix))

    def run_batch() -> dict:
        at.slider(key="batch_n").set_value(2000)
        at.select_slider(key="batch_bs").set_value(256)
        t0 = time.perf_counter()
        at.button(key="batch_run").click().run()
        assert not at.exception, [e.value for e in at.exception]
        res = at.session_state["batch_result"]
        return {"ratio": res["ratio"], "base_ips": res["base_ips"], "sinf_ips": res["sinf_ips"],
                "top1": [res["base_top1"], res["sinf_top1"]], "counts": res["counts"], "mode": res["mode"],
                "gamma": res["gamma"], "tau": res["tau"], "tap": res["tap"], "seconds": round(time.perf_counter() - t0, 1)}

    widget("radio", "Mode").set_value("exit").run()
    out = {"exit_point": run_batch()}
    widget("radio", "Mode").set_value("sinf").run()
    widget("slider", "gamma").set_value(1.0).run()
    out["all_fallback"] = run_batch()
    return out


def main(models: list[str]) -> None:
    from sinf_core.device import cpu_model
    from sinf_core.pipeline import default_bundle_dir

    torch.set_num_threads(2)
    for m in models:
        folder = default_bundle_dir(m)
        before = bench_harness(m, folder)
        live = live_page(m)
        after = bench_harness(m, folder)
        print(json.dumps({"model": m, "cpu": cpu_model(), "loadavg": os.getloadavg(), "bench_harness_before": before,
                          "live": live, "bench_harness_after": after}, indent=1, default=str))


if __name__ == "__main__":
    main(sys.argv[1:] or ["cifar100_vgg16_bn_sinf", "cifar100_resnet56"])
