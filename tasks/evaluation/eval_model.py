"""The model an evaluation runs on: adapters merged, eval mode, the trained model left as it was.

``evaluation_model(model, merge="copy")`` is a context manager yielding a plain ``transformers`` model:

- a plain model is yielded as it is;
- a PEFT model with ``merge="copy"`` (default): a deep copy with the adapters merged (``merge_and_unload``); the
  trained model, its adapter weights and the optimizer's references stay exactly as they were. Costs one more copy of
  the model in memory;
- a PEFT model with ``merge="in_place"``: ``merge_adapter()`` on the model itself, the base model yielded, then
  ``unmerge_adapter()`` on exit. No extra memory, but in low precision the base weights after unmerging may differ from
  the originals by rounding (W + ΔW − ΔW); meant for the final evaluation of large models.

Either way the caller's train/eval mode is restored on exit.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

MERGE_MODES = ("copy", "in_place")


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
def evaluation_model(model, merge: str = "copy"):
    if merge not in MERGE_MODES:
        raise ValueError(f"task.eval.merge={merge!r} is not one of {list(MERGE_MODES)}")
    was_training = model.training
    in_place = merge == "in_place" and is_peft_model(model)
    if in_place:
        model.merge_adapter()
        target = model.get_base_model()
    else:
        target = merged_copy(model)
    target.eval()
    try:
        yield target
    finally:
        if in_place:
            model.unmerge_adapter()
        elif target is not model:
            del target
        model.train(was_training)
