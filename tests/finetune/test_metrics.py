"""finetune/metrics/ (and the tag-scheme conversion of finetune/ner/tags.py, which keeps conlleval's chunks) on
hand-made inputs whose scores are worked out in the comments, plus
randomised cross-checks against seqeval (test-only dependency) and a transcription of conlleval."""
from __future__ import annotations

import math
import random

import pytest

from finetune.metrics.classification import classification_metrics, multilabel_metrics, regression_metrics
from finetune.metrics.conlleval import chunks, entity_scores
from finetune.metrics.squad import exact_match, f1, normalize_answer, squad_scores
from finetune.ner.tags import convert_tags, iobes_to_iob2, to_iob2

approx = pytest.approx


# ---------------------------------------------------------------------------------------------- cls


def test_classification_three_classes_one_never_predicted():
    # Confusion matrix (rows gold, cols predicted):   neg neu pos
    #   neg (2) ->  2   0   0
    #   neu (2) ->  1   0   1     "neu" is never predicted
    #   pos (2) ->  0   0   2
    # accuracy = 4/6.
    # neg: P = 2/3, R = 2/2, F1 = 2*(2/3)*1/(5/3) = 4/5;  pos: the same;  neu: P = 0/0 -> 0, R = 0, F1 = 0.
    # macro F1 = (0.8 + 0 + 0.8) / 3 = 1.6/3.  macro P = (2/3 + 0 + 2/3)/3 = 4/9;  macro R = (1 + 0 + 1)/3.
    # MCC (multiclass, Gorodkin): c = 4 correct, s = 6 samples, gold counts t = (2,2,2), predicted p = (3,0,3)
    #   (c*s - sum p.t) / sqrt((s^2 - sum p^2)(s^2 - sum t^2)) = (24 - 12) / sqrt((36 - 18)(36 - 12))
    #   = 12 / sqrt(432) = 12 / (12*sqrt 3) = 1/sqrt(3).
    out = classification_metrics([0, 0, 1, 1, 2, 2], [0, 0, 0, 2, 2, 2], ["neg", "neu", "pos"])
    assert out["accuracy"] == approx(4 / 6)
    assert out["macro_f1"] == approx(1.6 / 3)
    assert out["macro_precision"] == approx(4 / 9)
    assert out["macro_recall"] == approx(2 / 3)
    assert out["mcc"] == approx(1 / math.sqrt(3))
    assert out["per_class"]["neg"] == approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert out["per_class"]["neu"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert out["per_class"]["pos"]["f1"] == approx(0.8)


def test_classification_counts_classes_absent_from_the_data_and_rejects_bad_ids():
    # Class "c" appears nowhere: it still enters the macro average with F1 0, so a perfect 2-class
    # prediction scores macro F1 = (1 + 1 + 0)/3. Constant prediction -> MCC 0.0, not NaN.
    out = classification_metrics([0, 1], [0, 1], ["a", "b", "c"])
    assert out["accuracy"] == 1.0 and out["macro_f1"] == approx(2 / 3)
    assert out["per_class"]["c"]["support"] == 0
    assert classification_metrics([0, 1], [0, 0], ["a", "b"])["mcc"] == 0.0
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 3], [0, 1], ["a", "b"])
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0], ["a", "b"])


def test_binary_classification_adds_the_positive_class_scores():
    # gold 1 1 1 0 0, predicted 1 0 1 1 0: positive class "1": TP 2, FP 1, FN 1 -> P 2/3, R 2/3, F1 2/3
    out = classification_metrics([1, 1, 1, 0, 0], [1, 0, 1, 1, 0], ["0", "1"])
    assert (out["precision"], out["recall"], out["f1"]) == (approx(2 / 3), approx(2 / 3), approx(2 / 3))
    assert out["per_class"]["0"]["f1"] == approx(0.5) and out["macro_f1"] == approx((2 / 3 + 0.5) / 2)
    assert "f1" not in classification_metrics([0, 1, 2], [0, 1, 2], ["a", "b", "c"])  # multi-class: macro only


def test_regression_by_hand_and_constant_inputs():
    # mse: errors 0, 1, -1, 1 -> 3/4.
    # pearson: x - 2.5 = (-1.5, -.5, .5, 1.5), y - 2.75 = (-1.75, .25, -.75, 2.25)
    #   sum xy = 2.625 - .125 - .375 + 3.375 = 5.5; sum x^2 = 5; sum y^2 = 8.75 -> 5.5 / sqrt(43.75).
    # spearman: ranks of y = (1, 3, 2, 4), d = (0, 1, -1, 0), 1 - 6*2/(4*15) = 0.8.
    out = regression_metrics([1, 2, 3, 4], [1, 3, 2, 5])
    assert out == approx({"mse": 0.75, "pearson": 5.5 / math.sqrt(43.75), "spearman": 0.8})
    # A constant side has no correlation: 0.0 by our convention (scipy would give NaN + a warning).
    const = regression_metrics([1, 2, 3], [2, 2, 2])
    assert const == approx({"mse": 2 / 3, "pearson": 0.0, "spearman": 0.0})
    assert regression_metrics([1.0], [2.0])["pearson"] == 0.0


def test_multilabel_by_hand():
    # label   gold col   pred col   tp fp fn   P    R    F1
    #   x     1 0 1      1 0 1      2  0  0    1    1    1
    #   y     0 1 1      0 1 0      1  0  1    1   1/2  2/3
    #   z     1 0 0      0 0 1      0  1  1    0    0    0
    # micro: tp 3, fp 1, fn 2 -> F1 = 2*3 / (2*3 + 1 + 2) = 2/3;  macro F1 = (1 + 2/3 + 0)/3 = 5/9.
    # subset accuracy: only row 1 is exactly right -> 1/3.
    gold = [[1, 0, 1], [0, 1, 0], [1, 1, 0]]
    pred = [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    out = multilabel_metrics(gold, pred, ["x", "y", "z"])
    assert out["micro_f1"] == approx(2 / 3)
    assert out["macro_f1"] == approx(5 / 9)
    assert out["accuracy"] == approx(1 / 3)
    assert out["per_class"]["y"] == approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert out["per_class"]["z"]["support"] == 1
    with pytest.raises(ValueError, match="0/1"):
        multilabel_metrics([[0.2, 0.9]], [[0, 1]], ["x", "y"])


# ---------------------------------------------------------------------------------------------- ner


@pytest.mark.parametrize(
    "tags, expected",
    [
        # IOB1: a chunk may start with I-; B- only separates two adjacent chunks of one type.
        (["I-PER", "I-PER", "O", "I-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
        (["I-PER", "I-PER", "B-PER", "I-PER"], [("PER", 0, 2), ("PER", 2, 4)]),
        # A type change ends a chunk even without B-.
        (["I-PER", "I-ORG"], [("PER", 0, 1), ("ORG", 1, 2)]),
        (["B-PER", "I-ORG", "I-ORG"], [("PER", 0, 1), ("ORG", 1, 3)]),
        # Entities at the sentence start and end; a lone B-.
        (["B-LOC", "O", "B-PER"], [("LOC", 0, 1), ("PER", 2, 3)]),
        (["O", "O", "B-LOC", "I-LOC"], [("LOC", 2, 4)]),
        # IOB2 "B-X B-X" is two chunks; I- after O (invalid IOB2) starts one, as in conlleval.
        (["B-X", "B-X", "O", "I-X"], [("X", 0, 1), ("X", 1, 2), ("X", 3, 4)]),
        # IOBES: S closes immediately, E closes its chunk.
        (["S-PER", "S-PER", "B-ORG", "I-ORG", "E-ORG", "O", "S-LOC"],
         [("PER", 0, 1), ("PER", 1, 2), ("ORG", 2, 5), ("LOC", 6, 7)]),
        (["B-ORG", "E-ORG", "I-ORG", "E-ORG"], [("ORG", 0, 2), ("ORG", 2, 4)]),
        # BILOU is read as IOBES; types keep everything after the first hyphen.
        (["U-PER", "B-LOC", "L-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),
        (["B-GEO-LOC", "I-GEO-LOC"], [("GEO-LOC", 0, 2)]),
        (["O", "O"], []),
        ([], []),
    ],
)
def test_chunks(tags, expected):
    assert chunks(tags) == expected


def test_bare_tags_are_rejected_and_io_conversion_reads_them():
    with pytest.raises(ValueError, match="convert_tags"):
        chunks(["PER", "O"])
    with pytest.raises(ValueError):
        entity_scores([["O", "X-PER"]], [["O", "O"]])
    assert convert_tags(["PER", "PER", "O", "LOC", "ORG"], "io") == ["B-PER", "I-PER", "O", "B-LOC", "B-ORG"]


def test_entity_scores_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O", "O"]]
    # gold chunks: PER[0,2) LOC[3,4) | ORG[0,1) PER[2,3)        -> 4
    # pred chunks: PER[0,2) ORG[3,4) | ORG[0,1) (I- opens one)  -> 3
    # correct: PER[0,2) in sentence 0, ORG[0,1) in sentence 1   -> 2
    # P = 2/3, R = 2/4, F1 = 2*(2/3)*(1/2) / (2/3 + 1/2) = (2/3)/(7/6) = 4/7.
    # token accuracy: sentence 0: 3 of 4 (B-LOC != B-ORG); sentence 1: 1 of 3 (I-ORG != B-ORG as a tag,
    #   B-PER != O) -> 4/7.
    # per type: PER gold 2 pred 1 correct 1 -> P 1, R 1/2, F1 2/3; LOC 1/0/0 -> 0, 0, 0;
    #           ORG gold 1 pred 2 correct 1 -> P 1/2, R 1, F1 2/3.
    out = entity_scores(gold, pred)
    assert (out["precision"], out["recall"], out["f1"]) == approx((2 / 3, 1 / 2, 4 / 7))
    assert out["accuracy"] == approx(4 / 7)
    assert (out["gold_chunks"], out["predicted_chunks"], out["correct_chunks"], out["tokens"]) == (4, 3, 2, 7)
    assert list(out["per_type"]) == ["LOC", "ORG", "PER"]
    assert out["per_type"]["PER"] == approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert out["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert out["per_type"]["ORG"] == approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})


def test_entity_scores_boundaries_types_and_sentences():
    # A chunk is correct only if start, end AND type all match: one token too long, or right span
    # with the wrong type, scores nothing.
    assert entity_scores([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "I-PER"]])["correct_chunks"] == 0
    assert entity_scores([["B-PER", "I-PER"]], [["B-ORG", "I-ORG"]])["f1"] == 0.0
    # A chunk never crosses a sentence boundary: gold ends sentence 0 with B-PER and starts sentence 1
    # with I-PER, which is two chunks; the prediction tags the same two tokens as PER chunks -> all right.
    two = entity_scores([["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["B-PER", "O"]])
    assert (two["gold_chunks"], two["correct_chunks"], two["f1"]) == (2, 2, 1.0)
    # Concatenated into one sentence the same tokens are ONE gold chunk of two tokens.
    one = entity_scores(["O", "B-PER", "I-PER", "O"], ["O", "B-PER", "B-PER", "O"])
    assert (one["gold_chunks"], one["predicted_chunks"], one["correct_chunks"]) == (1, 2, 0)
    # IOB1 gold vs IOB2 prediction of the same entities: identical chunks, F1 1 (token accuracy is not).
    mixed = entity_scores([["I-PER", "I-PER", "B-PER"]], [["B-PER", "I-PER", "B-PER"]])
    assert mixed["f1"] == 1.0 and mixed["accuracy"] == approx(2 / 3)
    # Nothing predicted and nothing to find: 0.0 everywhere, no division error.
    empty = entity_scores([["O"]], [["O"]])
    assert (empty["precision"], empty["recall"], empty["f1"], empty["accuracy"]) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="sentence 0"):
        entity_scores([["O", "O"]], [["O"]])


def test_scheme_converters():
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]
    assert to_iob2(iob1) == ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG"]
    assert to_iob2(to_iob2(iob1)) == to_iob2(iob1)  # idempotent on IOB2
    iobes = ["S-PER", "B-ORG", "I-ORG", "E-ORG", "O", "B-LOC", "E-LOC", "S-LOC"]
    assert iobes_to_iob2(iobes) == ["B-PER", "B-ORG", "I-ORG", "I-ORG", "O", "B-LOC", "I-LOC", "B-LOC"]
    iob2 = iobes_to_iob2(iobes)
    assert convert_tags(iob2, "iob2", "iobes") == iobes
    assert convert_tags(iob2, "iob2", "iob1") == ["I-PER", "I-ORG", "I-ORG", "I-ORG", "O", "I-LOC", "I-LOC", "B-LOC"]
    with pytest.raises(ValueError):
        convert_tags(iob2, "ioe9")


# A transcription of the 2004 conlleval.pl main loop (token-by-token streaming with its "inCorrect"
# flag and its endOfChunk / startOfChunk rules for B, I, E, O), kept deliberately separate from the
# set-of-chunks code it checks. Sentences are fed with a boundary token tagged O in both columns.
def _perl_end(prev_tag, tag, prev_type, type_):
    if (prev_tag, tag) in {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"), ("E", "E"), ("E", "I"), ("E", "O")}:
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _perl_start(prev_tag, tag, prev_type, type_):
    if (prev_tag, tag) in {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"), ("E", "E"), ("E", "I"), ("O", "E")}:
        return True
    return tag not in ("O", ".") and prev_type != type_


def _conlleval(gold_sents, pred_sents):
    def split(t):
        return (t, "") if "-" not in t else tuple(t.split("-", 1))

    rows = []
    for g, p in zip(gold_sents, pred_sents):
        rows += list(zip(g, p)) + [None]  # None: the blank line between sentences
    found_gold = found_pred = correct = 0
    in_correct = False
    last_g, last_gt, last_p, last_pt = "O", "", "O", ""
    for row in rows:
        (g, gt), (p, pt) = (("O", ""), ("O", "")) if row is None else (split(row[0]), split(row[1]))
        end_g, end_p = _perl_end(last_g, g, last_gt, gt), _perl_end(last_p, p, last_pt, pt)
        start_g, start_p = _perl_start(last_g, g, last_gt, gt), _perl_start(last_p, p, last_pt, pt)
        if in_correct:
            if end_g and end_p and last_gt == last_pt:
                in_correct, correct = False, correct + 1
            elif end_g != end_p or gt != pt:
                in_correct = False
        if start_g and start_p and gt == pt:
            in_correct = True
        found_gold += start_g
        found_pred += start_p
        last_g, last_gt, last_p, last_pt = g, gt, p, pt
    correct += in_correct
    return found_gold, found_pred, correct


def _random_sentences(rng, n, alphabet, max_len=12):
    weights = [6 if t == "O" else 1 for t in alphabet]  # mostly O, like real NER data
    return [rng.choices(alphabet, weights, k=rng.randint(0, max_len)) for _ in range(n)]


def test_entity_counts_match_a_transcription_of_conlleval_on_random_iob():
    # The Perl rules cover B, I, E(IOE) and O but not S, so compare on B/I/O sequences.
    rng = random.Random(1)
    alphabet = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-GEO-X", "B-GEO-X"]
    for _ in range(300):
        gold = _random_sentences(rng, rng.randint(1, 4), alphabet)
        pred = [rng.choices(alphabet, k=len(s)) if rng.random() < 0.5 else list(s) for s in gold]
        for s in pred:  # perturb some tags so that predictions are close to, but not, the gold
            if s and rng.random() < 0.7:
                s[rng.randrange(len(s))] = rng.choice(alphabet)
        out = entity_scores(gold, pred)
        assert (out["gold_chunks"], out["predicted_chunks"], out["correct_chunks"]) == _conlleval(gold, pred)


# seqeval's report averages an empty array (numpy RuntimeWarning) when a trial has no chunk at all.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_entity_scores_equal_seqeval_on_random_sequences():
    seqeval = pytest.importorskip("seqeval.metrics")
    get_entities = pytest.importorskip("seqeval.metrics.sequence_labeling").get_entities
    rng = random.Random(0)
    alphabet = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "I-MISC-X", "B-MISC-X"]
    for trial in range(300):
        gold = _random_sentences(rng, rng.randint(1, 5), alphabet)
        gold[0] = gold[0] or ["O"]  # seqeval divides by the token count
        pred = [list(s) for s in gold]
        for s in pred:
            for i in range(len(s)):
                if rng.random() < 0.3:
                    s[i] = rng.choice(alphabet)
        ours = entity_scores(gold, pred)
        # Exact equality on purpose: same counts and the same 2PR/(P+R) formula give the same floats.
        assert ours["precision"] == seqeval.precision_score(gold, pred, zero_division=0)
        assert ours["recall"] == seqeval.recall_score(gold, pred, zero_division=0)
        assert ours["f1"] == seqeval.f1_score(gold, pred, zero_division=0)
        assert ours["accuracy"] == seqeval.accuracy_score(gold, pred)
        report = seqeval.classification_report(gold, pred, output_dict=True, zero_division=0)
        theirs = {k: v for k, v in report.items() if not k.endswith(" avg")}
        assert set(ours["per_type"]) == set(theirs)
        for type_, s in ours["per_type"].items():
            t = theirs[type_]
            assert (s["precision"], s["recall"], s["f1"], s["support"]) == (
                t["precision"], t["recall"], t["f1-score"], t["support"]), (trial, type_)
        for sent in gold:  # seqeval's ends are inclusive
            assert chunks(sent) == [(t, a, b + 1) for t, a, b in get_entities(sent)]


def test_conversion_keeps_entity_scores_on_random_sequences():
    rng = random.Random(2)
    alphabet = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "I-LOC", "B-LOC"]
    for _ in range(200):
        gold = _random_sentences(rng, 3, alphabet)
        pred = _random_sentences(rng, 3, alphabet)
        pred = [(p + ["O"] * len(g))[: len(g)] for g, p in zip(gold, pred)]
        base = entity_scores(gold, pred)
        for scheme in ("iob1", "iob2", "iobes"):
            conv = entity_scores([convert_tags(s, "iobes", scheme) for s in gold],
                                 [convert_tags(s, "iobes", scheme) for s in pred])
            assert (conv["precision"], conv["recall"], conv["f1"], conv["per_type"]) == (
                base["precision"], base["recall"], base["f1"], base["per_type"])


# --------------------------------------------------------------------------------------------- squad


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("The  Quick, Brown fox!", "quick brown fox"),
        ("An apple a day", "apple day"),
        ("theatre the", "theatre"),          # articles only as whole words
        ("banana", "banana"),
        ("a-team", "ateam"),                 # punctuation goes first, so "a" is no longer a word
        ("the_the", "thethe"),               # "_" is in string.punctuation
        ("x an, y", "x y"),
        ("  \tThe\n ", ""),
        ("A.B.C.", "abc"),
        ("Don't", "dont"),
        ("1,000", "1000"),
        ("\u201cQuoted\u201d \u2014 text", "\u201cquoted\u201d \u2014 text"),  # non-ASCII punctuation stays
        ("\u00dcber the \u00c4rch", "\u00fcber \u00e4rch"),
        ("caf\u00e9 a\u00a0b", "caf\u00e9 b"),  # NBSP is whitespace to str.split
        ("", ""),
    ],
)
def test_normalize_answer(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_exact_match_and_f1_by_hand():
    assert exact_match("The Denver Broncos!", "denver   broncos") == 1.0
    # "the cat sat on the mat" -> cat sat on mat (4); "a cat on a mat" -> cat on mat (3); 3 in common:
    # P = 3/4, R = 1, F1 = 1.5/1.75 = 6/7.
    assert f1("the cat sat on the mat", "a cat on a mat") == approx(6 / 7)
    # Repeated tokens count once per occurrence on both sides: min(3, 1) = 1 common;
    # P = 1/3, R = 1/2, F1 = (1/3)/(5/6) = 2/5.
    assert f1("dog dog dog", "dog cat") == approx(0.4)
    assert f1("paris", "london") == 0.0
    # Both sides normalise to nothing: v1.1 F1 is 0 (no common token) while EM is 1; v2.0 gives 1.
    assert (f1("the", "a"), exact_match("the", "a"), f1("the", "a", version_2=True)) == (0.0, 1.0, 1.0)
    assert f1("", "paris", version_2=True) == 0.0


def test_squad_v1_by_hand():
    gold = {
        "q1": ["Denver Broncos", "The Denver Broncos"],
        "q2": ["Santa Clara, California", "Levi's Stadium"],
        "q3": ["gold"],
        "q4": ["1,000"],
    }
    pred = {"q1": "the denver broncos!", "q2": "Santa Clara", "q3": "golden", "extra": "ignored"}
    # q1: EM 1, F1 1. q2: vs "santa clara california" 2 common, P 1, R 2/3, F1 0.8; vs "levis stadium" 0
    #     -> EM 0, F1 0.8. q3: 0, 0. q4: missing -> 0, 0, still counted.
    # EM = 100 * 1/4 = 25; F1 = 100 * 1.8/4 = 45.
    out = squad_scores(gold, pred)
    assert out == approx({"exact_match": 25.0, "f1": 45.0, "total": 4, "missing": 1})
    with pytest.raises(ValueError, match="version_2"):
        squad_scores({"q": []}, {"q": ""})


def test_squad_v2_by_hand():
    gold = {"a": ["Paris"], "b": [], "c": [""], "d": ["the Seine", "Seine river"]}
    pred = {"a": "Paris", "b": "", "c": "London", "d": "river Seine"}
    # a (answerable): EM 1, F1 1.
    # b (no answer, gold [""]): pred "" -> EM 1, F1 1 (both empty).
    # c (no answer): pred "London" -> EM 0, F1 0 (one side empty -> F1 = EM).
    # d (answerable): "river seine" vs "seine": P 1/2, R 1 -> 2/3; vs "seine river": same bag -> F1 1,
    #   EM 0 (order differs) -> EM 0, F1 1.
    # HasAns {a, d}: EM 50, F1 100. NoAns {b, c}: EM 50, F1 50. All: EM 2/4 = 50, F1 3/4 = 75.
    out = squad_scores(gold, pred, version_2=True)
    assert out == approx({
        "exact_match": 50.0, "exact": 50.0, "f1": 75.0, "total": 4, "missing": 0,
        "HasAns_exact": 50.0, "HasAns_f1": 100.0, "HasAns_total": 2,
        "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2,
    })
    # As in the v2.0 script: a gold answer that normalises to nothing ("The") leaves [""] to match,
    # yet the question stays in HasAns; and a group with no questions is not reported.
    quirk = squad_scores({"q": ["The"]}, {"q": ""}, version_2=True)
    assert quirk["HasAns_exact"] == 100.0 and "NoAns_total" not in quirk
    missing = squad_scores({"q": ["x"], "r": []}, {"r": ""}, version_2=True)
    assert (missing["missing"], missing["HasAns_exact"], missing["NoAns_exact"]) == (1, 0.0, 100.0)
