"""Per-layer inference states and the model's cache that holds them.

A hybrid's cache differs per layer: attention keeps keys and values (a ring of `window - 1` past
entries when windowed, so its memory stops growing), an SSM keeps its last `k - 1` conv inputs and
a fixed fp32 state, the alpha-blend keeps both. Each family's state is a typed dataclass (a
`State`, defined in the family's file), updated in place by its mixer; every state answers
`nbytes()` and `select(indices)`.

Glossary: B batch, T cache slots, H_kv key/value heads, D head dim, N new tokens.
"""

from __future__ import annotations

import dataclasses

import torch

EMPTY = -1  # position of an empty or padding slot: never attended by a real query


class State:
    """Base of the typed per-family states (dataclasses of tensors and nested states, layers/*.py).

    Each family declares what its state holds as dataclass fields; this base gives them `nbytes`
    and `select` by walking those fields."""

    def parts(self) -> list:
        """What the state holds: its tensors and nested states, in field order."""
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    def nbytes(self) -> int:
        return sum(_nbytes(part) for part in self.parts())

    def select(self, indices: torch.Tensor) -> None:
        for f in dataclasses.fields(self):
            part = getattr(self, f.name)
            if isinstance(part, torch.Tensor):
                setattr(self, f.name, part.index_select(0, indices))
            elif part is not None:
                part.select(indices)


class KVCache:
    """Keys and values of one attention layer, with the position of each slot.

    Full attention appends (preallocated to `max_len`, else grown geometrically). Windowed
    attention keeps a ring of `window - 1` slots: a query sees at most `window` keys, itself
    included, so older entries are never read again.
    """

    def __init__(self, batch_size, n_kv_heads, head_dim, *, window=None, max_len=None, device=None, dtype=None):
        self.window = window
        capacity = (window - 1) if window is not None else (max_len or 0)
        self.keys = torch.zeros(batch_size, n_kv_heads, capacity, head_dim, device=device, dtype=dtype)
        self.values = torch.zeros_like(self.keys)
        self.positions = torch.full((batch_size, capacity), EMPTY, dtype=torch.long, device=device)
        self.length = 0  # slots written so far (for the ring: tokens seen)
        self.holds_padding = False  # a padding slot was stored: queries need a mask to skip it

    def nbytes(self) -> int:
        return _nbytes(self.keys) + _nbytes(self.values) + _nbytes(self.positions)

    def select(self, indices: torch.Tensor) -> None:
        self.keys = self.keys.index_select(0, indices)
        self.values = self.values.index_select(0, indices)
        self.positions = self.positions.index_select(0, indices)

    def update(self, keys, values, positions):
        """Store new (B, H_kv, N, D) keys/values; return everything the new queries may attend to.

        Returns (keys, values, key_positions) with the new entries last.
        """
        if self.window is None:
            return self._append(keys, values, positions)
        attend = (
            torch.cat([self.keys, keys], dim=2),
            torch.cat([self.values, values], dim=2),
            torch.cat([self.positions, positions], dim=1),
        )
        self._write_ring(keys, values, positions)
        return attend

    def every_key_visible(self) -> bool:
        """After `update` with one unpadded query: whether it may see every key returned, so attention
        needs no mask. Without a window, unless padding was stored; with one, once the ring is full
        (its window - 1 slots then hold the latest tokens, all inside the new query's window)."""
        return not self.holds_padding and (self.window is None or self.length > self.keys.shape[2])

    def next_slot(self) -> tuple[int, int] | None:
        """For one unpadded token that a fused step writes itself (ops/attention_decode_cpu.py):
        (slots it attends before its own key, the slot it is written to, -1 for none), growing the
        append buffer when full; None where its query needs a mask (padding stored). A ring not yet full
        holds its tokens in slots 0 .. length - 1, all inside the window, as an append buffer does.
        The caller writes the slot and then counts it in `length`."""
        if self.holds_padding:
            return None
        size = self.keys.shape[2]
        if self.window is None:
            if self.length == size:
                self._grow(max(self.length + 1, 2 * size))
            return self.length, self.length
        if self.length < size:
            return self.length, self.length
        return size, (self.length % size if size else -1)

    def _append(self, keys, values, positions):
        start, end = self.length, self.length + keys.shape[2]
        if end > self.keys.shape[2]:
            self._grow(max(end, 2 * self.keys.shape[2]))
        self.keys[:, :, start:end] = keys
        self.values[:, :, start:end] = values
        self.positions[:, start:end] = positions
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end], self.positions[:, :end]

    def _grow(self, capacity: int) -> None:
        """Reallocate to `capacity` slots keeping what is stored; doubling keeps appends amortised O(1)."""
        keys, values, positions = self.keys, self.values, self.positions
        self.keys = keys.new_zeros(keys.shape[0], keys.shape[1], capacity, keys.shape[3])
        self.values = torch.zeros_like(self.keys)
        self.positions = positions.new_full((positions.shape[0], capacity), EMPTY)
        self.keys[:, :, : self.length] = keys[:, :, : self.length]
        self.values[:, :, : self.length] = values[:, :, : self.length]
        self.positions[:, : self.length] = positions[:, : self.length]

    def _write_ring(self, keys, values, positions) -> None:
        size = self.keys.shape[2]
        n_new = keys.shape[2]
        if size == 0:
            self.length += n_new
            return
        if n_new == 1:  # decoding: one slot, plain indexing (no index tensor to build)
            slot = self.length % size
            self.keys[:, :, slot] = keys[:, :, 0]
            self.values[:, :, slot] = values[:, :, 0]
            self.positions[:, slot] = positions[:, 0]
            self.length += 1
            return
        keep = min(n_new, size)
        slots = (torch.arange(self.length + n_new - keep, self.length + n_new, device=keys.device)) % size
        self.keys[:, :, slots] = keys[:, :, n_new - keep :]
        self.values[:, :, slots] = values[:, :, n_new - keep :]
        self.positions[:, slots] = positions[:, n_new - keep :]
        self.length += n_new


class Cache:
    """The states of every sub-layer of a model, plus each row's count of real tokens seen."""

    def __init__(self, states: list, seen: torch.Tensor):
        self.states = states
        self.seen = seen  # (B,) real (non-padding) tokens fed so far, the next token's position

    def __len__(self) -> int:
        return len(self.states)

    @property
    def batch_size(self) -> int:
        return self.seen.shape[0]

    def nbytes(self) -> int:
        """Bytes held now by all layer states."""
        return sum(_nbytes(state) for state in self.states)

    def select(self, indices) -> Cache:
        """Keep or reorder batch rows (beam search, dropping finished rows); in place, returns self."""
        indices = torch.as_tensor(indices, dtype=torch.long, device=self.seen.device)
        for state in self.states:
            if state is not None:
                state.select(indices)
        self.seen = self.seen.index_select(0, indices)
        return self


def _nbytes(part) -> int:
    if part is None:
        return 0
    if isinstance(part, torch.Tensor):
        return part.numel() * part.element_size()
    return part.nbytes()


# ---- batch rows of whole caches (continuous batching, prefix snapshots) -------------------------------
def clone_cache(cache: Cache) -> Cache:
    """An independent copy of every layer's state; KV caches keep only their written slots."""
    return Cache([_clone_state(state) for state in cache.states], cache.seen.clone())


def concat_caches(caches: list[Cache]) -> Cache:
    """One cache holding the rows of `caches` in order, each row continuing exactly as it would alone.

    Full-attention rows of different lengths are right-aligned (the gap on the left is marked empty,
    as left padding is); ring-buffer rows are rotated so the next write lands on each row's oldest slot.
    """
    states = [_concat_states([cache.states[index] for cache in caches]) for index in range(len(caches[0]))]
    return Cache(states, torch.cat([cache.seen for cache in caches]))


def drop_rows(cache: Cache, keep) -> Cache:
    """Keep the rows `keep` (in place, returns `cache`), then free KV slots no kept row uses."""
    cache.select(keep)
    for state in cache.states:
        _trim_state(state)
    return cache


def _clone_state(state):
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, KVCache):
        copy = KVCache.__new__(KVCache)
        copy.__dict__.update(state.__dict__)
        written = state.keys.shape[2] if state.window is not None else state.length
        copy.keys = state.keys[:, :, :written].clone()
        copy.values = state.values[:, :, :written].clone()
        copy.positions = state.positions[:, :written].clone()
        return copy
    return _rebuild(state, lambda name: _clone_state(getattr(state, name)))


def _concat_states(states: list):
    first = states[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(states)
    if isinstance(first, KVCache):
        return _concat_kv(states)
    return _rebuild(first, lambda name: _concat_states([getattr(state, name) for state in states]))


def _rebuild(state: State, part_of) -> State:
    """A state of the same type whose every field is `part_of(field name)`."""
    return type(state)(**{f.name: part_of(f.name) for f in dataclasses.fields(state)})


def _concat_kv(states: list[KVCache]) -> KVCache:
    merged = KVCache.__new__(KVCache)
    merged.window = states[0].window
    length = max(state.length for state in states)
    keys, values, positions = [], [], []
    for state in states:
        if merged.window is None:  # right-align: slots [length - state.length, length) hold this row
            gap = length - state.length
            key_part, value_part = state.keys[:, :, : state.length], state.values[:, :, : state.length]
            keys.append(_pad_slots(key_part, gap))
            values.append(_pad_slots(value_part, gap))
            position_part = state.positions[:, : state.length]
            positions.append(
                torch.cat([position_part.new_full((position_part.shape[0], gap), EMPTY), position_part], 1)
            )
        else:  # ring slot (length + j) % size must hold the j-th oldest entry, as slot (state.length + j) did
            size = state.keys.shape[2]
            shift = (length - state.length) % size if size else 0
            keys.append(state.keys.roll(shift, dims=2))
            values.append(state.values.roll(shift, dims=2))
            positions.append(state.positions.roll(shift, dims=1))
    merged.keys, merged.values, merged.positions = torch.cat(keys), torch.cat(values), torch.cat(positions)
    merged.length = length
    merged.holds_padding = any(state.holds_padding or state.length != length for state in states)
    return merged


def _pad_slots(part: torch.Tensor, gap: int) -> torch.Tensor:
    """Prepend `gap` zero slots to a (B, H_kv, T, D) tensor."""
    return torch.cat([part.new_zeros(part.shape[0], part.shape[1], gap, part.shape[3]), part], dim=2)


def _trim_state(state) -> None:
    if isinstance(state, KVCache):
        if state.window is None and state.length:
            used = (state.positions[:, : state.length] != EMPTY).any(0).nonzero()
            first = int(used[0]) if len(used) else state.length
            if first:
                state.keys = state.keys[:, :, first : state.length].clone()
                state.values = state.values[:, :, first : state.length].clone()
                state.positions = state.positions[:, first : state.length].clone()
                state.length -= first
    elif isinstance(state, State):
        for part in state.parts():
            _trim_state(part)
