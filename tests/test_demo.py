"""`hybridlm demo --quick`: under a minute on 2 cores, and the recall gap it claims is there."""

import re

import torch

from hybridlm.cli import main


def test_quick_demo_shows_the_recall_gap_with_labelled_models_and_long_caches(capsys):
    torch.set_num_threads(1)
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "depthwise causal conv of width 3 on q, k, v" in out  # the attention's short conv is stated
    rows = {}
    for line in out.splitlines():
        match = re.match(
            r"^(.+?)\s{2,}(A A|R R|R A|A R)\s+[\d,]+\s+([\d.]+)\s+(.+?)\s{2,}(.+?)\s{2,}(.+?)\s{2,}\d+ s$", line
        )
        if match:
            rows[match[2]] = (match[1], float(match[3]), match[5], match[6])
    assert set(rows) == {"A A", "R R", "R A", "A R"}  # attention, a pure SSM and two hybrid layouts
    assert rows["A A"][0] == "attention + short conv" and rows["R R"][0] == "SSM: RG-LRU"
    # measured 0.992 / 0.082 / 0.842 / 0.889 (200 steps, MQAR 32 tokens, 4 pairs)
    assert rows["A A"][1] > 0.9 and rows["R R"][1] < 0.3 and rows["R A"][1] > 0.6 and rows["A R"][1] > 0.6
    assert rows["A A"][2:] == ("8.1 MiB", "260.0 MiB") and rows["R A"][2:] == ("4.1 MiB", "130.0 MiB")
    assert rows["R R"][2] == rows["R R"][3]  # the SSM's state does not grow with the context
    assert "cache at 8K" in out and "cache at 256K" in out


def test_demo_refuses_bad_steps(capsys):
    assert main(["demo", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
