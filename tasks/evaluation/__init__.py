"""Evaluation helpers of the fine-tuning tasks: answer extraction, metrics, the lm-eval glue, AdaptLLM scoring.

Nothing here knows about Hydra or the runner: every function takes plain values (strings, models, tokenizers)."""
