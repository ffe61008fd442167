"""Scoring rules for prompts with fixed answer options, and greedy generation with stop strings.

``option_losses``: for a context c and options o_1..o_n, the mean negative log-likelihood of the tokens of each
option given c (length-normalised loss: the sum over the option's tokens divided by their number). The option is
appended to the context after one space unless the context already ends in whitespace; context and option are
tokenized separately (no special tokens) after BOS when the tokenizer adds one (``tokenizer_adds_bos``), so the
option's tokens are exactly those scored.
A context longer than ``max_length`` minus the option is cut from the LEFT. A blank option (empty or only
whitespace) gets +inf and is never chosen.

``choose_option``: the index of the smallest loss; ties (equal losses) go to the LOWEST index.

``option_losses_batch`` scores many (context, options) items with ``batch_size`` sequences per forward pass
(right-padded; a causal model's logits at real positions do not see the padding), shortest first so that a batch
pads little; ``option_losses`` is one item.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from tasks.supervised import tokenizer_adds_bos


def option_separator(context: str) -> str:
    return "" if not context or context[-1].isspace() else " "


def _option_sequences(tokenizer, context: str, options: Sequence[str], max_length: int):
    """Per option: (token ids of prefix + option, (start of the option, its length)), or None for a blank option."""
    bos = [tokenizer.bos_token_id] if tokenizer_adds_bos(tokenizer) else []
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    sep = option_separator(context)
    out = []
    for opt in options:
        cont = tokenizer(sep + opt, add_special_tokens=False)["input_ids"] if opt.strip() else []
        if not cont:
            out.append(None)
            continue
        cont = cont[-(max_length - len(bos) - 1):] if len(cont) >= max_length - len(bos) else cont
        room = max_length - len(bos) - len(cont)
        prefix = bos + (ctx[-room:] if room > 0 else [])
        if not prefix:  # nothing to condition the first option token on
            prefix = [tokenizer.eos_token_id]
        out.append((prefix + cont, (len(prefix), len(cont))))
    return out


@torch.no_grad()
def option_losses_batch(model, tokenizer, items: Sequence[tuple[str, Sequence[str]]], max_length: int = 2048,
                        batch_size: int = 16, progress=None) -> list[list[float]]:
    """``option_losses`` of every (context, options) item, ``batch_size`` sequences per forward pass.

    ``progress``: called with the number of items finished after each batch (e.g. ``tqdm.update``)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size}; expected a positive integer")
    losses = [[math.inf] * len(options) for _, options in items]
    jobs = []   # (item, option, ids, span)
    for i, (context, options) in enumerate(items):
        for j, seq in enumerate(_option_sequences(tokenizer, context, options, max_length)):
            if seq is not None:
                jobs.append((i, j, seq[0], seq[1]))
    jobs.sort(key=lambda job: (len(job[2]), job[0], job[1]))
    remaining = [sum(1 for job in jobs if job[0] == i) for i in range(len(items))]
    if progress is not None and (done := sum(1 for r in remaining if r == 0)):
        progress(done)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        width = max(len(job[2]) for job in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, job in enumerate(batch):
            ids[row, : len(job[2])] = torch.tensor(job[2])
            mask[row, : len(job[2])] = 1
        logprobs = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        finished = 0
        for row, (i, j, _, (begin, n)) in enumerate(batch):
            targets = ids[row, begin:begin + n].to(device)
            picked = logprobs[row, begin - 1:begin - 1 + n].gather(-1, targets[:, None]).squeeze(-1)
            losses[i][j] = float(-picked.mean())
            remaining[i] -= 1
            finished += remaining[i] == 0
        if progress is not None and finished:
            progress(finished)
    return losses


def option_losses(model, tokenizer, context: str, options: Sequence[str], max_length: int = 2048) -> list[float]:
    """Mean per-token NLL of each option after ``context`` (see module docstring). Returns n floats."""
    return option_losses_batch(model, tokenizer, [(context, options)], max_length, batch_size=max(1, len(options)))[0]


def choose_option(losses: Sequence[float]) -> int:
    """Index of the lowest loss; ties → the lowest index."""
    if not losses:
        raise ValueError("choose_option: no options")
    return min(range(len(losses)), key=lambda i: (losses[i], i))


@torch.no_grad()
def greedy_generate(model, tokenizer, prompt: str, max_new_tokens: int, stop: Sequence[str] = (),
                    max_length: int = 2048) -> str:
    """Greedy continuation of ``prompt`` (left-truncated to fit), cut before the first stop string."""
    bos = [tokenizer.bos_token_id] if tokenizer_adds_bos(tokenizer) else []
    ctx = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    room = max(1, max_length - max_new_tokens - len(bos))
    ids = torch.tensor([bos + ctx[-room:]], device=next(model.parameters()).device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    cut = len(text)
    for s in stop:
        pos = text.find(s)
        if s and pos >= 0:
            cut = min(cut, pos)
    return text[:cut].strip()
