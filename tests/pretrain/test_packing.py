"""mlm.pretrain.packing: no token lost, block layout, the deterministic validation split, the cache, real data."""
from __future__ import annotations

import json
import logging
import os
import pickle

import numpy as np
import pytest

from mlm.pretrain import fast_encode, packing
from mlm.pretrain.corpus import FileCorpus, corpus_sources
from mlm.errors import ConfigError, DataError
from mlm.pretrain.packing import build_packed_dataset

CLS, SEP, PAD, MASK = 2, 3, 0, 4  # the conftest vocabulary


def documents(n: int = 60) -> list[str]:
    """Documents of varied lengths (1 to ~60 tokens), all distinct, with a few awkward ones."""
    words = "the movie was good bad great plot acting story fun paris london john visited new york".split()
    docs = [" ".join(words[(i * 3 + j) % len(words)] for j in range(1 + (i * 7) % 23)) + f" {i}" for i in range(n)]
    docs[5] = "a literal [MASK] and [CLS] in the text"  # must be tokenised as text, not as special tokens
    docs[9] = "\x01\x02"  # no token at all after BertNormalizer's clean_text: skipped, no empty document
    return docs


def make_corpus(tmp_path, docs, name="corpus.txt") -> FileCorpus:
    path = tmp_path / name
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return FileCorpus([str(path)], document_separator="line")


def token_ids(tokenizer, doc: str) -> list[int]:
    """The reference: the tokenizer called directly, special-token text read as text."""
    return tokenizer(doc, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def expected_stream(tokenizer, docs) -> list[int]:
    """Documents tokenised one by one and joined with [SEP]; token-less documents leave no trace."""
    stream = []
    for doc in docs:
        ids = token_ids(tokenizer, doc)
        if ids:
            stream += ([SEP] if stream else []) + ids
    return stream


def unpack(blocks) -> list[int]:
    """The token stream inside the blocks: drop each block's [CLS] and closing [SEP]."""
    stream = []
    for i in range(len(blocks)):
        row = blocks[i]["input_ids"]
        assert row[0] == CLS and row[-1] == SEP and PAD not in row
        stream += row[1:-1].tolist()
    return stream


def split_documents(stream: list[int]) -> list[tuple]:
    docs, current = [], []
    for t in stream:
        if t == SEP:
            docs.append(tuple(current))
            current = []
        else:
            current.append(t)
    return docs + [tuple(current)] if stream else docs


def test_packing_loses_no_token_and_places_specials(tmp_path, tiny_tokenizer):
    docs = documents()
    train, valid = build_packed_dataset(make_corpus(tmp_path, docs), None, tiny_tokenizer, max_seq_length=16,
                                        cache_dir=str(tmp_path / "cache"), validation_split_percentage=0)
    expected = expected_stream(tiny_tokenizer, docs)
    assert unpack(train) == expected
    assert len(valid) == 0 and valid.num_tokens == 0
    rows = np.stack([train[i]["input_ids"] for i in range(len(train) - 1)])  # (N-1, T)
    last = train[len(train) - 1]["input_ids"]
    assert rows.shape == (len(train) - 1, 16) and rows.dtype == np.int64 and last.dtype == np.int64
    assert (rows[:, 0] == CLS).all() and (rows[:, -1] == SEP).all()
    assert 3 <= len(last) < 16 and last[0] == CLS and last[-1] == SEP  # the tail, returned without padding
    on_disk = np.fromfile(train.path, np.uint16).reshape(-1, 16)
    assert on_disk[-1].tolist() == last.tolist() + [PAD] * (16 - len(last))
    assert MASK not in rows and (rows == CLS).sum() == len(rows)  # literal "[MASK]"/"[CLS]" stayed text
    assert len(train) == -(-len(expected) // 14)
    assert train.num_tokens == rows.size + len(last) == len(expected) + 2 * len(train)
    meta = json.load(open(os.path.join(os.path.dirname(train.path), "meta.json")))
    assert meta["splits"]["train"]["documents"] == len(docs) - 1  # the token-less document is skipped
    assert meta["splits"]["train"]["text_tokens"] == len(expected) - (len(docs) - 2)  # minus the separators


def test_stream_crosses_batches_unchanged(tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(packing, "BATCH_DOCUMENTS", 7)  # many batches: the carry between them is exercised
    docs = documents()
    small, _ = build_packed_dataset(make_corpus(tmp_path, docs), None, tiny_tokenizer, 16, str(tmp_path / "a"), 0)
    monkeypatch.setattr(packing, "BATCH_DOCUMENTS", 1000)
    large, _ = build_packed_dataset(make_corpus(tmp_path, docs), None, tiny_tokenizer, 16, str(tmp_path / "b"), 0)
    assert np.array_equal(np.fromfile(small.path, np.uint16), np.fromfile(large.path, np.uint16))


def test_long_documents_are_tokenised_in_pieces_with_the_same_tokens(tmp_path, tiny_tokenizer, monkeypatch):
    # Pieces of ~40 characters (every long document becomes several, some pieces hold only control characters)
    # and batches of 5 pieces: the blocks must equal the whole documents' tokens, one [SEP] per document.
    docs = documents()
    docs[12] = "\x01 " * 30 + "john visited paris " * 3  # a document whose first pieces have no token
    monkeypatch.setattr(packing, "PIECE_CHARS", 40)
    monkeypatch.setattr(packing, "BATCH_DOCUMENTS", 5)
    train, _ = build_packed_dataset(make_corpus(tmp_path, docs), None, tiny_tokenizer, 16, str(tmp_path / "a"), 0)
    assert unpack(train) == expected_stream(tiny_tokenizer, docs)
    meta = json.load(open(os.path.join(os.path.dirname(train.path), "meta.json")))
    assert meta["splits"]["train"]["documents"] == len(docs) - 1
    text = "ab " * 30
    assert "".join(packing.text_pieces(text, 10)) == text and all(p.startswith(" ") for p in packing.text_pieces(text, 10)[1:])
    assert packing.text_pieces("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]  # no whitespace: cut where it must


def test_validation_holdout_is_deterministic_disjoint_and_order_free(tmp_path, tiny_tokenizer):
    docs = documents(80)
    kept = [d for d in docs if token_ids(tiny_tokenizer, d)]
    train, valid = build_packed_dataset(make_corpus(tmp_path, docs), None, tiny_tokenizer, 16,
                                        str(tmp_path / "c1"), validation_split_percentage=25)
    train_docs, valid_docs = split_documents(unpack(train)), split_documents(unpack(valid))
    assert 5 <= len(valid_docs) <= 35
    assert not set(train_docs) & set(valid_docs)
    assert sorted(train_docs + valid_docs) == sorted(tuple(token_ids(tiny_tokenizer, d)) for d in kept)
    # the same documents in another order: the same documents are held out
    shuffled = make_corpus(tmp_path, docs[::-1], name="reversed.txt")
    _, valid2 = build_packed_dataset(shuffled, None, tiny_tokenizer, 16, str(tmp_path / "c2"), 25)
    assert sorted(split_documents(unpack(valid2))) == sorted(valid_docs)


def test_tiny_corpus_still_gets_a_validation_document(tmp_path, tiny_tokenizer):
    docs = ["the movie was good", "the plot was bad", "paris is great"]
    train, valid = build_packed_dataset(make_corpus(tmp_path, docs), None, tiny_tokenizer, 32, str(tmp_path / "c"), 1)
    assert split_documents(unpack(valid)) == [tuple(token_ids(tiny_tokenizer, "paris is great"))]
    assert len(split_documents(unpack(train))) == 2
    with pytest.raises(DataError, match="training split is empty"):
        build_packed_dataset(make_corpus(tmp_path, ["one doc only"], "one.txt"), None, tiny_tokenizer, 32,
                             str(tmp_path / "c"), 5)


def test_validation_corpus_is_packed_as_given(tmp_path, tiny_tokenizer):
    train_c = make_corpus(tmp_path, documents(20), "t.txt")
    valid_c = make_corpus(tmp_path, ["the movie was fun", "john visited london"], "v.txt")
    train, valid = build_packed_dataset(train_c, valid_c, tiny_tokenizer, 16, str(tmp_path / "c"))
    assert split_documents(unpack(valid)) == [tuple(token_ids(tiny_tokenizer, d)) for d in
                                              ["the movie was fun", "john visited london"]]
    assert len(split_documents(unpack(train))) == 19  # nothing held out of train (one document has no token)


def test_cache_hit_and_misses(tmp_path, tiny_tokenizer, caplog):
    cache = str(tmp_path / "cache")
    corpus = make_corpus(tmp_path, documents())
    first, _ = build_packed_dataset(corpus, None, tiny_tokenizer, 16, cache)
    with caplog.at_level(logging.INFO, logger="mlm"):
        again, _ = build_packed_dataset(make_corpus(tmp_path, documents()), None, tiny_tokenizer, 16, cache)
    assert again.path == first.path and "reusing" in caplog.text
    other_length, _ = build_packed_dataset(corpus, None, tiny_tokenizer, 32, cache)
    other_split, _ = build_packed_dataset(corpus, None, tiny_tokenizer, 16, cache, validation_split_percentage=10)
    changed = make_corpus(tmp_path, documents()[:-1] + ["a new last document"])
    other_text, _ = build_packed_dataset(changed, None, tiny_tokenizer, 16, cache)
    folders = {os.path.dirname(b.path) for b in (first, other_length, other_split, other_text)}
    assert len(folders) == 4
    assert sorted(os.listdir(cache)) == sorted(os.path.basename(f) for f in folders)  # no temporary leftovers


def test_a_failed_build_leaves_no_cache(tmp_path, tiny_tokenizer):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"the movie\n" * 3000 + b"bad \xff byte\n")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"bad\.txt:3001: not valid UTF-8"):
        build_packed_dataset(FileCorpus([str(path)], document_separator="line"), None, tiny_tokenizer, 16, str(cache))
    assert os.listdir(cache) == []


def test_packed_blocks_indexing_and_pickling(tmp_path, tiny_tokenizer):
    train, _ = build_packed_dataset(make_corpus(tmp_path, documents()), None, tiny_tokenizer, 16,
                                    str(tmp_path / "c"), 0)
    last = train[len(train) - 1]["input_ids"]
    assert np.array_equal(train[-1]["input_ids"], last)
    last[0] = 99  # a copy: the file is not touched
    assert train[-1]["input_ids"][0] == CLS
    with pytest.raises(IndexError):
        train[len(train)]
    clone = pickle.loads(pickle.dumps(train))
    assert len(pickle.dumps(train)) < 1000  # the memmap is not pickled with it
    assert np.array_equal(clone[3]["input_ids"], train[3]["input_ids"])


def test_large_vocabulary_uses_uint32(tmp_path, tiny_tokenizer):
    class BigVocab:
        """The tiny tokenizer claiming 70,000 tokens: packing must switch to 4-byte ids."""

        def __getattr__(self, name):
            return getattr(tiny_tokenizer, name)

        def __len__(self):
            return 70_000

    train, _ = build_packed_dataset(make_corpus(tmp_path, documents()), None, BigVocab(), 16, str(tmp_path / "c"), 0)
    assert train.dtype == np.uint32 and os.path.getsize(train.path) == len(train) * 16 * 4
    assert unpack(train) == expected_stream(tiny_tokenizer, documents())


def test_config_errors(tmp_path, tiny_tokenizer):
    corpus = make_corpus(tmp_path, documents())
    with pytest.raises(ConfigError, match="max_seq_length"):
        build_packed_dataset(corpus, None, tiny_tokenizer, 2, str(tmp_path))
    with pytest.raises(ConfigError, match="validation_split_percentage"):
        build_packed_dataset(corpus, None, tiny_tokenizer, 16, str(tmp_path), validation_split_percentage=100)


def test_wikitext2(data_dir, tmp_path):
    """Real data: a tokenizer trained on WikiText-2 valid, packing valid (train) and test (validation)."""
    from mlm.pretrain.wordpiece import train_wordpiece

    folder = os.path.join(data_dir, "wikitext-2-raw")
    train_c, valid_c = corpus_sources(train_file=os.path.join(folder, "wiki.valid.raw"),
                                      validation_file=os.path.join(folder, "wiki.test.raw"))
    tok = train_wordpiece(train_c.documents(), str(tmp_path / "tok"), vocab_size=4000)
    train, valid = build_packed_dataset(train_c, valid_c, tok, 128, str(tmp_path / "cache"))
    assert len(train) > 1000 and len(valid) > 1000
    rows = np.stack([train[i]["input_ids"] for i in range(len(train) - 1)])  # (N-1, 128)
    assert (rows[:, 0] == tok.cls_token_id).all() and (rows[:, -1] == tok.sep_token_id).all()
    assert (rows == tok.unk_token_id).mean() < 0.005
    text = tok.decode(rows[0])
    assert "valkyria" not in text and "homarus" in text  # wiki.valid.raw starts with Homarus gammarus
    stream = expected_stream(tok, train_c.documents())
    assert unpack(train) == stream
    again, _ = build_packed_dataset(train_c, valid_c, tok, 128, str(tmp_path / "cache"))
    assert again.path == train.path


# ---------------------------------------------------------------------------------------- ASCII shortcut

TRICKY = [
    "Plain ASCII, UPPER and lower; don't stop: 3.14 [MASK] [cls]",
    "Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 )",
    "café Café CAFÉ e\u0301 \u0301accent after a space, naïve—dash “quotes”",
    "tabs\tand\rcarriage\nnew lines,\x0bvertical\x0cfeed \x1cunit\x1fsep \x00nul \x7fdel end",
    "nbsp\xa0inside and\u3000ideographic space \u200bzero width",
    "ΟΔΟΣ Σίσυφος İstanbul ǅ ß ﬁne 😀 emoji👍ok",
    "x" * 150 + " " + "y" * 99 + "é " + "A" * 120,
    "   leading and trailing spaces   ",
    "é",
    "",
    "\x01\x02",
]


def _cased_tokenizer():
    from transformers import BertTokenizer

    from tests.conftest import make_vocab

    vocab = make_vocab() + ["Paris", "Café", "##é", "é", "[", "]", "A", "##A", "X"]
    return BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=False)


@pytest.mark.parametrize("cased", [False, True])
def test_ascii_shortcut_gives_the_tokenizer_s_own_ids(tiny_tokenizer, cased):
    tok = _cased_tokenizer() if cased else tiny_tokenizer
    encoder = fast_encode._Encoder(tok, np.uint16)
    assert encoder.plain is not None and encoder.lowercase is (not cased)
    lengths, tokens = encoder._with_shortcut(TRICKY)
    expected = [token_ids(tok, t) for t in TRICKY]
    assert lengths.tolist() == [len(e) for e in expected]
    assert tokens.tolist() == [t for e in expected for t in e]


def test_split_plain_cuts_only_at_ascii_whitespace():
    text = "ab cé d\u3000e f\tgü\nh"
    pieces = fast_encode._split_plain(text)
    assert "".join(pieces) == text
    assert pieces == ["ab ", "cé", " ", "d\u3000e", " f\t", "gü", "\nh"]


def test_ascii_shortcut_is_dropped_when_it_disagrees(tiny_tokenizer, monkeypatch, caplog):
    # a broken splitter that calls everything plain: "é" would skip accent stripping and become [UNK]
    monkeypatch.setattr(fast_encode, "_split_plain", lambda text: [text])
    encoder = fast_encode._Encoder(tiny_tokenizer, np.uint16)
    texts = ["the movie", "the café"]
    with caplog.at_level(logging.WARNING, logger="mlm"):
        lengths, tokens = encoder(texts)
    assert "disagrees" in caplog.text and encoder.plain is None
    assert tokens.tolist() == token_ids(tiny_tokenizer, "the movie") + token_ids(tiny_tokenizer, "the café")


@pytest.mark.parametrize("meta", ["{not json", "{}", '{"splits": {"train": {}}}'])
def test_a_damaged_cache_is_a_one_line_error(tmp_path, tiny_tokenizer, meta):
    corpus = make_corpus(tmp_path, documents())
    train, _ = build_packed_dataset(corpus, None, tiny_tokenizer, 16, str(tmp_path / "c"), 0)
    with open(os.path.join(os.path.dirname(train.path), "meta.json"), "w") as f:
        f.write(meta)
    with pytest.raises(DataError, match="damaged packing cache"):
        build_packed_dataset(corpus, None, tiny_tokenizer, 16, str(tmp_path / "c"), 0)
