"""The recall suite: every generator a pure function of (seed, index), every label checked by brute
force against the sequence it belongs to; settings errors name the task's own fields."""

import pytest
import torch

from hybridlm.config import ConfigError
from hybridlm.data.synthetic import IGNORE, NO_SOURCE, TASKS, Lag, Passkey, Phonebook, make_task

SMALL = {
    "mqar": {"vocab_size": 64, "seq_len": 48, "n_pairs": 6},
    "passkey": {"seq_len": 80, "n_distractors": 3},
    "phonebook": {"n_entries": 12, "vocab_size": 40},
    "copy": {"seq_len": 40, "n_tokens": 5},
    "induction": {"seq_len": 30},
    "lag": {"seq_len": 20, "lag": 3},
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_batches_are_pure_functions_of_seed_and_index(name):
    task = make_task(name, **SMALL[name])
    first, again = task.batch(6, seed=3, index=5), task.batch(6, seed=3, index=5)
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.targets, again.targets)
    assert not torch.equal(first.inputs, task.batch(6, seed=3, index=5, split="test").inputs)
    assert not torch.equal(first.inputs, task.batch(6, seed=3, index=6).inputs)
    assert first.inputs.shape == (6, task.seq_len) and int(first.inputs.max()) < task.vocab_size


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_answer_copies_the_token_at_its_source(name):
    """The answer at each asked position is the input token at its source, which lies before it,
    and the gap bucket (where the task has one) is the distance."""
    batch = make_task(name, **SMALL[name]).batch(8, seed=1, index=0)
    asked = batch.targets != IGNORE
    assert asked.any(1).all() and ((batch.sources != NO_SOURCE) == asked).all()
    for row, position in asked.nonzero().tolist():
        source = int(batch.sources[row, position])
        assert 0 <= source <= position and int(batch.inputs[row, source]) == int(batch.targets[row, position])
        if "gap" in batch.buckets:
            assert int(batch.buckets["gap"][row, position]) == position - source


def test_mqar_values_follow_their_keys_and_every_key_is_asked_once():
    batch = make_task("mqar", **SMALL["mqar"]).batch(8, seed=3, index=5)
    for row, targets in zip(batch.inputs, batch.targets):
        pairs = dict(zip(row[0:12:2].tolist(), row[1:12:2].tolist()))
        assert len(pairs) == 6 and all(1 <= k < 32 <= v < 64 for k, v in pairs.items())
        asked = (targets != IGNORE).nonzero().flatten()
        assert sorted(int(row[p]) for p in asked) == sorted(pairs)
        assert all(pairs[int(row[p])] == int(targets[p]) for p in asked)


def _needles(row: list[int]) -> list[tuple[int, int, list[int]]]:
    """(start, key, digits) of every NEEDLE marker in a passkey sequence, found by scanning."""
    return [(i, row[i + 1], row[i + 2 : i + 6]) for i, token in enumerate(row) if token == Passkey.NEEDLE]


@pytest.mark.parametrize("depth", [None, 0.0, 0.5, 1.0])
def test_passkey_needle_found_by_scanning_matches_the_labels(depth):
    task = Passkey(seq_len=80, n_distractors=3, depth=depth)
    batch = task.batch(16, seed=0, index=2)
    haystack, last_start = 80 - 6, 80 - 12
    for row, targets, depths in zip(batch.inputs.tolist(), batch.targets.tolist(), batch.buckets["depth"].tolist()):
        assert row[haystack] == Passkey.QUERY and row.count(Passkey.QUERY) == 1
        needles = _needles(row[:haystack])
        assert len(needles) == 4 and len({key for _, key, _ in needles}) == 4  # distinct keys
        starts = sorted(start for start, _, _ in needles)
        assert all(b - a >= 6 for a, b in zip(starts, starts[1:]))  # no needle overlaps another
        (start, _, digits), *_ = [n for n in needles if n[1] == row[haystack + 1]]
        asked = [p for p, t in enumerate(targets) if t != IGNORE]
        assert asked == list(range(haystack + 1, haystack + 5)) and [targets[p] for p in asked] == digits
        assert row[haystack + 2 :] == digits and all(0 <= d <= 9 for d in digits)
        if depth is not None:
            assert start == round(depth * last_start)
        assert depths[asked[0]] == round(100 * start / last_start)


def test_phonebook_lookup_by_parsing_the_book():
    task = Phonebook(n_entries=12, vocab_size=40, depth=None)
    batch = task.batch(16, seed=0, index=0)
    for row, targets, depths in zip(batch.inputs.tolist(), batch.targets.tolist(), batch.buckets["depth"].tolist()):
        lines, line = [], []
        for token in row:
            if token == Phonebook.NEWLINE:
                lines.append(line)
                line = []
            else:
                line.append(token)
        lines.append(line)
        book, blank, demos, blank2, (query,) = lines[:12], lines[12], lines[13:15], lines[15], lines[16:]
        assert blank == blank2 == [] and len(lines) == 17
        numbers = {tuple(entry[:2]): entry[3:] for entry in book}
        assert len(numbers) == 12  # names are distinct within a book
        assert all(entry[2] == Phonebook.COLON and len(entry) == 7 for entry in book)
        assert all(numbers[tuple(demo[:2])] == demo[3:] for demo in demos)
        name = tuple(query[:2])
        assert name not in {tuple(demo[:2]) for demo in demos}
        answer = [t for t in targets if t != IGNORE]
        assert answer == numbers[name] == query[3:]
        index = [tuple(entry[:2]) for entry in book].index(name)
        assert {d for d, t in zip(depths, targets) if t != IGNORE} == {round(100 * index / 11)}


def test_phonebook_depth_picks_the_entry():
    for depth, index in ((0.0, 0), (1.0, 11), (0.5, 6)):
        batch = Phonebook(n_entries=12, vocab_size=40, depth=depth).batch(4, seed=0, index=0)
        asked = (batch.targets[0] != IGNORE).nonzero().flatten()
        assert (batch.sources[0, asked] == torch.arange(index * 8 + 3, index * 8 + 7)).all()


def test_lag_answers_are_the_token_lag_positions_back():
    batch = Lag(seq_len=20, lag=3).batch(4, seed=0, index=0)
    assert (batch.targets[:, :3] == IGNORE).all() and torch.equal(batch.targets[:, 3:], batch.inputs[:, :17])


@pytest.mark.parametrize(
    "name, settings, message",
    [
        ("mqar", {"n_pair": 3}, "task mqar has no setting 'n_pair'; did you mean 'n_pairs'?"),
        ("passkey", {"distractors": 2}, "did you mean 'n_distractors'?"),
        ("phonebook", {"n_entrys": 2}, "did you mean 'n_entries'?"),
        ("mqar", {"n_pairs": 0}, "n_pairs = 0 is out of range; allowed 1..16"),
        ("mqar", {"n_pairs": 40}, "MQAR needs seq_len >= 4 * n_pairs"),
        ("mqar", {"n_pairs": 2.5}, "n_pairs must be int, got 2.5"),
        ("passkey", {"depth": 1.5}, "depth = 1.5 is out of range; allowed 0..1"),
        ("passkey", {"seq_len": 8}, "passkey needs seq_len >= 24"),
        ("phonebook", {"n_demos": 20}, "n_demos = 20 is out of range; allowed 0..15"),
        ("lag", {"lag": 0}, "lag = 0 is out of range"),
        ("copy", {"seq_len": 10}, "selective copy needs seq_len >= 2 * n_tokens"),
        ("phonebok", {}, "did you mean 'phonebook'?"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_field(name, settings, message):
    with pytest.raises(ConfigError) as error:
        make_task(name, **settings)
    assert message in str(error.value) and "\n" not in str(error.value) and "__init__" not in str(error.value)
