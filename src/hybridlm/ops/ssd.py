"""Mamba-2 state space duality (Dao & Gu 2024): chunked SSD and its sequential reference.

Glossary: b batch, l tokens, h heads, p head dim, g groups (B and C shared by h/g heads),
n state size, q chunk length, c number of chunks.

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T      (b, h, p, n), A a scalar per head
    y_t = h_t C_t + D x_t

Within a chunk the map x -> y is the masked "attention" (C B^T o L) X with the 1-semiseparable
L[t, s] = exp(sum_{s<u<=t} dt_u A) (Mamba-2 paper, eq. 16 and Listing 1); chunk states carry the
rest. Only exponentials of non-positive numbers are formed (the masked segment sum), so it is
stable for any dt. States are fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ssd_ref(x, dt, A, B, C, D=None, initial_state=None):
    """Sequential reference. x (b, l, h, p); dt (b, l, h); A (h,); B, C (b, l, g, n); D (h,);
    initial_state (b, h, p, n). Returns y (b, l, h, p) and the final state (b, h, p, n) fp32."""
    batch, length, heads, head_dim = x.shape
    groups = B.shape[2]
    B_h = B.float().repeat_interleave(heads // groups, dim=2)  # (b, l, h, n)
    C_h = C.float().repeat_interleave(heads // groups, dim=2)
    decay = torch.exp(dt.float() * A.float())  # (b, l, h)
    drive = torch.einsum("blh,blhp,blhn->blhpn", dt.float(), x.float(), B_h)
    h = (
        x.new_zeros(batch, heads, head_dim, B.shape[3], dtype=torch.float32)
        if initial_state is None
        else initial_state.float()
    )
    outputs = []
    for decay_t, drive_t, C_t in zip(decay.unbind(1), drive.unbind(1), C_h.unbind(1)):
        h = decay_t[..., None, None] * h + drive_t
        outputs.append(torch.einsum("bhpn,bhn->bhp", h, C_t))
    y = torch.stack(outputs, dim=1) if outputs else x.new_zeros(x.shape, dtype=torch.float32)
    if D is not None:
        y = y + D.float()[:, None] * x.float()
    return y.to(x.dtype), h


def ssd_chunked(x, dt, A, B, C, D=None, initial_state=None, chunk_size: int = 64):
    """Chunked SSD, same signature and result as `ssd_ref`; l need not be a multiple of chunk_size."""
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    pad = (-length) % chunk_size
    x32, dt32 = x.float(), dt.float()
    B32 = B.float().repeat_interleave(heads // groups, dim=2)
    C32 = C.float().repeat_interleave(heads // groups, dim=2)
    if pad:  # dt = 0 on padding: no decay, no input, so the final state is unaffected
        x32, dt32, B32, C32 = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x32, dt32, B32, C32))
    n_chunks = x32.shape[1] // chunk_size

    def chunks(t):  # (b, c*q, ...) -> (b, c, q, ...)
        return t.reshape(batch, n_chunks, chunk_size, *t.shape[2:])

    x_c, B_c, C_c = chunks(x32), chunks(B32), chunks(C32)
    a_c = chunks(dt32 * A.float()).permute(0, 3, 1, 2)  # (b, h, c, q) log-decay per step
    xdt_c = x_c * chunks(dt32).unsqueeze(-1)  # (b, c, q, h, p)
    a_cumsum = a_c.cumsum(-1)  # (b, h, c, q)

    # 1. within each chunk: y = (C B^T o L) (dt x)
    L = torch.exp(segment_sum(a_c))  # (b, h, c, q, q)
    scores = torch.einsum("bcqhn,bcshn->bhcqs", C_c, B_c) * L
    y_diag = torch.einsum("bhcqs,bcshp->bcqhp", scores, xdt_c)

    # 2. state each chunk produces on its own at its end
    decay_to_end = torch.exp(a_cumsum[..., -1:] - a_cumsum)  # (b, h, c, q)
    chunk_states = torch.einsum("bcshn,bhcs,bcshp->bchpn", B_c, decay_to_end, xdt_c)

    # 3. pass states between chunks: state entering chunk k (k = 0 is the initial state)
    if initial_state is None:
        initial_state = x32.new_zeros(batch, heads, head_dim, d_state)
    states = torch.cat([initial_state.float().unsqueeze(1), chunk_states], dim=1)  # (b, c+1, h, p, n)
    chunk_decay = torch.exp(segment_sum(F.pad(a_cumsum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
    entering, final_state = states[:, :-1], states[:, -1]

    # 4. contribution of the entering state to each output
    y_off = torch.einsum("bcqhn,bchpn,bhcq->bcqhp", C_c, entering, torch.exp(a_cumsum))
    y = (y_diag + y_off).reshape(batch, n_chunks * chunk_size, heads, head_dim)[:, :length]
    if D is not None:
        y = y + D.float()[:, None] * x.float()
    return y.to(x.dtype), final_state


def segment_sum(a: torch.Tensor) -> torch.Tensor:
    """(..., q) -> (..., q, q) with out[t, s] = sum_{s<u<=t} a_u below the diagonal, -inf above."""
    q = a.shape[-1]
    expanded = a.unsqueeze(-1).expand(*a.shape, q)  # [..., u, s] = a_u
    strictly_lower = torch.tril(torch.ones(q, q, dtype=torch.bool, device=a.device), diagonal=-1)
    sums = expanded.masked_fill(~strictly_lower, 0).cumsum(dim=-2)
    return sums.masked_fill(~torch.tril(torch.ones(q, q, dtype=torch.bool, device=a.device)), -torch.inf)


def gated_rms_norm_ref(y, z, weight, n_groups: int, eps: float):
    """RMSNorm_g(y * SiLU(z)) * weight over d / n_groups channels per group (Mamba-2's norm before
    out_proj, norm_before_gate=False): y, z (..., d), weight (d,); the result in y's dtype."""
    gated = (y.float() * F.silu(z.float())).unflatten(-1, (n_groups, -1))
    normed = gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + eps)
    return (normed.flatten(-2) * weight.float()).to(y.dtype)
