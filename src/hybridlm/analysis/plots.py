"""Figures for the analyses (matplotlib, Agg backend: files only, no display needed).

Each function takes the data an analysis returned and writes one image to `path` (PNG, PDF or
SVG by extension); it returns the path.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

KIND_COLORS = {
    "attention": "tab:red",
    "local_attention": "tab:orange",
    "shared_attention": "tab:pink",
    "mamba": "tab:blue",
    "mamba2": "tab:cyan",
    "rglru": "tab:green",
    "hyena": "tab:purple",
    "blend": "tab:brown",
    "mlp": "tab:gray",
    "moe": "tab:olive",
    "final_norm": "black",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _color(kind: str) -> str:
    return KIND_COLORS.get(kind.split(":")[0], "tab:gray")


def sweep_lengths(max_len: int, points: int = 24) -> list[int]:
    """Geometric grid of context lengths from min(64, N) to N."""
    low = min(64, max_len)
    return sorted({int(round(n)) for n in np.geomspace(low, max_len, points)})


def plot_cost_curves(curves: dict, path, title: str = "") -> Path:
    """Cache bytes, prefill and decode FLOPs per token vs N (log-log), one line per target."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [
        ("cache_bytes", "inference cache (bytes)"),
        ("prefill_flops_per_token", "prefill FLOPs per token"),
        ("decode_flops_per_token", "decode FLOPs per token (at context N)"),
    ]
    for axis, (key, label) in zip(axes, panels):
        for name, curve in curves.items():
            axis.loglog(curve["seq_len"], curve[key], marker=".", label=name)
        axis.set_xlabel("context length N (tokens)")
        axis.set_title(label)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, y=1.03)
    return _save(fig, path)


def plot_mixing(pairs: list, path, absolute: bool = True) -> Path:
    """One panel per (LayerMixing, (N, N) matrix) pair; |M| on a log colour scale by default."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    columns = min(4, len(pairs))
    rows = math.ceil(len(pairs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.6 * rows), squeeze=False, layout="constrained")
    for axis in axes.flat[len(pairs) :]:
        axis.axis("off")
    for axis, (mixing, matrix) in zip(axes.flat, pairs):
        values = matrix.abs().numpy() if absolute else matrix.numpy()
        if absolute:
            positive = values[values > 0]
            floor = max(float(positive.max()) * 1e-6, float(positive.min())) if positive.size else 1e-12
            image = axis.imshow(np.maximum(values, floor), norm=LogNorm(vmin=floor), cmap="viridis")
        else:
            image = axis.imshow(values, cmap="coolwarm")
        fig.colorbar(image, ax=axis, fraction=0.046)
        axis.set_title(f"#{mixing.index} {mixing.kind}", fontsize=9, color=_color(mixing.kind))
        axis.set_xlabel("source s")
        axis.set_ylabel("target t")
    fig.suptitle("token-mixing matrices |M[t, s]|" if absolute else "token-mixing matrices M[t, s]")
    return _save(fig, path)


def plot_gradient_flow(rows: list, path, title: str = "") -> Path:
    """||dL/dx_l|| per sub-layer input, coloured by the sub-layer's type."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(max(6, 0.35 * len(rows)), 4))
    indices = [row.index for row in rows]
    axis.plot(indices, [row.grad_norm for row in rows], color="black", lw=0.8)
    seen = set()
    for row in rows:
        label = row.kind if row.kind not in seen else None
        seen.add(row.kind)
        axis.scatter(row.index, row.grad_norm, color=_color(row.kind), label=label, zorder=3)
    axis.set_yscale("log")
    axis.set_xlabel("sub-layer index (input of)")
    axis.set_ylabel("||dL/dx||")
    axis.set_title(title or "gradient norm through depth")
    axis.legend(fontsize=8)
    axis.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_routing(rows: list, path) -> Path:
    """Per-expert load (share of its balanced value) per MoE layer, and each layer's load entropy."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.5 * len(rows) + 2.5), width_ratios=[3, 1])
    ratios = np.array([[f / (row.top_k / row.n_experts) for f in row.load] for row in rows])
    image = left.imshow(ratios, aspect="auto", cmap="magma", vmin=0)
    fig.colorbar(image, ax=left, label="load / balanced share")
    left.set_yticks(range(len(rows)), [f"#{row.index}" for row in rows])
    left.set_xlabel("expert")
    left.set_title("per-expert load")
    colors = ["tab:red" if row.collapsed else "tab:green" for row in rows]
    right.barh(range(len(rows)), [row.load_entropy for row in rows], color=colors)
    right.set_yticks(range(len(rows)), [f"#{row.index}" for row in rows])
    right.invert_yaxis()
    right.set_xlim(0, 1)
    right.set_xlabel("load entropy / log E")
    right.set_title("balance (red: collapsing)")
    return _save(fig, path)


def plot_memory_lengths(rows: list, path) -> Path:
    """Distribution of decay half-lives (tokens, log scale) per SSM sub-layer."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(max(6, 0.6 * len(rows)), 4))
    data = [np.log10(row.half_lives.numpy()) for row in rows]
    parts = axis.violinplot(data, showmedians=True)
    for body, row in zip(parts["bodies"], rows):
        body.set_facecolor(_color(row.kind))
    axis.set_xticks(range(1, len(rows) + 1), [f"#{row.index}\n{row.kind}" for row in rows], fontsize=8)
    axis.set_ylabel("log10 half-life (tokens)")
    axis.set_title("memory length of SSM layers")
    axis.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_scaling(fits: dict, rows: list[dict], path, params_key="params", tokens_key="tokens", loss_key="loss") -> Path:
    """Loss vs parameters per attention ratio (points: runs, lines: fits at each run's D), and alpha(r)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for color, (ratio, fit) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4, fits.items()):
        group = [row for row in rows if round(float(row["attention_ratio"]), 6) == ratio]
        params = np.array([float(row[params_key]) for row in group])
        tokens = np.array([float(row[tokens_key]) for row in group])
        left.scatter(params, [float(row[loss_key]) for row in group], color=color, s=12, label=f"r = {ratio:g}")
        for budget in sorted(set(tokens)):
            grid = np.geomspace(params.min(), params.max(), 50)
            left.plot(grid, fit.predict(grid, np.full_like(grid, budget)), color=color, lw=0.7, alpha=0.6)
    left.set_xscale("log")
    left.set_xlabel("parameters N")
    left.set_ylabel("loss")
    left.legend(fontsize=8)
    left.set_title("L = A/N^alpha + B/D^beta + L_inf")
    ratios = list(fits)
    right.errorbar(
        ratios, [fits[r].alpha for r in ratios], yerr=[fits[r].stderr["alpha"] for r in ratios], marker="o", capsize=4
    )
    right.set_xlabel("attention ratio r")
    right.set_ylabel("alpha (+- 1 s.e.)")
    right.set_title("parameter exponent vs attention ratio")
    right.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_context_curve(curve, path, title: str = "") -> Path:
    """Answer loss vs context length, the full-context band and k_T."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(6, 4))
    axis.semilogx(curve.contexts, curve.losses, marker="o")
    band = (curve.full_loss - curve.eps, curve.full_loss + curve.eps)
    axis.axhspan(*band, color="tab:green", alpha=0.2, label="full context +- eps")
    axis.axvline(curve.effective_length, color="tab:red", ls="--", label=f"k_T = {curve.effective_length}")
    axis.set_xlabel("context k (tokens)")
    axis.set_ylabel("answer loss")
    axis.set_title(title or "effective context length")
    axis.legend()
    return _save(fig, path)


def plot_pareto(
    points: list[dict], path, costs=("train_flops_per_token", "cache_bytes"), quality="accuracy", labels=None
) -> Path:
    """Quality against each cost (log x), one panel per cost, the Pareto frontier drawn through; each
    point labelled (`labels`, default its pattern), with its sd over seeds as an error bar. Points
    without a quality (a diverged run) are left out."""
    return _save(pareto_figure(points, costs, quality, labels), path)


def pareto_figure(points: list[dict], costs=("train_flops_per_token", "cache_bytes"), quality="accuracy", labels=None):
    """The figure of `plot_pareto`."""
    from .pareto import non_dominated

    labels = labels or [point["pattern"] for point in points]
    kept = [(point, label) for point, label in zip(points, labels) if point[quality] is not None]
    points, labels = [point for point, _ in kept], [label for _, label in kept]
    if not points:
        raise ValueError(f"no point has a {quality} to plot (every run diverged)")
    plt = _pyplot()
    fig, panels = plt.subplots(1, len(costs), figsize=(6 * len(costs), 4.6), squeeze=False)
    for axis, cost in zip(panels[0], costs):
        for point, label in zip(points, labels):
            color = plt.cm.viridis(point["attention_ratio"])
            spread = point.get(f"{quality}_sd", 0.0)
            axis.errorbar(point[cost], point[quality], yerr=spread or None, fmt="o", color=color, ms=5, zorder=3)
            axis.annotate(label, (point[cost], point[quality]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = sorted(non_dominated(points, {quality: "maximize", cost: "minimize"}), key=lambda p: p[cost])
        axis.step([p[cost] for p in front], [p[quality] for p in front], where="post", color="black", lw=1)
        axis.plot([], [], color="black", lw=1, label="Pareto frontier")
        _log_ticks(axis, [point[cost] for point in points])
        axis.set_xlabel(cost.replace("_", " "))
        axis.set_ylabel(quality)
        axis.legend(fontsize=8)
    mappable = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, 1))
    fig.colorbar(mappable, ax=panels[0].tolist(), label="attention ratio r", pad=0.1)
    return fig


def _log_ticks(axis, values, count: int = 4) -> None:
    """A log x axis with at most `count` labelled ticks, geometrically spaced over the data and
    rounded to two significant digits (matplotlib's minor labels collide on a narrow range)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    low, high = min(values), max(values)
    axis.set_xscale("log")
    if low > 0 and high > low:
        axis.set_xlim(low / (high / low) ** 0.08, high * (high / low) ** 0.08)
    ticks = sorted({float(f"{v:.2g}") for v in np.geomspace(low, high, count)}) if low > 0 else [high]
    axis.xaxis.set_major_locator(FixedLocator(ticks))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _short(value)))
    axis.xaxis.set_minor_locator(NullLocator())
    axis.xaxis.set_minor_formatter(NullFormatter())


def _short(value: float) -> str:
    """12300000 -> '12M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}"
