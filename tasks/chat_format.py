"""The Tülu chat format (allenai/tulu-v2-sft-mixture's ``messages``) as scored/unscored text segments.

A conversation ``[{"role": "system"|"user"|"assistant", "content": str}, ...]`` is rendered turn by turn as

    <|system|>\\n{content}\\n            (optional)
    <|user|>\\n{content}\\n
    <|assistant|>\\n{content}</s>\\n

where ``</s>`` is the tokenizer's EOS token (inserted by id, never typed as text) and contents are stripped. Only the
assistant contents and the EOS that closes each assistant turn are scored (``labels`` = token ids); role headers,
system/user turns and the newline after each EOS are masked (``-100``). The final newline of the conversation is
dropped, so a conversation ends on the last assistant EOS.

Rows that cannot be rendered are rejected with a reason (``validate_messages``): ``messages`` missing or not a
list, an unknown role, a missing/non-string/empty content, or no assistant turn at all.
"""
from __future__ import annotations

from typing import Any, Sequence

from tasks.supervised import EOS, Segment

ROLE_HEADERS = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}


def validate_messages(messages: Any) -> str | None:
    """``None`` when ``messages`` can be rendered, else the reason (a short phrase used as a skip-count key)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        return "missing_messages"
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLE_HEADERS:
            return "unknown_role"
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            return "empty_content"
    if not any(m["role"] == "assistant" for m in messages):
        return "no_assistant_turn"
    return None


def tulu_segments(messages: Sequence[dict]) -> list[Segment]:
    """Segments ``(text | EOS, scored)`` of one conversation (call ``validate_messages`` first)."""
    segments: list[Segment] = []
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"].strip()
        last = i == len(messages) - 1
        if role == "assistant":
            segments.append((ROLE_HEADERS[role], False))
            segments.append((content, True))
            segments.append((EOS, True))
            if not last:
                segments.append(("\n", False))
        else:
            segments.append((ROLE_HEADERS[role] + content + ("" if last else "\n"), False))
    return _merge_unscored(segments)


def _merge_unscored(segments: list[Segment]) -> list[Segment]:
    """Join neighbouring unscored text segments (so "\\n<|user|>\\n…" is tokenized as one piece)."""
    merged: list[Segment] = []
    for text, scored in segments:
        if merged and not scored and not merged[-1][1] and text is not EOS and merged[-1][0] is not EOS:
            merged[-1] = (merged[-1][0] + text, False)
        else:
            merged.append((text, scored))
    return merged


def render_tulu(messages: Sequence[dict], eos_token: str = "</s>") -> str:
    """The conversation as one string (for display and samples), EOS written as ``eos_token``."""
    return "".join(eos_token if text is EOS else text for text, _ in tulu_segments(messages))


def tulu_prompt(messages: Sequence[dict]) -> str:
    """The text a model sees before it answers: all turns, then "<|assistant|>\\n" (generation prompt)."""
    body = "".join(ROLE_HEADERS[m["role"]] + m["content"].strip() + "\n" for m in messages)
    return body + ROLE_HEADERS["assistant"]
