"""`hybridlm bench --presets/--size`: the small-preset figures of docs/benchmarks.md from the command line."""

import pytest

from hybridlm.bench import compiled, decode_profile, models
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


def test_without_them_each_suite_keeps_its_own_and_quick_keeps_its_shapes(calls):
    assert main(["bench", "models", "decode-profile", "compiled"]) == 0
    assert main(["bench", "models", "compiled", "--quick", "--size", "small"]) == 0
    assert calls == [
        ("models", {}),
        ("decode-profile", {"presets": ("mamba", "jamba", "transformer")}),
        ("compiled", {}),
        ("models", {"presets": ("jamba",), "size": "small", "prefill_length": 1024, "new_tokens": 64,
                    "train_shape": (1, 128), "repeats": 3}),
        ("compiled", {"presets": ("transformer",), "size": "small", "new_tokens": 16}),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["models", "--presets", "blend"], "'blend' has none"),
        (["decode-profile", "--presets", "mamab"], "unknown preset 'mamab'; did you mean 'mamba'?"),
        (["decode-profile", "--size", "huge"], "unknown size 'huge': choose one of tiny, small, paper"),
        (["kernels", "--size", "small"], "none was chosen"),
        (["decode-profile", "--presets", ","], "--presets names no preset"),
    ],
)
def test_a_bad_scope_is_refused_in_one_line_before_anything_runs(calls, capsys, monkeypatch, arguments, message):
    monkeypatch.setattr(bench_cli, "machine_line", lambda: pytest.fail("the report started"))
    assert main(["bench", *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert calls == []
