"""A byte-level tokenizer that needs no download and no training.

Every UTF-8 byte is one token: byte ``b`` has id ``b`` (0..255). Three special tokens follow:
``<pad>`` = 256, ``<s>`` (bos) = 257, ``</s>`` (eos) = 258, so the vocabulary has 259 entries.

Built with the ``tokenizers`` library: the ``ByteLevel`` pre-tokenizer (GPT-2's byte-to-printable-character map, no
regex split, no prefix space) turns each byte into one character, a BPE model whose vocabulary is exactly those 256
characters and whose merge list is empty turns each character into its id, and the ``ByteLevel`` decoder maps the
characters back to bytes. Hence ``decode(encode(t)) == t`` for every string ``t``: no normaliser, no stripping, no
clean-up of spaces. The result is a ``transformers.PreTrainedTokenizerFast``, so ``tokenizer(text)``, padding,
``decode``, ``save_pretrained``/``AutoTokenizer.from_pretrained``, Trainer collators and lm-eval's ``HFLM`` work as
with any Hub tokenizer. Special-token strings typed in the text (e.g. ``"</s>"``) are read as the special token.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

N_BYTES = 256
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<s>", "</s>"
PAD_ID, BOS_ID, EOS_ID = 256, 257, 258
VOCAB_SIZE = 259


def byte_to_char() -> list[str]:
    """``byte_to_char()[b]``: the printable character the ``ByteLevel`` pre-tokenizer uses for byte ``b``.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves; the other 68 bytes are
    mapped, in increasing order, to the code points 256, 257, ….
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), 256))
    chars, n_other = [], 0
    for b in range(N_BYTES):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(N_BYTES + n_other))
            n_other += 1
    return chars


def _build_backend(add_bos: bool) -> Tokenizer:
    vocab = {c: b for b, c in enumerate(byte_to_char())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([PAD_TOKEN, BOS_TOKEN, EOS_TOKEN])  # ids 256, 257, 258 (appended in order)
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, BOS_ID)]
        )
    return backend


def byte_tokenizer(model_max_length: int = 512, add_bos: bool = False) -> PreTrainedTokenizerFast:
    """The byte tokenizer (259 ids: bytes 0..255, then ``<pad>``=256, ``<s>``=257, ``</s>``=258).

    ``model_max_length``: the longest sequence the model accepts (truncation, lm-eval's max length).
    ``add_bos``: prepend ``<s>`` when encoding with ``add_special_tokens=True``. Default: add nothing, so
    ``tokenizer(t)["input_ids"] == list(t.encode("utf-8"))``.
    """
    if not isinstance(model_max_length, int) or model_max_length <= 0:
        raise ValueError(f"byte_tokenizer: model_max_length must be a positive int, got {model_max_length!r}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_build_backend(add_bos),
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    ids = (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer))
    if ids != (PAD_ID, BOS_ID, EOS_ID, VOCAB_SIZE):  # a tokenizers/transformers change must not shift the ids
        raise RuntimeError(f"byte_tokenizer: unexpected (pad, bos, eos, vocab size) = {ids}")
    return tokenizer
