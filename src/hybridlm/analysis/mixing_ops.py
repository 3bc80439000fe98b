"""Every mixer as y = M x along the sequence: the N x N matrix of each head or channel.

Glossary: N tokens, d model width, G groups (heads for attention and Mamba-2, channels for
Mamba, RG-LRU and Hyena), P features per group, n SSM state size.

    attention:  M_h = softmax(Q_h K_h^T * scale + mask)                         (Vaswani eq. 1)
    Mamba:      M_c[t, s] = sum_n C_t[n] exp(A[c, n] sum_{s<u<=t} dt_u[c]) B_s[n] dt_s[c]
                (the semiseparable matrix of Mamba-2, section 3, for one channel)
    Mamba-2:    M_h[t, s] = (C_t . B_s) exp(A_h sum_{s<u<=t} dt_u[h]) dt_s[h]     (SSD eq. 16)
    RG-LRU:     M_c[t, s] = prod_{s<u<=t} a_u[c] * sqrt(1 - a_s[c]^2) i_s[c]    (Griffin eq. 4)
    Hyena:      M_c[t, s] = h_c[t - s], the Toeplitz matrix of the long filter    (Hyena eq. 3)

Each `MixingOperator` holds the sequence its matrices multiply (`values`, (G, N, P): attention's V,
the SSM's scan input, Hyena's k o v) and a `readout` taking the mixed sequence (G, N, P) to the
sub-layer's output (the skip D x, gates and output projections), so readout(M values) must equal the
mixer's own output: tests hold every matrix to that. The skip D x is in the readout, not in M.
Matrices are built in float64 from the module's own weights, a slice of groups at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..layers.attention import attention_mask

ELEMENTS_PER_CHUNK = 2**24  # float64 elements materialised at once while building matrices


@dataclass
class MixingOperator:
    kind: str
    group_name: str  # "head" or "channel"
    values: torch.Tensor  # (G, N, P)
    build: Callable[[slice], torch.Tensor]  # groups -> (g, N, N) float64
    readout: Callable[[torch.Tensor], torch.Tensor]  # (G, N, P) -> (1, N, d)
    chunk: int = 1  # groups per call of `build` that fit ELEMENTS_PER_CHUNK

    @property
    def n_groups(self) -> int:
        return self.values.shape[0]

    def matrix(self, groups: slice = slice(None)) -> torch.Tensor:
        """(g, N, N) mixing matrices of the chosen groups."""
        return self.build(groups)

    def _chunks(self):
        for start in range(0, self.n_groups, self.chunk):
            yield slice(start, min(start + self.chunk, self.n_groups))

    def mixed(self) -> torch.Tensor:
        """M values, (G, N, P) float64, built chunk by chunk."""
        return torch.cat([self.build(part) @ self.values[part].double() for part in self._chunks()])

    def reduced(self, group: int | None = None) -> torch.Tensor:
        """(N, N): one group's matrix, or the mean over groups (computed without holding them all)."""
        if group is not None:
            if not 0 <= group < self.n_groups:
                raise ValueError(f"{self.kind} has {self.n_groups} {self.group_name}s; got {group}")
            return self.build(slice(group, group + 1))[0]
        return sum(self.build(part).sum(0) for part in self._chunks()) / self.n_groups


def _chunk(length: int, per_group_factor: int = 1) -> int:
    return max(1, ELEMENTS_PER_CHUNK // (length * length * per_group_factor))


def _lower(length: int, device) -> torch.Tensor:
    return torch.tril(torch.ones(length, length, dtype=torch.bool, device=device))


def _segment(cumulative: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """cumulative (N, g) -> (g, N, N) with [t, s] = cum[t] - cum[s] on and below the diagonal, 0 above."""
    seg = cumulative.T.unsqueeze(-1) - cumulative.T.unsqueeze(-2)
    return torch.where(lower, seg, torch.zeros((), dtype=seg.dtype, device=seg.device))


def mamba_scan_inputs(mixer, u, ctx):
    """Mamba-1 up to its scan: x (1, N, d_in) after conv and SiLU, gate z, dt (1, N, d_in), B and C (1, N, g, n)."""
    x, z = mixer.in_proj(u).chunk(2, dim=-1)
    x, _ = mixer.conv(ctx.zero_padding(x))
    x = ctx.zero_padding(F.silu(x))
    dt, B, C = mixer.ssm_parameters(x)
    return x, z, dt, B, C


def mamba2_scan_inputs(mixer, u, ctx):
    """Mamba-2 up to its scan: x (1, N, d_in), gate z, dt (1, N, h) after softplus and clamp, B and C (1, N, g n)."""
    options = mixer.options
    z, xBC, dt = mixer.in_proj(u).split([mixer.d_inner, mixer.conv_dim, mixer.n_heads], dim=-1)
    xBC, _ = mixer.conv(ctx.zero_padding(xBC))
    xBC = ctx.zero_padding(F.silu(xBC))
    state_width = options.n_groups * options.d_state
    x, B, C = xBC.split([mixer.d_inner, state_width, state_width], dim=-1)
    dt = F.softplus(dt.float() + mixer.dt_bias.float()).clamp(*options.dt_limit)
    return x, z, dt, B, C


def rglru_scan_inputs(mixer, u, ctx):
    """Griffin's block up to the RG-LRU: x (1, N, w) after the conv, the other branch, input gate i (1, N, w),
    log a_t (N, w) float64 and the reset mask (N, 1) (a row's first token: a_t = 0, input unscaled)."""
    branch_y = mixer.activation(mixer.linear_y(u))
    x, _ = mixer.conv(ctx.zero_padding(mixer.linear_x(u)))
    x = ctx.zero_padding(x)
    lru = mixer.rg_lru
    gate_i, gate_r = lru.gates(x)
    log_a = (-lru.c * gate_r.double() * F.softplus(lru.a_param.double()))[0]
    reset = (ctx.positions[0] == 0).unsqueeze(-1)
    return x, branch_y, gate_i, log_a, reset


def attention_operator(attention, s, ctx, kind, adapters=None, post=None) -> MixingOperator:
    """Softmax probabilities of every head for input s (1, N, d_in); `post` maps the o_proj output onward."""
    length = s.shape[1]
    heads, kv_heads, head_dim = attention.n_heads, attention.n_kv_heads, attention.head_dim
    q, k, v = attention.q_proj(s), attention.k_proj(s), attention.v_proj(s)
    if adapters is not None:
        q, k, v = q + adapters[0](s), k + adapters[1](s), v + adapters[2](s)
    if attention.short_conv is not None:  # Primer's depthwise conv on q, k, v: the values are after it
        qkv, _ = attention.short_conv(ctx.zero_padding(torch.cat([q, k, v], dim=-1)))
        q, k, v = qkv.split([q.shape[-1], k.shape[-1], v.shape[-1]], dim=-1)
    q = q.view(1, length, heads, head_dim).transpose(1, 2)  # (1, H, N, D)
    k = k.view(1, length, kv_heads, head_dim).transpose(1, 2)
    v = v.view(1, length, kv_heads, head_dim).transpose(1, 2)
    if attention.rope is not None:
        rotations = attention.rope.rotations(ctx.positions)
        q, k = attention.rope(q, rotations), attention.rope(k, rotations)
    k, v = (t.repeat_interleave(heads // kv_heads, dim=1)[0] for t in (k, v))  # (H, N, D)
    scores = (q[0].double() @ k.double().transpose(-1, -2)) * attention.scale  # (H, N, N)
    visible = attention_mask(ctx.positions[:1], ctx.positions[:1], attention.window)[0]  # (1, N, N)
    probs = torch.softmax(scores.masked_fill(~visible, -torch.inf), dim=-1)

    def readout(mixed):
        out = attention.o_proj(mixed.transpose(0, 1).reshape(1, length, heads * head_dim).to(s.dtype))
        return out if post is None else post(out)

    return MixingOperator(kind, "head", v, lambda groups: probs[groups], readout, chunk=heads)


def shared_operator(mixer, x, ctx) -> MixingOperator:
    """Zamba's `S`: attention of the shared block on [x, embeddings], then its MLP and output linear."""
    block = ctx.shared_blocks[mixer.block_index]
    s = block.input_norm(torch.cat([x, ctx.embeddings[:1]], dim=-1))

    def post(attended):
        normed = block.ff_norm(attended)
        delta = mixer.mlp_adapter(normed) if mixer.mlp_adapter is not None else None
        return mixer.linear(block.mlp(normed, gate_up_delta=delta))

    return attention_operator(block.attention, s, ctx, "shared_attention", mixer.attention_adapters, post)


def mamba_operator(mixer, u, ctx) -> MixingOperator:
    """Mamba-1: one semiseparable matrix per channel of d_in."""
    x, z, dt, B, C = mamba_scan_inputs(mixer, u, ctx)
    length, channels = x.shape[1], x.shape[2]
    per_group = channels // B.shape[2]
    B_c = B[0].double().repeat_interleave(per_group, dim=1)  # (N, d_in, n)
    C_c = C[0].double().repeat_interleave(per_group, dim=1)
    A = -torch.exp(mixer.A_log.double())  # (d_in, n)
    dt64 = dt[0].double()  # (N, d_in)
    cumulative, lower = dt64.cumsum(0), _lower(length, x.device)

    def build(groups):
        seg = _segment(cumulative[:, groups], lower)  # (g, N, N) sum of dt over (s, t]
        decay = torch.exp(A[groups][:, None, None, :] * seg.unsqueeze(-1))  # (g, N, N, n)
        matrix = torch.einsum("tcn,scn,ctsn->cts", C_c[:, groups], B_c[:, groups], decay)
        return (matrix * dt64[:, groups].T.unsqueeze(1)).masked_fill(~lower, 0.0)

    def readout(mixed):
        y = mixed[..., 0].T.unsqueeze(0) + mixer.D.double() * x.double()  # (1, N, d_in)
        return mixer.out_proj((y.to(u.dtype)) * F.silu(z))

    values = x[0].T.unsqueeze(-1)  # (d_in, N, 1)
    return MixingOperator("mamba", "channel", values, build, readout, _chunk(length, B.shape[-1]))


def mamba2_operator(mixer, u, ctx) -> MixingOperator:
    """Mamba-2: one matrix per head (scalar decay per head, B and C shared by a group of heads)."""
    options = mixer.options
    length = u.shape[1]
    x, z, dt, B, C = mamba2_scan_inputs(mixer, u, ctx)
    dt = dt[0].double()  # (N, h)
    per_group = mixer.n_heads // options.n_groups
    B_h = B[0].double().view(length, options.n_groups, -1).repeat_interleave(per_group, dim=1)  # (N, h, n)
    C_h = C[0].double().view(length, options.n_groups, -1).repeat_interleave(per_group, dim=1)
    A = -torch.exp(mixer.A_log.double())  # (h,)
    cumulative, lower = (dt * A).cumsum(0), _lower(length, u.device)
    x_heads = x[0].view(length, mixer.n_heads, options.head_dim)  # (N, h, p)

    def build(groups):
        decay = torch.exp(_segment(cumulative[:, groups], lower))
        scores = torch.einsum("thn,shn->hts", C_h[:, groups], B_h[:, groups])
        return (scores * decay * dt[:, groups].T.unsqueeze(1)).masked_fill(~lower, 0.0)

    def readout(mixed):
        y = mixed.transpose(0, 1) + mixer.D.double()[:, None] * x_heads.double()  # (N, h, p)
        return mixer.out_proj(mixer.norm(y.reshape(1, length, mixer.d_inner).to(u.dtype), z))

    return MixingOperator("mamba2", "head", x_heads.transpose(0, 1), build, readout, _chunk(length, 2))


def rglru_operator(mixer, u, ctx) -> MixingOperator:
    """Griffin's recurrent block: one matrix per channel of the RG-LRU (on the conv output)."""
    x, branch_y, gate_i, log_a, reset = rglru_scan_inputs(mixer, u, ctx)
    multiplier = torch.where(reset, 1.0, torch.sqrt(1 - torch.exp(2 * log_a)))
    input_scale = gate_i[0].double() * multiplier  # (N, w)
    cumulative = torch.where(reset, 0.0, log_a).cumsum(0)
    resets = reset[:, 0].long().cumsum(0)
    length = x.shape[1]
    lower = _lower(length, u.device)
    no_reset_between = lower & (resets.unsqueeze(1) == resets.unsqueeze(0))  # no reset in (s, t]

    def build(groups):
        matrix = torch.exp(_segment(cumulative[:, groups], lower)) * input_scale[:, groups].T.unsqueeze(1)
        return matrix.masked_fill(~no_reset_between, 0.0)

    def readout(mixed):
        return mixer.linear_out(mixed[..., 0].T.unsqueeze(0).to(u.dtype) * branch_y)

    return MixingOperator("rglru", "channel", x[0].T.unsqueeze(-1), build, readout, _chunk(length))


def hyena_operator(mixer, u, ctx) -> MixingOperator:
    """Hyena: the Toeplitz matrix of each channel's long filter, acting on k o v; q gates the result."""
    qkv, _ = mixer.short_conv(ctx.zero_padding(mixer.in_proj(u)))
    q, k, v = qkv.chunk(3, dim=-1)
    gated = ctx.zero_padding(k * v)  # (1, N, d)
    length = u.shape[1]
    kernel = mixer.filter(length).double()  # (d, N)
    lags = torch.arange(length, device=u.device)
    lag = lags.unsqueeze(1) - lags.unsqueeze(0)  # (N, N) t - s
    lower = lag >= 0

    def build(groups):
        return kernel[groups][:, lag.clamp(min=0)].masked_fill(~lower, 0.0)

    def readout(mixed):
        z = mixed[..., 0].T.unsqueeze(0) + mixer.D.double() * gated.double()
        return mixer.out_proj(q * z.to(u.dtype))

    return MixingOperator("hyena", "channel", gated[0].T.unsqueeze(-1), build, readout, _chunk(length))


SSM_OPERATORS = {"M": mamba_operator, "D": mamba2_operator, "R": rglru_operator, "H": hyena_operator}


def sublayer_operators(char: str, mixer, x, ctx, blend_ssm: str = "M") -> list[MixingOperator]:
    """The mixing operators of one sub-layer (two for the alpha-blend, none for F and E)."""
    if char in "AL":
        return [attention_operator(mixer, x, ctx, "attention" if char == "A" else "local_attention")]
    if char == "S":
        return [shared_operator(mixer, x, ctx)]
    if char in SSM_OPERATORS:
        return [SSM_OPERATORS[char](mixer, x, ctx)]
    if char == "P":
        alpha = mixer.alpha.to(x.dtype)
        ssm = SSM_OPERATORS[blend_ssm](mixer.ssm, x, ctx)
        attention = attention_operator(mixer.attention, x, ctx, "attention")
        ssm_readout, attention_readout = ssm.readout, attention.readout
        ssm.readout = lambda mixed: alpha * ssm_readout(mixed)
        attention.readout = lambda mixed: (1 - alpha) * attention_readout(mixed)
        ssm.kind, attention.kind = f"blend:{ssm.kind}", "blend:attention"
        return [ssm, attention]
    return []
