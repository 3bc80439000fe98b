"""`python -m hybridlm.lm_eval run --model hybridlm --model_args pretrained=RUN_DIR --tasks T ...`:
lm_eval's command line, with the hybridlm backend registered first."""

from lm_eval.__main__ import cli_evaluate

from . import HybridLMEval  # noqa: F401  (registers --model hybridlm)

if __name__ == "__main__":
    cli_evaluate()
