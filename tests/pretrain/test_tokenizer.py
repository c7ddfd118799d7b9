"""mlm.pretrain.wordpiece: WordPiece training, saving in a layout AutoTokenizer loads, and loud failures on bad dirs."""
from __future__ import annotations

import itertools
import json
import os

import pytest

from mlm.errors import ConfigError, DataError
from mlm.pretrain.wordpiece import SPECIAL_TOKENS, train_wordpiece
from mlm.core.hf import load_tokenizer

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "pu"]


def texts() -> list[str]:
    """A few hundred sentences over ~1000 made-up words: enough pieces to fill a small vocabulary."""
    words = ["".join(p) for n in (2, 3) for p in itertools.product(SYLLABLES, repeat=n)]
    out = []
    for i in range(400):
        chunk = [words[(i * 7 + j * 13) % len(words)] for j in range(12)]
        out.append("The " + " ".join(chunk) + ", Paris!")
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("wordpiece"))
    return out, train_wordpiece(iter(texts()), out, vocab_size=150, min_frequency=2)


def test_saved_files_load_back_with_auto_tokenizer(trained):
    from transformers import AutoTokenizer

    out, tok = trained
    assert {"tokenizer.json", "tokenizer_config.json", "vocab.txt"} <= set(os.listdir(out))
    config = json.load(open(os.path.join(out, "tokenizer_config.json")))
    assert config["tokenizer_class"] == "BertTokenizer" and config["do_lower_case"] is True
    assert config["model_max_length"] == 512
    again = AutoTokenizer.from_pretrained(out)
    assert again.is_fast and len(again) == len(tok) == 150  # vocab_size honoured exactly on a rich corpus
    with open(os.path.join(out, "vocab.txt"), encoding="utf-8") as f:
        assert [line.rstrip("\n") for line in f] == again.convert_ids_to_tokens(list(range(len(again))))
    text = "The kalomi zeru, Paris! sapu"
    assert again(text)["input_ids"] == tok(text)["input_ids"]


def test_special_token_ids_and_templates(trained):
    _, tok = trained
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == SPECIAL_TOKENS
    ids = (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id)
    assert ids == (0, 1, 2, 3, 4)
    single = tok("kalo mine")
    assert single["input_ids"][0] == 2 and single["input_ids"][-1] == 3
    pair = tok("kalo", "mine ruto")
    ids, types = pair["input_ids"], pair["token_type_ids"]
    first_sep = ids.index(3)
    assert ids[0] == 2 and ids[-1] == 3 and ids.count(3) == 2
    assert set(types[: first_sep + 1]) == {0} and set(types[first_sep + 1:]) == {1}


def test_encode_decode_round_trip_lowercases(trained):
    _, tok = trained
    ids = tok("The KALOMI zeru, Paris!", add_special_tokens=False)["input_ids"]
    assert 1 not in ids  # no [UNK]: every character was seen in training
    assert tok.decode(ids) == "the kalomi zeru, paris!"
    assert ids == tok("the kalomi zeru, paris!", add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(tok("kalominesa", add_special_tokens=False)["input_ids"])
    assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])


def test_cased_tokenizer_keeps_case(tmp_path):
    tok = train_wordpiece(texts(), str(tmp_path), vocab_size=120, lowercase=False)
    assert json.load(open(tmp_path / "tokenizer_config.json"))["do_lower_case"] is False
    upper = tok("Paris", add_special_tokens=False)["input_ids"]
    assert upper != tok("paris", add_special_tokens=False)["input_ids"]
    assert tok.decode(upper) == "Paris"
    assert len(tok) <= 120


def test_small_corpus_gives_a_smaller_vocab_never_a_larger_one(tmp_path):
    tok = train_wordpiece(["tiny text", "tiny tiny text"], str(tmp_path), vocab_size=1000)
    assert len(SPECIAL_TOKENS) < len(tok) < 1000


def test_training_errors(tmp_path):
    with pytest.raises(ConfigError, match="vocab_size"):
        train_wordpiece(texts(), str(tmp_path / "a"), vocab_size=5)
    with pytest.raises(DataError, match="no text"):
        train_wordpiece(iter([]), str(tmp_path / "b"), vocab_size=100)

    def broken():
        yield "some text"
        raise DataError("corpus.txt:7: not valid UTF-8")

    with pytest.raises(DataError, match="corpus.txt:7"):  # an error inside the stream reaches the caller as is
        train_wordpiece(broken(), str(tmp_path / "c"), vocab_size=100)


def test_load_tokenizer_errors_name_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=rf": {empty}: no tokenizer files"):
        load_tokenizer(str(empty))
    with pytest.raises(ConfigError, match=rf"^tokenizer_name: {tmp_path / 'nope'}: no such folder$"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="^--model: .*: a file, not a model folder$"):
        load_tokenizer(__file__, field="--model")


def test_a_specials_only_vocabulary_fails_loudly(tmp_path):
    from transformers import BertTokenizer

    BertTokenizer().save_pretrained(tmp_path)  # the transformers 5 trap: a 5-token vocabulary
    with pytest.raises(DataError, match="only 5 tokens"):
        load_tokenizer(str(tmp_path))


def test_vocab_txt_larger_than_the_loaded_vocab_fails(trained, tmp_path):
    out, tok = trained
    for name in os.listdir(out):
        with open(os.path.join(out, name), "rb") as src, open(tmp_path / name, "wb") as dst:
            dst.write(src.read())
    with open(tmp_path / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("extra1\nextra2\n")
    with pytest.raises(DataError, match=r"vocab\.txt: lists 152 tokens but the loaded tokenizer has only 150"):
        load_tokenizer(str(tmp_path))


def test_vocab_txt_only_directory_loads(trained, tmp_path):
    out, tok = trained
    (tmp_path / "vocab.txt").write_text(open(os.path.join(out, "vocab.txt"), encoding="utf-8").read(), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    loaded = load_tokenizer(str(tmp_path))
    assert len(loaded) == len(tok)
    assert loaded("kalo mine")["input_ids"] == tok("kalo mine")["input_ids"]


def test_slow_tokenizer_is_refused(monkeypatch, tmp_path, trained):
    import transformers

    class Slow:
        is_fast = False

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Slow())
    with pytest.raises(ConfigError, match="not a fast"):
        load_tokenizer(trained[0])
