"""Scoring rules for prompts with fixed answer options, and greedy generation with stop strings.

``option_losses``: for a context c and options o_1..o_n, the mean negative log-likelihood of the tokens of each
option given c (length-normalised loss: the sum over the option's tokens divided by their number). The option is
appended to the context after one space unless the context already ends in whitespace; context and option are
tokenized separately (no special tokens) after BOS when the tokenizer adds one (``tokenizer_adds_bos``), so the
option's tokens are exactly those scored.
A context longer than ``max_length`` minus the option is cut from the LEFT. A blank option (empty or only
whitespace) gets +inf and is never chosen.

``choose_option``: the index of the smallest loss; ties (equal losses) go to the LOWEST index.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from tasks.supervised import tokenizer_adds_bos


def option_separator(context: str) -> str:
    return "" if not context or context[-1].isspace() else " "


@torch.no_grad()
def option_losses(model, tokenizer, context: str, options: Sequence[str], max_length: int = 2048) -> list[float]:
    """Mean per-token NLL of each option after ``context`` (see module docstring). Returns n floats."""
    bos = [tokenizer.bos_token_id] if tokenizer_adds_bos(tokenizer) else []
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    sep = option_separator(context)
    conts = [tokenizer(sep + opt, add_special_tokens=False)["input_ids"] if opt.strip() else [] for opt in options]
    seqs, spans = [], []
    for cont in conts:
        if not cont:
            seqs.append(None)
            spans.append(None)
            continue
        cont = cont[-(max_length - len(bos) - 1):] if len(cont) >= max_length - len(bos) else cont
        room = max_length - len(bos) - len(cont)
        ctx_kept = ctx[-room:] if room > 0 else []
        prefix = bos + ctx_kept
        if not prefix:  # nothing to condition the first option token on
            prefix = [tokenizer.eos_token_id]
        seqs.append(prefix + cont)
        spans.append((len(prefix), len(cont)))
    present = [i for i, s in enumerate(seqs) if s is not None]
    losses = [math.inf] * len(options)
    if not present:
        return losses
    device = next(model.parameters()).device
    width = max(len(seqs[i]) for i in present)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(present), width), pad, dtype=torch.long)
    mask = torch.zeros((len(present), width), dtype=torch.long)
    for row, i in enumerate(present):
        ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
        mask[row, : len(seqs[i])] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    for row, i in enumerate(present):
        start, n = spans[i]
        targets = ids[row, start:start + n].to(device)
        picked = logprobs[row, start - 1:start - 1 + n].gather(-1, targets[:, None]).squeeze(-1)
        losses[i] = float(-picked.mean())
    return losses


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
