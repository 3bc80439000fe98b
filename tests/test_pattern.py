import time

import pytest

from hybridlm.pattern import MAX_SUBLAYERS, PatternError, attention_ratio, expand, format_pattern, layer_chars


@pytest.mark.parametrize(
    "pattern, expanded",
    [
        ("AF", "AF"),
        ("(AF)*3", "AFAFAF"),
        ("(MF ME MF ME AF ME MF ME)*4", "MFMEMFMEAFMEMFME" * 4),
        ("(M M M M M SM)*4", "MMMMMSM" * 4),
        ("((AF)*2 M)*3", "AFAFM" * 3),
        ("(R)*12", "R" * 12),
        (" ( H F )*10 ", "HF" * 10),
        ("(A)*1", "A"),
    ],
)
def test_expansion(pattern, expanded):
    assert layer_chars(pattern) == expanded


@pytest.mark.parametrize(
    "pattern",
    [
        "(MF ME MF ME AF ME MF ME)*4",
        "M M SM (M)*4 SM (M M M M M SM)*11 M M",
        "((AF)*2 M)*3",
        "  RFRFLF",
        "(PF)*2 E",
        "SM",
        "D(D D D D D SD)*7",
    ],
)
def test_format_round_trip_is_idempotent(pattern):
    canonical = format_pattern(pattern)
    assert format_pattern(canonical) == canonical
    assert layer_chars(canonical) == layer_chars(pattern)


def test_canonical_spelling():
    assert format_pattern("MFMEAF") == "MF ME AF"
    assert format_pattern("MMSMM") == "M M SM M"
    assert format_pattern("(AF)*02") == "(AF)*2"


@pytest.mark.parametrize(
    "pattern, column, char",
    [
        ("AX", 2, "X"),
        ("(AF)", 4, ")"),
        ("(AF)*0", 6, "0"),
        ("(AF", 1, "("),
        ("AF)", 3, ")"),
        ("(AF)*", 5, "*"),
        ("()*2", 1, "("),
        ("a", 1, "a"),
        ("MM S", 4, "S"),
        ("(MS)*2", 3, "S"),
        ("SSM", 1, "S"),
        ("SF", 1, "S"),
        ("(AF)*x", 5, "*"),
    ],
)
def test_errors_name_column_and_character(pattern, column, char):
    with pytest.raises(PatternError) as error:
        expand(pattern)
    assert str(error.value).startswith(f"column {column} ('{char}')")


@pytest.mark.parametrize("pattern", ["(AF)*2*2", "AF*2"])
def test_a_count_outside_a_group_says_how_to_repeat(pattern):
    with pytest.raises(PatternError, match=r"'\*K' repeats a group: write \(\.\.\.\)\*K"):
        expand(pattern)


@pytest.mark.parametrize("pattern", ["", "   ", "\n"])
def test_empty_pattern_is_an_error(pattern):
    with pytest.raises(PatternError, match="empty pattern"):
        expand(pattern)


def test_attention_ratio_counts_mixers_only():
    assert attention_ratio(layer_chars("(MF ME MF ME AF ME MF ME)*4")) == 1 / 8
    assert attention_ratio(layer_chars("(RF RF LF)*4")) == 1 / 3
    assert attention_ratio(layer_chars("(M)*5 SM")) == 1 / 7  # S counts as an attention mixer
    assert attention_ratio(layer_chars("(PF)*2")) == 1.0
    assert attention_ratio(layer_chars("(M)*4")) == 0.0


def test_multi_digit_counts_and_nesting():
    assert len(expand("((A)*10 M)*12")) == 132


@pytest.mark.parametrize(
    "pattern, length",
    [("(MF)*99999999999999", "199,999,999,999,998"), ("(MF)*100000", "200,000"), ("((MF)*1000)*1000", "2,000,000")],
)
def test_patterns_over_the_limit_are_refused_before_expanding(pattern, length):
    start = time.perf_counter()
    with pytest.raises(PatternError, match=f"expands to {length} sub-layers; the limit is 10,000"):
        expand(pattern)
    assert time.perf_counter() - start < 0.1


def test_a_count_with_too_many_digits_is_refused():
    with pytest.raises(PatternError, match="over the limit of 10,000"):
        expand("(MF)*" + "9" * 5000)  # int() of it alone would be refused by Python (> 4300 digits)


def test_patterns_at_the_limit_parse_quickly():
    start = time.perf_counter()
    assert len(expand("(MF)*5000")) == MAX_SUBLAYERS
    assert time.perf_counter() - start < 1.0


def test_cli_inspect_refuses_a_huge_pattern_at_once(capsys):
    from hybridlm.cli import main

    start = time.perf_counter()
    assert main(["inspect", "(MF)*100000"]) == 2
    assert time.perf_counter() - start < 1.0
    assert "the limit is 10,000" in capsys.readouterr().err
