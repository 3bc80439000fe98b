"""`hybridlm bench --presets/--size`: the small-preset figures of docs/benchmarks.md from the command line."""

import pytest

from hybridlm.bench import compiled, context, decode_profile, models, training
from hybridlm.bench.timing import Row
from hybridlm.cli import bench as bench_cli
from hybridlm.cli import main


@pytest.fixture
def calls(monkeypatch):
    """The keyword arguments each suite's rows function was called with (nothing is measured)."""
    seen = []

    def recorder(suite):
        def rows(**options):
            seen.append((suite, options))
            return [Row(suite, "step", 0.5, 1.0, "ref")]

        return rows

    monkeypatch.setattr(models, "model_rows", recorder("models"))
    monkeypatch.setattr(training, "training_rows", recorder("training"))
    monkeypatch.setattr(context, "jamba_kv_rows", recorder("jamba kv"))
    monkeypatch.setattr(context, "context_rows", recorder("context"))
    monkeypatch.setattr(decode_profile, "decode_profile_rows", recorder("decode-profile"))
    monkeypatch.setattr(compiled, "compiled_rows", recorder("compiled"))
    return seen


def test_presets_and_size_reach_the_suites_in_place_of_their_own(calls, capsys):
    assert main(["bench", "models", "decode-profile", "--presets", "zamba2, mamba2", "--size", "small"]) == 0
    assert calls == [
        ("models", {"presets": ("zamba2", "mamba2"), "size": "small"}),
        ("decode-profile", {"presets": ("zamba2", "mamba2"), "size": "small"}),
    ]
    assert capsys.readouterr().out.startswith("machine: ")


def test_without_them_each_suite_keeps_its_own(calls):
    assert main(["bench", "models", "training", "context", "decode-profile", "compiled"]) == 0
    assert calls == [
        ("models", {}),
        ("training", {}),
        ("jamba kv", {}),
        ("context", {}),
        ("decode-profile", {"presets": ("mamba", "jamba", "transformer")}),
        ("compiled", {}),
    ]


def test_quick_keeps_its_shapes_with_the_chosen_size(calls):
    assert main(["bench", "models", "compiled", "context", "--quick", "--size", "small"]) == 0
    assert calls == [
        ("models", {"presets": ("jamba",), "size": "small", "prefill_length": 1024, "new_tokens": 64,
                    "train_shape": (1, 128), "repeats": 3}),
        ("compiled", {"presets": ("transformer",), "size": "small", "new_tokens": 16}),
        ("jamba kv", {"size": "small"}),
        ("context", {"size": "small", "contexts": (1024, 4096), "steps": 8}),
    ]  # fmt: skip


def test_without_a_suite_the_presets_run_every_suite_that_builds_models(calls):
    assert main(["bench", "--presets", "mamba,zamba2,mamba"]) == 0  # a repeated preset runs once
    chosen = {"presets": ("mamba", "zamba2")}
    assert calls == [
        ("models", chosen),
        ("training", chosen),
        ("context", chosen),  # no jamba among the presets: no jamba-against-transformer KV rows
        ("decode-profile", chosen),
        ("compiled", chosen),
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["models", "--presets", "blend"], "'blend' has none"),
        (["decode-profile", "--presets", "mamab"], "unknown preset 'mamab'; did you mean 'mamba'?"),
        (["decode-profile", "--size", "huge"], "unknown size 'huge': choose one of tiny, small, paper"),
        (["kernels", "--size", "small"], "none was chosen"),
        (["decode-profile", "--presets", ","], "--presets names no preset"),
        (["--presets", "transformer"], "name the suites: `hybridlm bench training context decode-profile compiled"),
        (["models", "--size", "paper", "--quick"], "--size paper is the published shape"),
        (["kernels", "--threads", "100000"], "--threads must be between 1 and this machine's"),
        (["kernels", "--threads", "0"], "--threads must be between 1 and this machine's"),
    ],
)
def test_a_bad_scope_is_refused_in_one_line_before_anything_runs(calls, capsys, monkeypatch, arguments, message):
    monkeypatch.setattr(bench_cli, "machine_line", lambda: pytest.fail("the report started"))
    assert main(["bench", *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert calls == []


def test_a_suite_named_twice_runs_once(calls):
    assert main(["bench", "models", "models", "--presets", "mamba"]) == 0
    assert calls == [("models", {"presets": ("mamba",)})]
