"""Shared fixtures: a hand-made WordPiece vocabulary, a tiny random BERT checkpoint, the real-data dir."""
from __future__ import annotations

import os
import sys

import pytest

# Test modules share helpers across the mirrored folders (e.g. core/test_run_safety.py uses pretrain/test_pretrain_e2e):
# make every folder importable, so that any single file runs alone, not only inside the whole suite.
_TESTS = os.path.dirname(os.path.abspath(__file__))
for _folder in ("", "core", "pretrain", "finetune", "recipes"):
    if os.path.join(_TESTS, _folder).rstrip(os.sep) not in sys.path:
        sys.path.insert(0, os.path.join(_TESTS, _folder).rstrip(os.sep))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a an of to in and is was it this that on for with as by at from be are not good bad great terrible "
    "movie film plot acting story fun boring love hate i you he she we they john smith paris london berlin "
    "google apple visited works lives new york city river germany france when where who what which did ? . , ! "
    "' - ( ) 1 2 3 4 5 6 7 8 9 0 john's un ##believ ##able ##s ##ed ##ing ##ly ##er x y z"
).split()


def make_vocab() -> list[str]:
    """[PAD]=0 ... [MASK]=4, then words, then single letters and their ## forms (so nothing is [UNK])."""
    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab = list(SPECIALS)
    for tok in WORDS + letters + ["##" + c for c in letters]:
        if tok not in vocab:
            vocab.append(tok)
    return vocab


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from transformers import BertTokenizer

    vocab = make_vocab()
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    assert len(tok) == len(vocab), "tokenizer ignored the vocabulary"
    return tok


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tiny_tokenizer):
    """A saved tiny random BertForMaskedLM + tokenizer: a stand-in for a pretrained backbone."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    path = tmp_path_factory.mktemp("tiny-bert")
    BertForMaskedLM(config).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def data_dir():
    """$MLM_DATA_DIR (the shared real datasets), or skip the test."""
    path = os.environ.get("MLM_DATA_DIR")
    if not path or not os.path.isdir(path):
        pytest.skip("real data not available: set MLM_DATA_DIR to the shared data folder")
    return path


SENTENCES = [
    "the cat sat on the mat and looked at the dog",
    "a dog ran in the park with a red ball",
    "birds sing in the morning when the sun rises",
    "the river flows to the sea past the old mill",
    "children read books in the quiet library",
    "the baker makes fresh bread every morning",
]


@pytest.fixture(scope="session")
def sentence_corpus(tmp_path_factory) -> str:
    """A small pretraining corpus: 60 blank-line separated documents of 3 sentences each."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    docs = [" ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(3)) for i in range(60)]
    path.write_text("\n\n".join(docs) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory):
    """A saved tiny random RoBERTa (byte-level BPE, one token type, positions offset by the padding id:
    130 embeddings hold 128 tokens): the other big tokenizer family, next to tiny_bert_dir."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    text = " ".join(WORDS) + " John Smith visited Paris . Angela lives in Berlin , Germany ."
    bpe.train_from_iterator([text] * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    tok = RobertaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                               cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2, type_vocab_size=1)
    path = tmp_path_factory.mktemp("tiny-roberta")
    RobertaForMaskedLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def pytest_collection_modifyitems(config, items):
    """Compatibility checks of library internals (tests/compat) run only when asked: MLM_COMPAT=1."""
    if os.environ.get("MLM_COMPAT") == "1":
        return
    skip = pytest.mark.skip(reason="compatibility check of library internals; `make test-latest` runs it (MLM_COMPAT=1)")
    for item in items:
        if item.get_closest_marker("compat"):
            item.add_marker(skip)


@pytest.fixture
def mlm_log(caplog):
    """caplog for the "mlm" logger, which does not propagate once the CLI has set up console logging."""
    import logging

    logger = logging.getLogger("mlm")
    logger.addHandler(caplog.handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)


# ------------------------------------------------------------------ distributed runs (test_distributed, test_scale_out)


@pytest.fixture(scope="session")
def corpus(sentence_corpus):
    """The pretraining corpus of the launched runs, with a cache folder next to it."""
    return {"file": sentence_corpus, "cache": os.path.join(os.path.dirname(sentence_corpus), "cache")}


@pytest.fixture(scope="session")
def two_ranks(corpus, tmp_path_factory):
    """20 steps on 2 processes through recipes/accelerate/cpu-2proc.yaml (no ACCELERATE_USE_CPU in the env)."""
    from dist_helpers import ROOT, launch, pretrain_args

    out = tmp_path_factory.mktemp("dist") / "two"
    result = launch(pretrain_args(corpus, out), config=os.path.join(ROOT, "recipes", "accelerate", "cpu-2proc.yaml"))
    print(f"2-process pretraining: {result.seconds:.1f}s")
    return out, result
