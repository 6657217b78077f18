"""Route predictor and early-exit heads on the stem's output (METHOD.md sections 7 and 10).

A *head* is a small classifier on the features at a tap (the output of one unit of a ``SinfModel``):
3x3 conv (to ``hidden`` = 64 channels, no bias) + BN + ReLU + global average pool + linear to K
outputs. The route predictor's heads predict the cluster; the exit heads predict the fine class.

Training keeps the base network frozen. One stem pass (to the deepest candidate tap) feeds the heads
at every candidate tap at once; by default the stem features of a stratified subsample of the fit
split (one random crop/flip per image) are cached as bf16, and the heads train for a few epochs on
that cache (bf16 autocast, channels_last). Each head is then temperature-scaled on the calibration
split (LBFGS on the NLL of log T), and the attachment point is the earliest candidate tap whose
calibration accuracy reaches ``accuracy_target`` (METHOD.md section 0: the choice looks at model
outputs, so it uses the calibration split only).

Fitted predictors follow scikit-learn conventions (parameters in the constructor, ``fit`` returns
self, learned attributes end in ``_``) and save as safetensors + a JSON config, never pickle.

The package: ``heads`` (the head module, the stem pass to the taps, temperature scaling, the choice of
the attachment point), ``training`` (the shared loop that trains every predictor's heads on one stem
pass) and ``predictors`` (``TapHeads`` / ``RoutePredictor`` / ``ExitPredictor``: fitted, saved and loaded
scikit-learn style). Everything is importable from ``sinf_core.router`` as before.
"""

from .heads import (FORMAT, FORMAT_VERSION, TARGETS, ProgressFn, RouteHead, choose_tap, default_taps,  # noqa: F401
                    fit_temperature, forward_taps, nll)
from .predictors import ExitPredictor, RoutePredictor, TapHeads, fit_router_and_exit  # noqa: F401
from .training import _collect_head_logits, _head_loss, _HeadTrainer, _Job, _subsample, fit_heads  # noqa: F401
