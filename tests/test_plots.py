"""Figure builders of sinf_core.plots: distinct cluster colours, score labels in the trade-off legend, axis
titles and tick labels of the overlap matrix."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sinf_core import plots


# ------------------------------------------------------------------ colour science (independent of plots)
def srgb_to_lab(hex_colour: str) -> tuple[float, float, float]:
    """CIELAB (D65) of an sRGB ``#RRGGBB`` colour."""
    h = hex_colour.lstrip("#")
    rgb = np.array([int(h[i:i + 2], 16) for i in (0, 2, 4)]) / 255.0
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = m @ lin / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def delta_e76(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b)))


def delta_e2000(lab1, lab2) -> float:
    """CIEDE2000 (Sharma, Wu and Dalal 2005)."""
    L1, a1, b1 = lab1
    L2, a2, b2 = lab2
    cb = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(cb ** 7 / (cb ** 7 + 25 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = math.hypot(a1p, b1), math.hypot(a2p, b2)
    h1p = math.degrees(math.atan2(b1, a1p)) % 360 if c1p else 0.0
    h2p = math.degrees(math.atan2(b2, a2p)) % 360 if c2p else 0.0
    dl, dc = L2 - L1, c2p - c1p
    dh = 0.0 if c1p * c2p == 0 else (h2p - h1p + 180) % 360 - 180
    dH = 2 * math.sqrt(c1p * c2p) * math.sin(math.radians(dh / 2))
    lb, cbp = (L1 + L2) / 2, (c1p + c2p) / 2
    if c1p * c2p == 0:
        hb = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        hb = (h1p + h2p) / 2
    else:
        hb = (h1p + h2p + 360) / 2 if h1p + h2p < 360 else (h1p + h2p - 360) / 2
    t = (1 - 0.17 * math.cos(math.radians(hb - 30)) + 0.24 * math.cos(math.radians(2 * hb))
         + 0.32 * math.cos(math.radians(3 * hb + 6)) - 0.20 * math.cos(math.radians(4 * hb - 63)))
    rc = 2 * math.sqrt(cbp ** 7 / (cbp ** 7 + 25 ** 7))
    sl = 1 + 0.015 * (lb - 50) ** 2 / math.sqrt(20 + (lb - 50) ** 2)
    sc, sh = 1 + 0.045 * cbp, 1 + 0.015 * cbp * t
    rt = -math.sin(math.radians(60 * math.exp(-(((hb - 275) / 25) ** 2)))) * rc
    return math.sqrt((dl / sl) ** 2 + (dc / sc) ** 2 + (dH / sh) ** 2 + rt * (dc / sc) * (dH / sh))


def test_colour_science_matches_references():
    # sRGB primaries in CIELAB (D65), and pairs 1, 7 and 17 of Sharma et al.'s CIEDE2000 test data
    assert srgb_to_lab("#FF0000") == pytest.approx((53.24, 80.09, 67.20), abs=0.01)
    assert srgb_to_lab("#FFFFFF") == pytest.approx((100.0, 0.0, 0.0), abs=0.01)
    assert delta_e2000((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485)) == pytest.approx(2.0425, abs=1e-4)
    assert delta_e2000((50.0, 0.0, 0.0), (50.0, -1.0, 2.0)) == pytest.approx(2.3669, abs=1e-4)
    assert delta_e2000((50.0, 2.5, 0.0), (73.0, 25.0, -18.0)) == pytest.approx(27.1492, abs=1e-4)


# --------------------------------------------------------------------------------- cluster colours
MIN_DE2000 = 15.0  # clearly distinct at a glance (2.3 is a just noticeable difference)
MIN_DE76 = 20.0


def test_the_20_cluster_colours_are_clearly_distinct():
    colours = plots.cluster_colors(20)
    assert len(colours) == 20 and colours == [plots.cluster_color(m) for m in range(20)]
    labs = {c: srgb_to_lab(c) for c in colours}
    worst = min(((delta_e2000(labs[a], labs[b]), a, b) for a, b in itertools.combinations(colours, 2)))
    assert worst[0] >= MIN_DE2000, worst
    worst76 = min(((delta_e76(labs[a], labs[b]), a, b) for a, b in itertools.combinations(colours, 2)))
    assert worst76[0] >= MIN_DE76, worst76
    # visible on the white plot background, and never mistaken for the grey of removed channels
    white, removed = srgb_to_lab("#FFFFFF"), srgb_to_lab("#C8C8C8")
    assert min(delta_e2000(labs[c], white) for c in colours) >= 20
    assert min(delta_e2000(labs[c], removed) for c in colours) >= 20


def test_fewer_clusters_take_the_most_distinct_colours_and_more_cycle():
    assert plots.cluster_colors(3) == plots.cluster_colors(20)[:3]
    big = plots.cluster_colors(100)
    n = len(set(big))
    assert n >= 40 and big[n] == big[0]  # cycles after the palette


@pytest.mark.parametrize("background, text", [("#FFFFFF", "#000000"), ("#000000", "#FFFFFF"), ("#FEAF16", "#000000"),
                                              ("#800000", "#FFFFFF"), ("#2E91E5", "#000000")])
def test_chip_text_colour_contrasts(background, text):
    assert plots.text_color(background) == text


def test_every_cluster_colour_has_readable_chip_text():
    def luminance(h):
        c = np.array([int(h.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4)]) / 255.0
        return float(np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4) @ [0.2126, 0.7152, 0.0722])

    for c in plots.cluster_colors(40):
        lo, hi = sorted((luminance(c), luminance(plots.text_color(c))))
        assert (hi + 0.05) / (lo + 0.05) >= 4.5, c  # WCAG AA for text


# ------------------------------------------------------------------------------- trade-off legend
ROWS = [{"method": m, "flops": f, "mean_acc": a, "r_M": 0.05, "r_L": 0.5}
        for m, f, a in (("bn_gamma", 1e6, 50.0), ("dcs", 2e6, 60.0), ("l1", 1.5e6, 55.0), ("newscore", 2e6, 58.0),
                        ("dcs", 1e6, 55.0))]


def test_tradeoff_legend_shows_the_score_labels():
    from sinf_core.scores import SCORE_LABELS, SCORES

    assert set(SCORES) <= set(SCORE_LABELS)  # every score has a label
    fig = plots.tradeoff_figure(ROWS, "t", base_flops=3e6, base_acc=65.0, highlight={"flops": 2e6, "mean_acc": 59.0})
    names = [t.name for t in fig.data]
    assert names == ["DCS (ours)", "BN |gamma|", "L1 norm", "newscore", "unpruned", "your configuration"]
    assert "bn_gamma" not in names and fig.data[1].hovertemplate.startswith("BN |gamma|<br>")
    assert [t.meta for t in fig.data[:4]] == ["dcs", "bn_gamma", "l1", "newscore"]  # the method keys stay at hand
    assert list(fig.data[0].x) == [1.0, 2.0] and fig.data[0].line.width == 3  # DCS first, sorted by FLOPs, bold
    assert fig.layout.legend.title.text == "score"


def test_tradeoff_legend_takes_a_labels_mapping():
    fig = plots.tradeoff_figure(ROWS, "t", labels={"bn_gamma": "BatchNorm gamma"})
    assert [t.name for t in fig.data] == ["dcs", "BatchNorm gamma", "l1", "newscore"]
    colours = [t.line.color for t in fig.data]
    assert len(set(colours)) == 4 and colours[0] == plots.cluster_color(0)


# ---------------------------------------------------------------------------------- overlap matrix
def _sym(n, seed=0):
    m = np.random.default_rng(seed).random((n, n))
    return (m + m.T) / 2


def test_cluster_matrix_has_axis_titles_and_names_as_ticks():
    names = [f"superclass_{k}" for k in range(20)]
    fig = plots.jaccard_heatmap(_sym(20), names, "Jaccard")
    for ax in (fig.layout.xaxis, fig.layout.yaxis):
        assert ax.title.text == "cluster"
        assert list(ax.tickvals) == list(range(20)) and list(ax.ticktext) == names
    assert fig.layout.yaxis.autorange == "reversed"  # row 0 on top
    hm = fig.data[0]
    assert list(hm.customdata[2][5][:2]) == [names[2], names[5]] and "%{customdata[0]} vs %{customdata[1]}" in hm.hovertemplate
    assert plots.jaccard_heatmap(_sym(20), names, "J", item="superclass").layout.xaxis.title.text == "superclass"


def test_class_matrix_names_the_clusters_when_too_many_classes():
    group_of = np.repeat(np.arange(20), 5)
    groups = [f"g{k}" for k in range(20)]
    classes = [f"class{c}" for c in range(100)]
    fig = plots.jaccard_heatmap(_sym(100), classes, "J", group_of=group_of, group_names=groups)
    assert fig.layout.xaxis.title.text.startswith("class (grouped by cluster)")
    assert fig.layout.yaxis.title.text == "class (grouped by cluster)"
    assert list(fig.layout.xaxis.ticktext) == groups and list(fig.layout.yaxis.ticktext) == groups
    assert list(fig.layout.xaxis.tickvals) == pytest.approx([2.0 + 5 * k for k in range(20)])  # group middles
    assert len(fig.layout.shapes) == 2 * 19  # white lines between the groups
    assert list(fig.data[0].customdata[7][12]) == ["class7", "class12", "g1 / g2"]
    # few enough classes: each class labelled
    small = plots.jaccard_heatmap(_sym(12), classes[:12], "J", group_of=np.repeat(np.arange(3), 4), group_names=groups[:3])
    assert list(small.layout.xaxis.ticktext) == classes[:12]
    # many ungrouped items: one in k labelled
    many = plots.jaccard_heatmap(_sym(100), classes, "J")
    assert list(many.layout.xaxis.ticktext) == classes[::3] and "one in 3 labelled" in many.layout.xaxis.title.text


def test_probability_panels_show_each_panels_top_entries_and_threshold():
    from sinf_core.plots import probability_panels_figure

    p1 = np.array([0.1, 0.6, 0.3])
    p2 = np.linspace(0.0, 1.0, 12) / np.linspace(0.0, 1.0, 12).sum()
    fig = probability_panels_figure([
        {"probs": p1, "names": ["a", "b", "c"], "title": "route", "threshold": 0.5, "top": 2},
        {"probs": p2, "names": [f"k{i}" for i in range(12)], "title": "base", "threshold": None, "top": 5}], "t")
    bars = [t for t in fig.data if t.type == "bar"]
    assert [list(b.y) for b in bars] == [["c", "b"], ["k7", "k8", "k9", "k10", "k11"]]  # largest on top
    assert list(bars[0].x) == [0.3, 0.6] and bars[1].xaxis == "x2"
    assert [a.text for a in fig.layout.annotations if a.text.startswith("threshold")] == ["threshold 0.50"]
    assert [s.x0 for s in fig.layout.shapes] == [0.5] and fig.layout.shapes[0].xref == "x"
    with pytest.raises(ValueError):
        probability_panels_figure([], "t")
