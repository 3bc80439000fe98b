"""Decoding GEMVs split with the second core's worker (ops/gemv_split.py, ops/decode_worker.py): the same
bits as one core, a caller that never waits on a worker that is not there, and the rules for when the
worker runs."""

import threading
import time

import numpy as np
import pytest
import torch

from hybridlm import HybridLM
from hybridlm.ops import decode_worker, gemv_split
from hybridlm.ops.gemv_split import ACTIVE, MAILBOX, OWNER, SPLITS, STALLS, STOP
from hybridlm.presets import preset_config

pytest.importorskip("numba")
pytestmark = pytest.mark.serial  # the worker needs the second core to itself


def _wait_for(condition, seconds=5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)
    return condition()


@pytest.fixture
def worker(monkeypatch):
    """The worker thread serving until the test ends (two torch threads, the load check passing)."""
    monkeypatch.setenv("HYBRIDLM_DECODE_WORKER", "on")
    monkeypatch.setattr(decode_worker, "_other_tasks_running", lambda: False)
    monkeypatch.setattr(decode_worker, "IDLE_CYCLES", 10**12)  # no sleeping between the test's calls
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    state = decode_worker.WORKER
    state._stopped_until = 0.0
    assert state.wake_and_wait(5.0), "the worker did not start"
    yield state
    state.stop()
    assert _wait_for(lambda: not state.serving())
    torch.set_num_threads(threads)


@pytest.fixture
def no_worker():
    """No worker serving (its thread, if any, stopped)."""
    decode_worker.WORKER.stop()
    assert _wait_for(lambda: not decode_worker.WORKER.serving())


def _case(rows=1001, width=384, batch=2, bias=True, x0=3, column=5, seed=0):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((rows, width), dtype=np.float32)
    bias_values = rng.standard_normal(rows, dtype=np.float32) if bias else np.zeros(0, np.float32)
    x = rng.standard_normal((batch, x0 + width + 2), dtype=np.float32)
    out = np.full((batch, column + rows + 1), 7.0, np.float32)
    return weight, bias_values, x, x0, out, column


def _one_core(weight, bias, x, x0, out, column):
    expected = out.copy()
    gemv_split.gemv_range(weight, bias, x, x0, expected, column, 0, weight.shape[0])
    return expected


def _alone(weight, bias, x, x0, out, column):
    """What `gemv_large` computes without the worker (no worker serving)."""
    expected = out.copy()
    MAILBOX[OWNER] = 1  # taken: it runs every row itself
    try:
        assert gemv_split.gemv_large(weight, bias, x, x0, expected, column)
    finally:
        MAILBOX[OWNER] = 0
    return expected


@pytest.mark.parametrize("rows, bias, batch", [(1001, True, 2), (1536, False, 1), (36, True, 1)])
def test_split_with_the_worker_gives_the_one_core_bits(worker, rows, bias, batch):
    before = int(MAILBOX[SPLITS])
    for seed in range(20):
        weight, bias_values, x, x0, out, column = _case(rows=rows, bias=bias, batch=batch, seed=seed)
        expected = _alone(weight, bias_values, x, x0, out, column)
        np.testing.assert_allclose(expected, _one_core(weight, bias_values, x, x0, out, column), rtol=1e-5, atol=1e-5)
        assert gemv_split.gemv_large(weight, bias_values, x, x0, out, column)
        assert np.array_equal(out, expected)  # bit for bit, the untouched columns too
    assert MAILBOX[SPLITS] > before  # the worker took some halves
    assert MAILBOX[OWNER] == 0


def test_a_caller_takes_its_task_back_when_no_worker_runs(no_worker):
    weight, bias_values, x, x0, out, column = _case()
    expected = _alone(weight, bias_values, x, x0, out, column)
    MAILBOX[ACTIVE] = 1  # as if a worker had just left: a posted task is never taken
    try:
        before = int(MAILBOX[SPLITS])
        assert gemv_split.gemv_large(weight, bias_values, x, x0, out, column)
        assert np.array_equal(out, expected)
        assert MAILBOX[SPLITS] == before
    finally:
        MAILBOX[ACTIVE] = 0


def test_a_strided_matrix_is_left_to_the_plain_gemv(no_worker):
    weight, bias_values, x, x0, out, column = _case()
    strided = np.asfortranarray(weight)
    assert not gemv_split.gemv_large(strided, bias_values, x, x0, out, column)
    assert (out == 7.0).all()  # nothing written


def test_threads_calling_at_once_each_get_their_own_result(worker):
    """Callers from several threads share one mailbox: the ones that find it taken run alone."""
    cases = [_case(seed=seed) for seed in range(4)]
    expected = [_alone(*case) for case in cases]
    errors = []

    def call(index):
        weight, bias_values, x, x0, out, column = cases[index]
        for _ in range(50):
            out[:] = 7.0
            assert gemv_split.gemv_large(weight, bias_values, x, x0, out, column)
            if not np.array_equal(out, expected[index]):
                errors.append(index)

    threads = [threading.Thread(target=call, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.parametrize("name, batch", [("mamba", 1), ("jamba", 2), ("griffin", 1)])
def test_decoding_with_the_worker_gives_the_one_core_logits(name, batch, worker, monkeypatch):
    torch.manual_seed(0)
    model = HybridLM(preset_config(name, "small")).eval()
    prompt, tokens = torch.randint(0, 258, (batch, 6)), torch.randint(0, 258, (batch, 6))

    def decode():
        with torch.inference_mode():
            cache = model.allocate_cache(batch, max_len=16)
            model(prompt, cache=cache)
            return torch.cat([model(tokens[:, [t]], cache=cache) for t in range(tokens.shape[1])], 1)

    before = int(MAILBOX[SPLITS])
    two_cores = decode()
    assert MAILBOX[SPLITS] > before
    monkeypatch.setenv("HYBRIDLM_DECODE_WORKER", "off")
    decode_worker.WORKER._checked_at = 0.0
    one_core = decode()
    assert _wait_for(lambda: not decode_worker.WORKER.serving())
    assert torch.equal(two_cores, one_core)


def test_the_worker_stops_for_one_thread_a_busy_core_or_stalls(worker, monkeypatch):
    state = decode_worker.WORKER
    torch.set_num_threads(1)
    state._checked_at = 0.0
    state.offer()
    assert _wait_for(lambda: not state.serving())
    torch.set_num_threads(2)
    state._checked_at = 0.0
    state.offer()
    assert _wait_for(state.serving)
    MAILBOX[STALLS] += decode_worker.STALLS_TOLERATED  # callers waited on it: its core was taken
    state._checked_at = 0.0
    state.offer()
    assert _wait_for(lambda: not state.serving())
    state._checked_at = 0.0
    state.offer()  # stopped for BACKOFF_S, even though the check passes again
    assert MAILBOX[STOP] == 1 and not state.serving()
    state._stopped_until = 0.0
    monkeypatch.setattr(decode_worker, "_other_tasks_running", lambda: True)
    state._checked_at = 0.0
    state.offer()
    assert not state.serving() and state._stopped_until > time.monotonic()


def test_the_load_check_counts_other_processes_only(tmp_path, monkeypatch):
    monkeypatch.setattr(decode_worker, "_usable_cpus", lambda: 2)
    proc = tmp_path / "proc"
    tasks = proc / "self" / "task"
    tasks.mkdir(parents=True)
    for task, state in (("100", "R"), ("101", "R"), ("102", "S")):  # this thread, a spinning one, a sleeper
        (tasks / task).mkdir()
        (tasks / task / "stat").write_text(f"{task} (python (x)) {state} 1 2 3\n")
    for running, busy in (("2/80", False), ("3/80", True), ("1/80", False)):
        (proc / "loadavg").write_text(f"0.50 0.40 0.30 {running} 1234\n")
        assert decode_worker._other_tasks_running(str(proc)) is busy
    assert decode_worker._other_tasks_running(str(tmp_path / "missing")) is False
