"""``mora-lm-eval``: lm-evaluation-harness's command line with MoRA registered with PEFT first.

lm-eval's ``hf`` model loads an adapter with ``peft.PeftModel.from_pretrained``, which knows the type ``MORA`` only
after ``import moRA``; plain ``lm-eval`` therefore fails on a MoRA adapter with ``KeyError: 'MORA'``. This command takes
exactly lm-eval's arguments::

    mora-lm-eval --model hf --model_args pretrained=meta-llama/Llama-2-7b-hf,peft=outputs/<run>/adapter --tasks gsm8k

(also ``python -m moRA.lm_eval_cli …``).
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run lm-eval's CLI on ``argv`` (default: the process's arguments) with MoRA registered."""
    import moRA  # noqa: F401  (registers the PEFT type MORA)

    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as exc:
        raise SystemExit(f"error: mora-lm-eval needs lm-eval (pip install lm-eval): {exc}") from None
    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    saved = sys.argv
    sys.argv = ["mora-lm-eval", *args]  # lm-eval's CLI reads sys.argv itself
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
