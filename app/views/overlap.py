"""Filter overlap: which channels clusters share, layer by layer, and what a cluster's subgraph keeps."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import loaders, session, studio, ui
from sinf_core import plots
from sinf_core.overlap import cluster_sets

st.title("Filter overlap")
st.markdown(
    "For each class (or cluster) and layer, take the **top q %** of the layer's channels by mean activation over "
    "its training images. Two sets overlap by their **Jaccard** index (shared / all). SINF works when the clusters "
    "rely on different channels in the late layers: there a cluster's subgraph can drop the channels only other "
    "clusters need.")

ui.style()
src = session.source()
exp = ui.load_experiment(src)
h = loaders.hierarchy(src)
cfg = studio.config(src)

with ui.guard("Cannot compute the overlap"):
    s = loaders.stats(src)
    layers = list(s.layers)
    c1, c2, c3 = st.columns([1.3, 1, 1.2])
    layer = c1.selectbox("Layer", layers, index=len(layers) - 1, key="layer")
    q = c2.slider("q: top share of channels per set (%)", 5, 50, 20, 5, key="q")
    view = c3.radio("Matrix", ["between clusters", "between classes"], horizontal=True, key="view")
    rep = loaders.overlap(src, q)

    prof = {p["layer"]: p for p in rep.profile}
    p = prof[layer]
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Channels in the layer", p["channels"], border=True)
    m2.metric(f"Top {q} % set size", p["k"], border=True)
    m3.metric("Within-cluster class pairs", "n/a" if p["within"] is None else f"{p['within']:.3f}", border=True,
              help="mean Jaccard over pairs of classes of the same cluster")
    m4.metric("Between-cluster class pairs", "n/a" if p["between"] is None else f"{p['between']:.3f}",
              delta=None if p["gap"] is None else f"gap {p['gap']:+.3f}", delta_color="off", delta_arrow="off",
              border=True,
              help=f"mean Jaccard over pairs of classes of different clusters; two random sets: {p['chance']:.3f}")

    if view == "between clusters":
        fig = plots.jaccard_heatmap(rep.cluster_jaccard[layer].numpy(), h.cluster_names,
                                    f"Jaccard overlap of the clusters' top {q} % channels at {layer}")
    else:
        order = np.argsort(np.asarray(h.cluster_of_class), kind="stable")
        mat = rep.class_jaccard[layer].numpy()[np.ix_(order, order)]
        fig = plots.jaccard_heatmap(mat, [h.class_names[c] for c in order],
                                    f"Jaccard overlap of the classes' top {q} % channels at {layer}, grouped by cluster",
                                    group_of=[h.cluster_of_class[c] for c in order], group_names=h.cluster_names)
    st.plotly_chart(fig, key="heatmap")

    tap = cfg["tap"]
    first_pruned = next((l.name for l in exp.model.prunable_layers()
                         if l.unit > exp.model.unit_index(tap)), None)
    st.plotly_chart(plots.depth_profile_figure(
        [r["layer"] for r in rep.profile], [r["within"] for r in rep.profile], [r["between"] for r in rep.profile], q,
        chance=[r["chance"] for r in rep.profile], marker=first_pruned), key="profile")
    st.caption(f"The dashed line marks {first_pruned}, the first layer the subgraphs prune (the stem ends after {tap}).")

    # ---------------------------------------------------------------- per-filter bars for one cluster
    st.subheader("One cluster's channels at this layer")
    cm = st.selectbox("Cluster", list(range(h.num_clusters)), format_func=lambda m: h.cluster_names[m], key="bars_cluster")
    values = s.group_mean(layer, h.members(cm)).numpy()
    top = cluster_sets(s, h, layer, q)[cm].numpy()
    unit = exp.model.prunable_layer(layer).unit
    kept = None
    if unit <= exp.model.unit_index(tap):
        st.caption(f"{layer} is in the shared stem (up to {tap}): every channel is kept.")
    elif ui.ensure_scores(src, "dcs", "Marking the channels DCS keeps"):
        dcs_cfg = {**cfg, "method": "dcs"}
        keep = studio.specs(src, dcs_cfg)[cm].keep.get(layer)
        if keep is not None:
            kept = np.zeros(len(values), dtype=bool)
            kept[keep] = True
        rm, rl = session.cluster_ratios(cfg, h)[cm]
        st.caption(f"Coloured bars: the channels {h.cluster_names[cm]}'s DCS subgraph keeps with r_M = {rm}, r_L = {rl} "
                   "(the Pruning page's configuration); grey: removed. Hover a bar for whether it is in the top-q set.")
    st.plotly_chart(plots.filter_bars_figure(values, kept, layer, h.cluster_names[cm], cm, top=top), key="bars")
    if kept is not None:
        both = int((kept & top).sum())
        st.caption(f"{both} of the {int(top.sum())} top-{q} % channels by mean activation are among the "
                   f"{int(kept.sum())} DCS keeps: DCS ranks channels by how well they separate the cluster's classes, "
                   "not by how strongly they fire.")
