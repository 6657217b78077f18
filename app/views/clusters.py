"""Clusters: the classes on a 2-D map coloured by cluster, membership, and data-driven alternatives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import state, ui
from sinf_core import plots

st.title("Clusters")
st.markdown(
    "SINF builds one subgraph per **cluster** of classes. By default the clusters are the data set's own hierarchy "
    "(CIFAR-100: 20 superclasses of 5 classes). Data-driven alternatives group the classes by what the model "
    "sees: **Ward** clustering of the class prototypes (mean penultimate feature per class, fit split) or "
    "**spectral** clustering of the symmetrised confusion matrix (calibration split). The map is a UMAP of the "
    "class prototypes; the agreement with the hierarchy is the adjusted Rand index (1 = identical, 0 = chance).")

ui.style()
src = state.source()
exp = ui.load_experiment(src)
h = state.hierarchy(src)

c1, c2 = st.columns([2, 1])
method = c1.radio("Clusters", list(state.CLUSTER_METHODS), format_func=state.CLUSTER_METHODS.get, horizontal=True,
                  key="cluster_method")
k = c2.slider("K (data-driven clusters)", 2, max(2, min(50, h.num_classes - 1)), min(h.num_clusters, h.num_classes - 1),
              key="cluster_k", disabled=method == "hierarchy")

with ui.guard("Cannot cluster the classes"):
    cl = state.clustering(src, method, k)
    found = cl.hierarchy
    m1, m2, m3 = st.columns(3)
    m1.metric("Clusters", found.num_clusters, border=True)
    m2.metric("Agreement with the hierarchy (ARI)", "1.000 (itself)" if cl.ari is None else f"{cl.ari:.3f}", border=True,
              help="adjusted Rand index between this partition and the data set's hierarchy")
    sizes = [len(found.members(m)) for m in range(found.num_clusters)]
    m3.metric("Classes per cluster (min / max)", f"{min(sizes)} / {max(sizes)}", border=True)

    mp = state.maps(src)
    cof = np.asarray(found.cluster_of_class)
    hover = [f"{name} (hierarchy: {h.cluster_names[h.cluster_of_class[c]]})" for c, name in enumerate(h.class_names)]
    show_samples = st.toggle("Also show a sample of images", value=False, key="show_samples",
                             disabled="samples" not in mp)
    if show_samples and "samples" in mp:
        lab = np.asarray(mp["sample_labels"], dtype=int)
        st.plotly_chart(plots.cluster_map_figure(
            mp["samples"], cof[lab], found.cluster_names, [h.class_names[c] for c in lab],
            f"UMAP of {len(lab)} images' penultimate features, coloured by cluster", marker_size=5, opacity=0.7),
            key="sample_map")
    st.plotly_chart(plots.cluster_map_figure(
        mp["classes"], cof, found.cluster_names, hover,
        f"UMAP of the {h.num_classes} class prototypes, coloured by {state.CLUSTER_METHODS[method]}"), key="class_map")

    rows = []
    for m, name in enumerate(found.cluster_names):
        members = found.members(m)
        ref = np.bincount(np.asarray(h.cluster_of_class)[members], minlength=h.num_clusters)
        rows.append({"cluster": name, "size": len(members), "classes": ", ".join(h.class_names[c] for c in members),
                     "mostly from": h.cluster_names[int(ref.argmax())], "purity": ref.max() / len(members)})
    table = pd.DataFrame(rows)
    if method == "hierarchy":
        table = table.drop(columns=["mostly from", "purity"])
    st.dataframe(table, hide_index=True, key="membership", column_config={
        "purity": st.column_config.ProgressColumn("share of its largest hierarchy cluster", min_value=0.0,
                                                  max_value=1.0, format="percent")})
    st.plotly_chart(plots.cluster_sizes_figure(sizes, found.cluster_names, "Classes per cluster"), key="sizes")

    st.subheader("What a cluster looks like")
    pick = st.selectbox("Cluster", list(range(found.num_clusters)), format_func=lambda m: found.cluster_names[m],
                        key="example_cluster")
    imgs, labels = state.example_images(src, found.members(pick), per_class=3)
    if len(imgs):
        st.markdown(ui.cluster_chip(found.cluster_names[pick], pick) + " training images", unsafe_allow_html=True)
        st.image([im.permute(1, 2, 0).numpy() for im in imgs], caption=[h.class_names[c] for c in labels], width=72)
