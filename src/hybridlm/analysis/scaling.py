"""Scaling-law fits L(N, D) = A / N^alpha + B / D^beta + L_inf (Hoffmann et al. 2022, eq. 2).

N is the parameter count, D the training tokens, L the loss. `fit_scaling_law` fits one set of
runs by non-linear least squares (scipy's curve_fit, several starting points, the best kept);
the standard errors are the square roots of the covariance's diagonal. `fit_by_ratio` fits each
attention ratio r of a sweep separately, so alpha can be read as a function of r.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_COEFFICIENTS = 5


@dataclass
class ScalingFit:
    A: float
    alpha: float
    B: float
    beta: float
    L_inf: float
    stderr: dict  # standard error of alpha, beta, L_inf, log A, log B
    n_points: int
    rms_residual: float

    def predict(self, params, tokens) -> np.ndarray:
        params, tokens = np.asarray(params, dtype=float), np.asarray(tokens, dtype=float)
        return self.A / params**self.alpha + self.B / tokens**self.beta + self.L_inf

    def to_dict(self) -> dict:
        return {
            "A": self.A,
            "alpha": self.alpha,
            "B": self.B,
            "beta": self.beta,
            "L_inf": self.L_inf,
            "stderr": self.stderr,
            "n_points": self.n_points,
            "rms_residual": self.rms_residual,
        }


def _law(log_n_d, log_a, alpha, log_b, beta, l_inf):
    log_n, log_d = log_n_d
    return np.exp(log_a - alpha * log_n) + np.exp(log_b - beta * log_d) + l_inf


def fit_scaling_law(params, tokens, losses) -> ScalingFit:
    """Fit L = A / N^alpha + B / D^beta + L_inf to runs (N_i, D_i, L_i); needs > 5 runs."""
    from scipy.optimize import curve_fit

    log_n = np.log(np.asarray(params, dtype=float))
    log_d = np.log(np.asarray(tokens, dtype=float))
    losses = np.asarray(losses, dtype=float)
    if not len(log_n) == len(log_d) == len(losses):
        raise ValueError("params, tokens and losses must have the same length")
    if len(losses) <= N_COEFFICIENTS:
        raise ValueError(f"a scaling fit has {N_COEFFICIENTS} coefficients: give at least {N_COEFFICIENTS + 1} runs")
    floor = float(losses.min())
    bounds = ([-np.inf, 0.0, -np.inf, 0.0, 0.0], [np.inf, 3.0, np.inf, 3.0, floor])
    best = None
    for alpha, beta, floor_share in itertools.product((0.1, 0.3, 0.6), (0.1, 0.3, 0.6), (0.5, 0.9)):
        l_inf = floor_share * floor
        gap = max(float(np.median(losses)) - l_inf, 1e-6) / 2  # each power term starts at half the gap
        start = [math.log(gap) + alpha * np.median(log_n), alpha, math.log(gap) + beta * np.median(log_d), beta, l_inf]
        try:
            coefficients, covariance = curve_fit(_law, (log_n, log_d), losses, p0=start, bounds=bounds, maxfev=20000)
        except RuntimeError:  # this start did not converge; others may
            continue
        residual = float(np.sum((_law((log_n, log_d), *coefficients) - losses) ** 2))
        if best is None or residual < best[0]:
            best = (residual, coefficients, covariance)
    if best is None:
        raise ValueError("the scaling fit did not converge from any starting point")
    residual, (log_a, alpha, log_b, beta, l_inf), covariance = best
    errors = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    return ScalingFit(
        A=math.exp(log_a),
        alpha=float(alpha),
        B=math.exp(log_b),
        beta=float(beta),
        L_inf=float(l_inf),
        stderr=dict(zip(("log_A", "alpha", "log_B", "beta", "L_inf"), (float(e) for e in errors))),
        n_points=len(losses),
        rms_residual=math.sqrt(residual / len(losses)),
    )


def fit_by_ratio(
    rows: list[dict],
    params_key: str = "params",
    tokens_key: str = "tokens",
    loss_key: str = "loss",
    ratio_key: str = "attention_ratio",
) -> dict[float, ScalingFit]:
    """{attention ratio r: fit} over sweep rows (dicts with the named keys), r in increasing order."""
    groups: dict[float, list[dict]] = {}
    for row in rows:
        for key in (params_key, tokens_key, loss_key, ratio_key):
            if key not in row:
                raise ValueError(f"sweep row has no {key!r} column (columns: {', '.join(row)})")
        groups.setdefault(round(float(row[ratio_key]), 6), []).append(row)
    return {
        ratio: fit_scaling_law(
            [float(r[params_key]) for r in group],
            [float(r[tokens_key]) for r in group],
            [float(r[loss_key]) for r in group],
        )
        for ratio, group in sorted(groups.items())
    }


def trained(rows: list[dict], loss_key: str = "loss") -> list[dict]:
    """The rows with a loss: not those of runs that diverged (`diverged` set, loss null or an empty CSV cell)."""
    return [row for row in rows if not row.get("diverged") and row.get(loss_key) not in (None, "")]


def load_results(path) -> list[dict]:
    """Sweep results from a CSV file (a header row), a JSON list of objects, or JSON lines."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such results file")
    text = path.read_text()
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    stripped = text.lstrip()
    if stripped.startswith("["):
        return json.loads(stripped)
    return [json.loads(line) for line in text.splitlines() if line.strip()]
