"""GPU readiness: our CUDA path against the CPU reference, then a short speed table; one verdict line.

    python benchmarks/gpu_check.py [--device auto|cuda|cpu] [--budget SECONDS]

Run by benchmarks/gpu_check.sh once it has found or installed a CUDA torch. Parity, per mixer family (tiny
models, same weights on both sides), against the CPU model in float64 (the plain references):
  fp32 forward logits and gradients (TF32 off), rel <= 2e-3 (mamba_ssm's Triton kernels use TF32 dots);
  bf16 autocast forward, rel <= 5e-2; cached decoding (prefill, then one token at a time) against the
  device's own full forward, rel <= 2e-3 in fp32; and after decoding under bf16 autocast every cache
  tensor keeps its dtype (fp32 states, complex128 Hyena modes) and is finite.
Without a CUDA device (`--device cpu`, or auto on a CPU machine) the same checks run with the
device model on CPU (numba kernels against float64 references), the speed table is skipped and
the verdict says SKIPPED: that is how the harness itself is tested (tests/test_gpu_check.py).
The last line printed is always the verdict: `GPU CHECK: PASS|FAIL|SKIPPED ...`.
"""

import argparse
import importlib.util
import os
import time

import torch

from hybridlm import HybridLM, ModelConfig
from hybridlm.bench.machine import machine_line
from hybridlm.ops import dispatch
from hybridlm.presets import preset_config
from hybridlm.train_step import autocast

FAMILIES = {"mamba": "M", "mamba2": "D", "griffin": "R L", "hyena": "H", "attention": "A F", "jamba": "M A E"}
SPEED_PRESETS = ("mamba", "mamba2", "jamba", "griffin", "stripedhyena", "transformer")
FP32_RELATIVE, BF16_RELATIVE = 2e-3, 5e-2


def tiny_model(pattern: str) -> HybridLM:
    torch.manual_seed(0)
    config = {"pattern": pattern, "d_model": 64, "n_heads": 4, "vocab_size": 97, "n_kv_heads": 2}
    config.update({"mamba": {"d_state": 16}, "mamba2": {"d_state": 16, "head_dim": 16, "chunk_size": 16}})
    config.update({"moe": {"n_experts": 4, "top_k": 2}, "attention": {"window": 16}})
    return HybridLM(ModelConfig.from_dict(config))


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def logits_and_grads(model: HybridLM, tokens: torch.Tensor, precision: str = "fp32"):
    model.zero_grad()
    with autocast(precision, tokens.device):
        logits = model(tokens)
    logits.float().pow(2).mean().backward()
    return logits.detach(), {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def parity_checks(family: str, pattern: str, device: torch.device) -> list[tuple[str, float, float]]:
    """(check name, measured relative error, tolerance) for one family."""
    reference = tiny_model(pattern).double()
    model = tiny_model(pattern).to(device)
    tokens = torch.randint(0, 97, (2, 48))
    ref_logits, ref_grads = logits_and_grads(reference, tokens)
    logits, grads = logits_and_grads(model, tokens.to(device))
    checks = [(f"{family} fp32 logits", relative(logits, ref_logits), FP32_RELATIVE)]
    worst = max(grads, key=lambda name: relative(grads[name], ref_grads[name]))
    checks.append((f"{family} fp32 grads (worst: {worst})", relative(grads[worst], ref_grads[worst]), FP32_RELATIVE))
    if device.type == "cuda":
        bf16_logits, _ = logits_and_grads(model, tokens.to(device), "bf16")
        checks.append((f"{family} bf16 autocast logits", relative(bf16_logits, ref_logits), BF16_RELATIVE))
    model.eval()
    with torch.no_grad():
        full = model(tokens.to(device))
        cache = model.allocate_cache(2)
        steps = [model(tokens[:, :40].to(device), cache=cache)]
        steps += [model(tokens[:, t : t + 1].to(device), cache=cache) for t in range(40, 48)]
        checks.append((f"{family} cached decoding", relative(torch.cat(steps, 1), full), FP32_RELATIVE))
        cache = model.allocate_cache(2)
        dtypes = [t.dtype for t in cache_tensors(cache)]
        with autocast("bf16" if device.type == "cuda" else "fp32", device):
            for t in range(8):
                model(tokens[:, t : t + 1].to(device), cache=cache)
        after = cache_tensors(cache)
        kept = [t.dtype for t in after] == dtypes and all(
            bool(torch.isfinite(torch.view_as_real(t) if t.is_complex() else t).all())
            for t in after
            if t.is_floating_point() or t.is_complex()
        )
        checks.append((f"{family} states keep dtype under autocast", 0.0 if kept else 1.0, 0.0))
    return checks


def cache_tensors(cache) -> list[torch.Tensor]:
    found, stack = [], list(cache.states)
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif hasattr(item, "parts"):
            stack.extend(item.parts())
        elif hasattr(item, "__dict__"):
            stack.extend(v for v in vars(item).values() if isinstance(v, torch.Tensor))
    return found


def timed(fn, device: torch.device, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def speed_row(preset: str, device: torch.device) -> str:
    """Prefill 1x2048 and greedy decode per token, bf16 autocast, small preset: dispatched kernels
    against the same model on the torch references (HYBRIDLM_KERNELS=reference)."""
    model = HybridLM(preset_config(preset, "small")).to(device).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, 2048), device=device)
    times = {}
    for choice in ("", "reference"):
        os.environ[dispatch.ENV_VAR] = choice
        dispatch.kernel_choice.cache_clear()

        def prefill():
            with torch.no_grad(), autocast("bf16", device):
                model(prompt)

        def decode():
            with torch.no_grad(), autocast("bf16", device):
                cache = model.allocate_cache(1)
                model(prompt[:, :64], cache=cache)
                for t in range(32):
                    model(prompt[:, 64 + t : 65 + t], cache=cache)

        times[choice] = (timed(prefill, device), timed(decode, device, repeats=2))
    os.environ.pop(dispatch.ENV_VAR)
    dispatch.kernel_choice.cache_clear()
    (ours_prefill, ours_decode), (ref_prefill, ref_decode) = times[""], times["reference"]
    return (
        f"| {preset} | {ours_prefill * 1e3:.1f} ms | {ref_prefill / ours_prefill:.2f}x "
        f"| {ours_decode / 32 * 1e3:.2f} ms | {ref_decode / ours_decode:.2f}x |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; the speed table stops when spent")
    args = parser.parse_args()
    start = time.perf_counter()
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print(f"GPU CHECK: FAIL (--device cuda, but torch {torch.__version__} sees no CUDA device)")
        return 1
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    kernels = {name: importlib.util.find_spec(name) is not None for name in ("mamba_ssm", "causal_conv1d")}
    print(machine_line())
    name = torch.cuda.get_device_name(device) if cuda else "none"
    print(f"device: {name}; torch {torch.__version__} (CUDA {torch.version.cuda}); kernels {kernels}")
    print(f"backend for {device.type} tensors: {dispatch.backend_for(torch.zeros(1, device=device))}")
    failures, count = [], 0
    for family, pattern in FAMILIES.items():
        try:
            checks = parity_checks(family, pattern, device)
        except Exception as error:  # a crashing kernel is a failed check, and the others still run
            checks = [(f"{family} raised {type(error).__name__}: {error}", float("inf"), 0.0)]
        for check, error, tolerance in checks:
            count += 1
            ok = error <= tolerance
            failures += [] if ok else [check]
            print(f"{'ok  ' if ok else 'FAIL'} {check}: {error:.2e} (tolerance {tolerance:.0e})")
    if cuda:
        print("\n| preset (small, bf16) | prefill 1x2048 | vs reference | decode / token | vs reference |")
        print("|---|---|---|---|---|")
        for preset in SPEED_PRESETS:
            if time.perf_counter() - start > args.budget:
                print(f"(budget of {args.budget:.0f} s spent: {preset} and later presets skipped)")
                break
            print(speed_row(preset, device))
    passed = f"{count - len(failures)}/{count} parity checks passed"
    if failures:
        print(f"GPU CHECK: FAIL ({passed}; failed: {'; '.join(failures)})")
        return 1
    if not cuda:
        print(f"GPU CHECK: SKIPPED (no CUDA device; the harness ran on CPU: {passed})")
        return 0
    print(f"GPU CHECK: PASS ({passed} on {name}; kernels {kernels}; speed table above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
