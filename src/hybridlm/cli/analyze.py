"""`hybridlm analyze`: parameters, FLOPs and inference cache bytes at context length N, from the config.

No weights are allocated, so the `paper` presets work. Several targets give one comparison table
(and one figure with `--plot`). `--simplified` uses the seed's formulas (full MHA, d values of state
per SSM layer); `--reference` prints the seed's worked example and the Jamba paper's KV table;
`--scaling-fit RESULTS` fits L(N, D) = A/N^alpha + B/D^beta + L_inf per attention ratio of a sweep.
"""

from __future__ import annotations

import csv
import json
import sys

from ..config import DTYPE_NAMES
from ..presets import presets
from .common import add_model_flags, format_table, human, plot_path, resolve_config

HELP = "parameters, FLOPs and cache bytes at context length N (no weights allocated)"


def add_arguments(parser) -> None:
    parser.add_argument(
        "targets", nargs="*", metavar="TARGET", help="preset name, layer pattern or checkpoint directory"
    )
    parser.add_argument("--seq-len", type=int, nargs="+", default=[2048], metavar="N", help="context length(s)")
    parser.add_argument("--batch", type=int, default=1, help="batch rows for cache bytes (default 1)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="activation / KV dtype")
    add_model_flags(parser)
    parser.add_argument(
        "--simplified",
        action="store_true",
        help="the seed's formulas: full MHA (d_kv = d) and an SSM state of d values per layer",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="machine-readable output")
    output.add_argument("--csv", action="store_true", help="one CSV row per target and N")
    parser.add_argument(
        "--plot", metavar="FILE", type=plot_path, help="memory and compute vs N (log-log), all targets on one figure"
    )
    parser.add_argument("--reference", action="store_true", help="the seed's worked example and Jamba's KV table")
    parser.add_argument(
        "--scaling-fit",
        metavar="RESULTS",
        help="fit L = A/N^alpha + B/D^beta + L_inf per attention ratio to sweep results "
        "(CSV, JSON or JSON lines with params, tokens, loss, attention_ratio)",
    )


def run(args) -> None:
    from ..analysis.cost import cost_curves, cost_report
    from ..config import ConfigError

    if args.reference:
        _print_reference(args.json)
        return
    if args.scaling_fit:
        _scaling_fit(args)
        return
    if not args.targets:
        raise ConfigError("give at least one preset, pattern or directory (or --reference)")
    if min(args.seq_len) < 1 or args.batch < 1:
        raise ConfigError("--seq-len and --batch must be >= 1")
    configs = {_label(target, args.size): resolve_config(target, args.size, args.overrides) for target in args.targets}
    reports = [
        cost_report(config, seq_len, args.batch, args.dtype, name=label)
        for label, config in configs.items()
        for seq_len in args.seq_len
    ]
    if args.plot:
        from ..analysis.plots import plot_cost_curves, sweep_lengths

        lengths = sweep_lengths(max(args.seq_len))
        curves = {
            label: cost_curves(config, lengths, args.batch, args.dtype, args.simplified)
            for label, config in configs.items()
        }
        plot_cost_curves(curves, args.plot, title=f"batch {args.batch}, {args.dtype}")
    if args.json:
        print(json.dumps([report.to_dict() for report in reports], indent=2))
    elif args.csv:
        rows = [report.row() for report in reports]
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    elif len(reports) == 1:
        _print_report(reports[0], args.simplified)
    else:
        _print_comparison(reports, args.simplified)
    if args.plot:
        print(f"\nwrote {args.plot}", file=sys.stderr if (args.json or args.csv) else sys.stdout)


def _label(target: str, size: str) -> str:
    return f"{target} ({size})" if target in presets() else target


def _print_report(report, simplified: bool) -> None:
    config, flops = report.config, report.flops
    print(f"{report.name}: {report.to_dict()['pattern']}")
    print(
        f"{report.layers} layers (mixers), r = {report.attention_ratio:.3f}, d_model {config.d_model}; "
        f"N = {report.seq_len:,}, batch {report.batch}, {report.dtype}\n"
    )
    params = report.params
    rows = [[kind, f"{count:,}", f"{count / params['total']:.1%}"] for kind, count in params.items()]
    if report.active_params != params["total"]:
        rows.append(["active per token", f"{report.active_params:,}", f"{report.active_params / params['total']:.1%}"])
    print("parameters")
    print(format_table(["type", "params", "share"], rows))
    print(f"\nFLOPs per token at N = {report.seq_len:,} (multiply-add = 2; training = 3 x forward)")
    print(
        format_table(
            ["phase", "FLOPs / token"],
            [
                ["training", _flops(flops.training_per_token)],
                ["prefill", _flops(flops.prefill_per_token)],
                ["decode (N-th token)", _flops(flops.decode_per_token)],
            ],
        )
    )
    kind_rows = [
        [
            kind,
            entry["count"],
            _flops(entry["dense_per_token"]),
            _flops(entry["mixing_prefill"] / report.seq_len),
            _flops(entry["mixing_decode"]),
        ]
        for kind, entry in flops.by_kind.items()
    ]
    kind_rows.append(["lm head", 1, _flops(flops.lm_head), "-", "-"])
    print("\nforward FLOPs per token by sub-layer type")
    print(format_table(["type", "count", "dense", "mixing (prefill)", "mixing (decode)"], kind_rows))
    cache = report.cache
    print(f"\ninference cache at N = {report.seq_len:,} (batch {report.batch}, {report.dtype})")
    if simplified:
        print(f"simplified (MHA, d values per SSM layer): {_bytes(cache.simplified_bytes)}")
        return
    print(
        format_table(
            ["type", "count", "KV", "slot positions", "states", "total"],
            [
                [
                    kind,
                    entry["count"],
                    _bytes(entry["kv_bytes"]),
                    _bytes(entry["slot_bytes"]),
                    _bytes(entry["state_bytes"]),
                    _bytes(entry["kv_bytes"] + entry["slot_bytes"] + entry["state_bytes"]),
                ]
                for kind, entry in report.cache_by_kind().items()
            ]
            + [
                [
                    "total",
                    "",
                    _bytes(cache.kv_bytes),
                    _bytes(cache.slot_bytes),
                    _bytes(cache.state_bytes),
                    _bytes(cache.total),
                ]
            ],
        )
    )
    print(f"KV by the papers' formula (2 n_attn min(N, w) n_kv head_dim bytes): {_bytes(cache.kv_formula_bytes)}")
    print(f"seed's simplified formula (--simplified): {_bytes(cache.simplified_bytes)}")


def _print_comparison(reports, simplified: bool) -> None:
    headers = ["target", "N", "params", "active", "train/token", "prefill/token", "decode/token"]
    headers += ["cache (simplified)"] if simplified else ["KV", "states", "cache"]
    rows = []
    for report in reports:
        flops, cache = report.flops, report.cache
        row = [
            report.name,
            f"{report.seq_len:,}",
            human(report.params["total"]),
            human(report.active_params),
            _flops(flops.training_per_token),
            _flops(flops.prefill_per_token),
            _flops(flops.decode_per_token),
        ]
        if simplified:
            row.append(_bytes(cache.simplified_bytes, short=True))
        else:
            row += [
                _bytes(cache.kv_bytes, short=True),
                _bytes(cache.state_bytes, short=True),
                _bytes(cache.total, short=True),
            ]
        rows.append(row)
    print(format_table(headers, rows))


def _print_reference(as_json: bool) -> None:
    from ..analysis.reference import (
        JAMBA_TABLE_DTYPE,
        JAMBA_TABLE_SEQ_LEN,
        SEED_DTYPE,
        SEED_SEQ_LEN,
        SEED_WIDTH,
        jamba_kv_table,
        seed_example,
    )

    seed, jamba = seed_example(), jamba_kv_table()
    if as_json:
        print(json.dumps({"seed_example": seed, "jamba_kv_table": jamba}, indent=2))
        return
    print(f"seed's worked example: {SEED_DTYPE}, d = {SEED_WIDTH}, N = {SEED_SEQ_LEN:,}, 24 layers")
    print(
        format_table(
            ["model", "simplified (MHA, d-value SSM state)", "our cache (16 heads x 128, Mamba N=16)"],
            [[row["model"], _bytes(row["simplified_bytes"]), _bytes(row["cache_bytes"])] for row in seed],
        )
    )
    print(f"\nJamba paper, Table 1: KV cache at {JAMBA_TABLE_SEQ_LEN:,} tokens, {JAMBA_TABLE_DTYPE}")
    print(
        format_table(
            ["model", "KV (formula)", "our cache (+ slot positions, SSM states)"],
            [[row["model"], _bytes(row["kv_formula_bytes"]), _bytes(row["cache_bytes"])] for row in jamba],
        )
    )


def _bytes(count: float, short: bool = False) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            scaled = f"{count / size:.2f} {unit}"
            return scaled if short else f"{int(count):,} ({scaled})"
    return f"{int(count):,} B"


def _flops(count: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return f"{count:.3g}"


def _scaling_fit(args) -> None:
    from ..analysis.scaling import fit_by_ratio, load_results, trained
    from ..config import ConfigError

    rows = trained(load_results(args.scaling_fit))  # a diverged run has no loss to fit
    try:
        fits = fit_by_ratio(rows)
    except ValueError as error:
        raise ConfigError(f"{args.scaling_fit}: {error}") from None
    if args.plot:
        from ..analysis.plots import plot_scaling

        plot_scaling(fits, rows, args.plot)
    if args.json:
        print(json.dumps({str(ratio): fit.to_dict() for ratio, fit in fits.items()}, indent=2))
        return
    print(f"L(N, D) = A / N^alpha + B / D^beta + L_inf per attention ratio r ({len(rows)} runs)")
    print(
        format_table(
            ["r", "runs", "alpha", "beta", "L_inf", "A", "B", "rms residual"],
            [
                [
                    f"{ratio:g}",
                    fit.n_points,
                    f"{fit.alpha:.3f} +- {fit.stderr['alpha']:.3f}",
                    f"{fit.beta:.3f} +- {fit.stderr['beta']:.3f}",
                    f"{fit.L_inf:.3f} +- {fit.stderr['L_inf']:.3f}",
                    f"{fit.A:.4g}",
                    f"{fit.B:.4g}",
                    f"{fit.rms_residual:.2g}",
                ]
                for ratio, fit in fits.items()
            ],
        )
    )
    if args.plot:
        print(f"\nwrote {args.plot}")
