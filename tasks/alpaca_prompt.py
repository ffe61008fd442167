"""The Alpaca-style prompt MetaMath trains and evaluates with (one source for training and evaluation).

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {query}

    ### Response:

The response follows after one space and ends with "The answer is: <answer>" (MetaMathQA's convention).
"""
from __future__ import annotations

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{query}\n\n### Response:"
)
RESPONSE_SEPARATOR = " "


def alpaca_prompt(query: str) -> str:
    """The prompt for ``query`` (a math question), ending with "### Response:"."""
    return ALPACA_TEMPLATE.format(query=query.strip())
