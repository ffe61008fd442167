"""The byte tokenizer: exact round trip, fixed ids, padding, batch decode, save/load."""
import pytest
from transformers import AutoTokenizer

from runner.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, byte_tokenizer

TEXTS = [
    "",
    "plain ascii",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n",
    "Ünïcödé — 日本語 🎉 emoji",
    "control \x00\x01\x7f bytes",
    "a</s>b<pad>",  # special-token strings typed in text are read as the special tokens, and decode back
]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact(tok, text):
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text


def test_ids_are_the_utf8_bytes(tok):
    text = "Héllo 🎉\n"
    assert tok(text)["input_ids"] == list(text.encode("utf-8"))
    assert tok("x</s>")["input_ids"] == [ord("x"), EOS_ID]


def test_special_ids_and_sizes(tok):
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID) == (256, 257, 258)
    assert len(tok) == VOCAB_SIZE == 259
    assert tok.model_max_length == 512
    assert byte_tokenizer(model_max_length=64).model_max_length == 64
    assert tok.decode([BOS_ID, 104, 105, EOS_ID], skip_special_tokens=True) == "hi"


def test_add_bos_option():
    tok = byte_tokenizer(add_bos=True)
    assert tok("hi")["input_ids"] == [BOS_ID, 104, 105]
    assert tok("hi", add_special_tokens=False)["input_ids"] == [104, 105]


def test_padding_and_batch_decode(tok):
    batch = tok(["ab", "abcd"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == [[97, 98, PAD_ID, PAD_ID], [97, 98, 99, 100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert tok.batch_decode(batch["input_ids"], skip_special_tokens=True) == ["ab", "abcd"]
    left = byte_tokenizer()
    left.padding_side = "left"
    assert left(["ab", "abc"], padding=True)["input_ids"][0] == [PAD_ID, 97, 98]


def test_truncation_uses_model_max_length():
    tok = byte_tokenizer(model_max_length=4)
    assert tok("abcdefgh", truncation=True)["input_ids"] == [97, 98, 99, 100]


def test_save_and_reload(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert again(text)["input_ids"] == tok(text)["input_ids"]
        assert again.decode(tok(text)["input_ids"]) == text
    assert (again.pad_token_id, again.bos_token_id, again.eos_token_id, len(again)) == (256, 257, 258, 259)
    assert again.model_max_length == tok.model_max_length


def test_bad_max_length_is_rejected():
    with pytest.raises(ValueError, match="model_max_length"):
        byte_tokenizer(model_max_length=0)
