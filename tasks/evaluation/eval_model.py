"""The model an evaluation runs on: adapters merged (``merge_and_unload``), eval mode, the trained model untouched.

``evaluation_model(model)`` is a context manager. For a PEFT model it yields a merged deep copy (the trained
PeftModel, its adapter weights and its optimizer references stay exactly as they were); for a plain
``transformers`` model it yields the model itself. Either way the caller's train/eval mode is restored on exit.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def merged_copy(model):
    """A plain transformers model equal to ``model`` with every adapter merged into the base weights."""
    if not is_peft_model(model):
        return model
    clone = copy.deepcopy(model)
    try:
        return clone.merge_and_unload()
    except Exception as exc:
        raise ValueError(f"cannot merge the adapter for evaluation ({type(exc).__name__}: {exc})") from None


@contextmanager
def evaluation_model(model):
    was_training = model.training
    target = merged_copy(model)
    target.eval()
    try:
        yield target
    finally:
        if target is not model:
            del target
        model.train(was_training)
