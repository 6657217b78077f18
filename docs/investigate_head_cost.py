"""What the exit head costs inside the fused front on OpenVINO int8, by head width: the stem alone, the front
(stem + head of 64 / 32 / 16 / 8 hidden channels) and the whole base, each one int8 graph, timed interleaved.
Random head weights (timing only); int8 calibrated on 512 calibration images.

    python docs/investigate_head_cost.py cifar100_vgg16_bn_sinf features.24
    python docs/investigate_head_cost.py cifar100_resnet56 layer3.2
"""
import sys, time, statistics, tempfile, json
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, "/work/main")
from sinf_core.experiment import open_experiment
from sinf_core.export import Front, Stem, export_module, quantize, _example
from sinf_core.fusion import prepare_for_inference
from sinf_core.router import RouteHead
from sinf_core.backends import OvSession
from sinf_core.data import normalise
model_name, tap = sys.argv[1], sys.argv[2]
exp = open_experiment(model_name)
m = exp.model.eval()
calib = exp.calib_data()
x = normalise(calib.images[:512], calib.mean, calib.std)
with torch.inference_mode():
    C = m.forward_stem(x[:2], m.unit_index(tap)).shape[1]
tmp = Path(tempfile.mkdtemp())
variants = {"stem": prepare_for_inference(Stem(m, tap), fold_bn=True)}
for hid in (64, 32, 16, 8):
    torch.manual_seed(0)
    head = RouteHead(C, 100, hidden=hid).eval()
    variants[f"front_h{hid}"] = prepare_for_inference(Front(m, tap, head), fold_bn=True)
variants["base"] = prepare_for_inference(m, fold_bn=True)
sess = {}
for name, mod in variants.items():
    outs = ["h", "logits"] if name.startswith("front") else "y"
    f32 = export_module(mod, _example(exp.input_shape), tmp / f"{name}_fp32.onnx", "x", outs)
    q = quantize(f32, tmp / f"{name}.onnx", x.numpy())
    sess[name] = OvSession(q, threads=2)
xr = np.ascontiguousarray(x[:256].numpy()); x1 = np.ascontiguousarray(x[:1].numpy())
res = {}
for label, inp, reps in (("bs256_ms", xr, 30), ("bs1_ms", x1, 300)):
    ts = {k: [] for k in sess}
    for _ in range(5):
        for s in sess.values(): s(inp)
    for _ in range(reps):
        for k, s in sess.items():
            t = time.perf_counter(); s(inp); ts[k].append(time.perf_counter() - t)
    res[label] = {k: round(1000 * statistics.median(v), 3) for k, v in ts.items()}
print(json.dumps({"model": model_name, "tap": tap, **res}))
