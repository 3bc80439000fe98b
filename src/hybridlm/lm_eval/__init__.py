"""lm-evaluation-harness backend (the `eval` extra): `--model hybridlm` for any saved model.

Importing this package registers the backend; `python -m hybridlm.lm_eval ARGS` is lm_eval's own
command line with it registered (lm-eval 0.4.13 loads no plugins by itself).
"""

from .backend import HybridLMEval

__all__ = ["HybridLMEval"]
