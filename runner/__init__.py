"""Experiment glue used by ``train.py``: model/tokenizer factories, adapters, training loop wiring, result records."""
