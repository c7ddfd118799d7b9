"""MaskingCollator: rates, 80/10/10, specials, whole words, determinism, padding, static K."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from mlm.pretrain.masking import WWM_EXTRA_SLOTS, MaskingCollator
from mlm.pretrain.encoder import gather_masked
from mlm.errors import ConfigError, DataError


class OddTokenizer:
    """A minimal stand-in with specials at odd ids, so that nothing can hide behind pad 0 or mask 103.

    Ids 20..25 are "##" continuation pieces; 30 is special only through all_special_ids (an added token).
    """

    pad_token_id, mask_token_id, cls_token_id, sep_token_id, unk_token_id = 7, 5, 11, 13, 3
    all_special_ids = [7, 5, 11, 13, 3, 30]

    def __len__(self):
        return 40

    def convert_ids_to_tokens(self, ids):
        return [f"##p{i}" if 20 <= i < 26 else f"w{i}" for i in ids]


ODD = OddTokenizer()
ODD_SPECIAL = set(OddTokenizer.all_special_ids)
ODD_WORDS = np.array([i for i in range(40) if i not in ODD_SPECIAL and not 20 <= i < 26])  # word starts
ODD_NONSPECIAL = np.array([i for i in range(40) if i not in ODD_SPECIAL])


def random_rows(n, rng, min_len=1, max_len=60, special_rate=0.05):
    """Rows of [CLS] ... [SEP] with non-special ids and some specials sprinkled inside."""
    rows = []
    for _ in range(n):
        body = rng.choice(ODD_NONSPECIAL, size=int(rng.integers(min_len, max_len + 1)))
        sprinkle = rng.random(len(body)) < special_rate
        body[sprinkle] = rng.choice([3, 30, 5, 7], size=int(sprinkle.sum()))
        rows.append(np.concatenate([[11], body, [13]]))
    return rows


def collate_rows(collate, rows, first_id=0):
    return collate([{"input_ids": r, "example_id": first_id + i} for i, r in enumerate(rows)])


def expected_count(n_maskable, p=0.15):
    return max(1, round(p * n_maskable)) if n_maskable > 0 else 0


def used_slots(batch):
    return batch["masked_labels"] != -100  # (B, K)


# ---------------------------------------------------------------------------- rates and counts


def test_exact_count_per_row_and_overall_rate():
    rng = np.random.default_rng(1)
    rows = random_rows(2000, rng)
    batch = collate_rows(MaskingCollator(ODD), rows)
    counts = used_slots(batch).sum(1).numpy()
    n_maskable = np.array([sum(int(t) not in ODD_SPECIAL for t in r) for r in rows])
    assert counts.tolist() == [expected_count(n) for n in n_maskable]
    assert abs(counts.sum() / n_maskable.sum() - 0.15) < 0.01


def test_choice_is_uniform_over_maskable_positions():
    row = np.concatenate([[11], np.random.default_rng(0).choice(ODD_NONSPECIAL, 20), [13]])
    n = len(row) - 2  # 20 maskable -> 3 masks per row
    batch = collate_rows(MaskingCollator(ODD), [row] * 4000)
    pos, used = batch["masked_positions"], used_slots(batch)
    freq = np.bincount(pos[used].numpy(), minlength=len(row)) / 4000
    assert freq[0] == 0 and freq[-1] == 0
    # Each position is chosen with probability 3/20; sd of the estimate is ~0.006.
    assert np.allclose(freq[1:-1], 3 / n, atol=0.03), freq


def test_mlm_probability_other_than_default():
    rows = random_rows(1000, np.random.default_rng(2), min_len=30, max_len=100)
    batch = collate_rows(MaskingCollator(ODD, mlm_probability=0.4), rows)
    counts = used_slots(batch).sum(1).numpy()
    n_maskable = np.array([sum(int(t) not in ODD_SPECIAL for t in r) for r in rows])
    assert counts.tolist() == [expected_count(n, 0.4) for n in n_maskable]


# ---------------------------------------------------------------------------- 80/10/10


@pytest.mark.parametrize("split", [(0.8, 0.1), (0.5, 0.25), (1.0, 0.0), (0.0, 1.0)])
def test_replacement_split(split):
    mask_p, random_p = split
    rows = random_rows(2000, np.random.default_rng(3), min_len=40, max_len=120)
    batch = collate_rows(MaskingCollator(ODD, mask_replace_prob=mask_p, random_replace_prob=random_p), rows)
    used = used_slots(batch)
    labels = batch["masked_labels"][used]
    new = torch.gather(batch["input_ids"], 1, batch["masked_positions"])[used]
    n = len(labels)
    assert n > 20000
    is_mask = new == ODD.mask_token_id
    changed = ~is_mask & (new != labels)
    # A random draw can give back the original id (probability 1 / number of non-special ids).
    same_by_chance = random_p / len(ODD_NONSPECIAL)
    assert abs(is_mask.float().mean().item() - mask_p) < 0.012
    assert abs(changed.float().mean().item() - (random_p - same_by_chance)) < 0.012
    assert abs((new == labels).float().mean().item() - (1 - mask_p - random_p + same_by_chance)) < 0.012


def test_random_replacements_are_uniform_non_special_ids():
    rows = random_rows(1000, np.random.default_rng(4), min_len=60, max_len=60)
    batch = collate_rows(MaskingCollator(ODD, mask_replace_prob=0.0, random_replace_prob=1.0), rows)
    new = torch.gather(batch["input_ids"], 1, batch["masked_positions"])[used_slots(batch)].numpy()
    assert not set(new.tolist()) & ODD_SPECIAL
    freq = np.bincount(new, minlength=40)[ODD_NONSPECIAL] / len(new)
    assert set(new.tolist()) == set(ODD_NONSPECIAL.tolist())
    assert np.allclose(freq, 1 / len(ODD_NONSPECIAL), atol=0.01)


# ---------------------------------------------------------------------------- specials, labels, slots


def test_specials_and_padding_are_never_masked_and_labels_are_the_originals():
    rng = np.random.default_rng(5)
    rows = random_rows(500, rng, min_len=0, max_len=40, special_rate=0.2)
    collate = MaskingCollator(ODD)
    batch = collate_rows(collate, rows)
    ids, pos, labels = batch["input_ids"].numpy(), batch["masked_positions"].numpy(), batch["masked_labels"].numpy()
    used = labels != -100
    for b, row in enumerate(rows):
        original = np.full(ids.shape[1], ODD.pad_token_id)
        original[: len(row)] = row
        special = np.isin(original, list(ODD_SPECIAL))
        chosen = pos[b][used[b]]
        assert not special[chosen].any()
        assert (ids[b][special] == original[special]).all()  # specials and padding untouched
        assert (labels[b][used[b]] == original[chosen]).all()
        assert (np.diff(chosen) > 0).all()  # ascending, no duplicates
        changed = np.flatnonzero(ids[b] != original)
        assert set(changed) <= set(chosen)  # nothing changes outside the chosen positions
        assert (pos[b][~used[b]] == 0).all()
        assert used[b][: used[b].sum()].all()  # used slots come first


def test_random_replacements_never_produce_special_ids_with_a_real_tokenizer(tiny_tokenizer):
    text = "the movie was unbelievable and the plot was boring , i hate it"
    ids = np.array(tiny_tokenizer(text)["input_ids"])
    collate = MaskingCollator(tiny_tokenizer, mlm_probability=0.5, mask_replace_prob=0.0, random_replace_prob=1.0)
    batch = collate_rows(collate, [ids] * 500)
    new = torch.gather(batch["input_ids"], 1, batch["masked_positions"])[used_slots(batch)]
    assert not set(new.tolist()) & set(tiny_tokenizer.all_special_ids)
    assert (batch["input_ids"][:, 0] == tiny_tokenizer.cls_token_id).all()
    assert (batch["input_ids"][:, -1] == tiny_tokenizer.sep_token_id).all()


@pytest.mark.parametrize("wwm", [False, True])
def test_a_mask_at_position_zero_is_written(wwm):
    # No [CLS]: position 0 is maskable, and unused slots also point at 0; they must not undo the mask.
    rows = [np.array([31, 32]), np.array([33]), np.array([34, 20, 35])] * 50
    collate = MaskingCollator(ODD, mask_replace_prob=1.0, random_replace_prob=0.0, max_predictions=4,
                              whole_word_masking=wwm)
    batch = collate_rows(collate, rows)
    used = used_slots(batch)
    new = torch.gather(batch["input_ids"], 1, batch["masked_positions"])
    assert (new[used] == ODD.mask_token_id).all()
    assert ((batch["masked_positions"] == 0) & used).sum() > 50
    assert (batch["input_ids"][:, 0] == ODD.mask_token_id).sum() == ((batch["masked_positions"] == 0) & used).sum()


def test_at_least_one_mask_in_a_row_with_one_maskable_token():
    batch = collate_rows(MaskingCollator(ODD), [np.array([11, 31, 13])] * 300)
    used = used_slots(batch)
    assert (used.sum(1) == 1).all()
    assert (batch["masked_positions"][:, 0] == 1).all()
    assert (batch["masked_labels"][:, 0] == 31).all()


def test_a_row_without_maskable_tokens_gets_no_labels():
    rows = [np.array([11, 13]), np.array([11, 5, 30, 3, 13]), np.array([11, 31, 32, 33, 13])]
    batch = collate_rows(MaskingCollator(ODD, whole_word_masking=True), rows)
    used = used_slots(batch)
    assert used[:2].sum() == 0 and used[2].sum() == 1
    assert (batch["masked_positions"][:2] == 0).all()
    assert batch["input_ids"][0, :2].tolist() == [11, 13]
    assert batch["input_ids"][1].tolist() == [11, 5, 30, 3, 13]


def test_padded_variable_length_batch_uses_the_pad_id():
    rows = [np.array([11, 31, 32, 13]), np.array([11] + list(range(31, 40)) + [13]), np.array([11, 34, 13])]
    batch = collate_rows(MaskingCollator(ODD), rows)
    assert batch["input_ids"].shape == (3, 11)
    assert all(v.dtype == torch.long for k, v in batch.items() if k != "padded")
    assert batch["attention_mask"].sum(1).tolist() == [4, 11, 3]
    # known on the host, so that the model skips the attention mask without reading it from the device
    assert batch["padded"] is True and collate_rows(MaskingCollator(ODD), rows[1:2])["padded"] is False
    assert (batch["input_ids"][0, 4:] == 7).all() and (batch["input_ids"][2, 3:] == 7).all()
    for b, n in enumerate([4, 11, 3]):
        assert (batch["attention_mask"][b, :n] == 1).all() and (batch["attention_mask"][b, n:] == 0).all()
        chosen = batch["masked_positions"][b][used_slots(batch)[b]]
        assert ((chosen > 0) & (chosen < n - 1)).all()


def same_batch(a: dict, b: dict) -> bool:
    """Equal keys and values (tensors, and the `padded` flag)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def test_lists_and_arrays_of_any_int_dtype_give_the_same_batch():
    rows = random_rows(8, np.random.default_rng(6), min_len=20, max_len=20)
    collate = MaskingCollator(ODD)
    a = collate_rows(collate, rows)
    b = collate_rows(collate, [r.tolist() for r in rows])
    c = collate_rows(collate, [r.astype(np.uint16) for r in rows])
    assert same_batch(a, b) and same_batch(a, c)


def test_missing_example_id_means_the_position_in_the_batch():
    rows = random_rows(6, np.random.default_rng(7))
    collate = MaskingCollator(ODD)
    a = collate([{"input_ids": r} for r in rows])
    b = collate_rows(collate, rows)
    assert same_batch(a, b)


# ---------------------------------------------------------------------------- K


def test_k_depends_only_on_the_padded_length_and_caps_rows():
    collate = MaskingCollator(ODD)
    assert [collate.num_predictions(t) for t in (1, 3, 128, 512)] == [1, 1, 20, 77]
    assert MaskingCollator(ODD, whole_word_masking=True).num_predictions(128) == 20 + WWM_EXTRA_SLOTS
    assert MaskingCollator(ODD, whole_word_masking=True).num_predictions(3) == 3
    rng = np.random.default_rng(8)
    for _ in range(5):
        rows = random_rows(4, rng, min_len=38, max_len=38)
        assert collate_rows(collate, rows)["masked_positions"].shape == (4, 6)

    capped = MaskingCollator(ODD, mlm_probability=0.5, max_predictions=5)
    batch = collate_rows(capped, random_rows(50, rng, min_len=30, max_len=30, special_rate=0))
    assert batch["masked_positions"].shape == (50, 5)
    assert (used_slots(batch).sum(1) == 5).all()
    wide = MaskingCollator(ODD, max_predictions=12)  # more slots than tokens
    batch = collate_rows(wide, [np.array([11, 31, 32, 13])])
    assert batch["masked_positions"].shape == (1, 12) and used_slots(batch).sum() == 1


# ---------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("wwm", [False, True])
def test_same_seed_and_example_id_give_the_same_mask_in_any_batch(wwm):
    rng = np.random.default_rng(9)
    rows = random_rows(12, rng, min_len=10, max_len=40)
    collate = MaskingCollator(ODD, whole_word_masking=wwm, seed=3)
    first = collate_rows(collate, rows, first_id=100)
    # Reversed order, other rows mixed in and a longer padded length; a pickled copy, as in a worker.
    other = pickle.loads(pickle.dumps(collate))
    longer = random_rows(3, rng, min_len=80, max_len=80)
    examples = [{"input_ids": r, "example_id": 100 + i} for i, r in enumerate(rows)][::-1]
    examples = examples[:5] + [{"input_ids": r, "example_id": 900 + i} for i, r in enumerate(longer)] + examples[5:]
    second = other(examples)
    where = {ex["example_id"]: b for b, ex in enumerate(examples)}
    for i, r in enumerate(rows):
        b = where[100 + i]
        n = len(r)
        assert torch.equal(first["input_ids"][i, :n], second["input_ids"][b, :n])
        u1, u2 = used_slots(first)[i], used_slots(second)[b]
        assert torch.equal(first["masked_positions"][i][u1], second["masked_positions"][b][u2])
        assert torch.equal(first["masked_labels"][i][u1], second["masked_labels"][b][u2])


def test_different_example_ids_or_seeds_give_different_masks():
    row = np.concatenate([[11], np.tile(np.arange(31, 40), 4), [13]])
    masks = lambda batch: {tuple(p[u].tolist()) for p, u in zip(batch["masked_positions"], used_slots(batch))}
    per_id = masks(collate_rows(MaskingCollator(ODD), [row] * 100))
    assert len(per_id) >= 95  # C(36, 5) = 376992 possible choices
    a = collate_rows(MaskingCollator(ODD, seed=0), [row] * 20)
    b = collate_rows(MaskingCollator(ODD, seed=1), [row] * 20)
    assert sum(torch.equal(a["masked_positions"][i], b["masked_positions"][i]) for i in range(20)) <= 1


# ---------------------------------------------------------------------------- whole-word masking


def word_spans(tokens):
    """(start, end) of each word: a non-special token and the "##" tokens after it."""
    spans, start = [], None
    for i, t in enumerate(tokens + ["[END]"]):
        if start is not None and not t.startswith("##"):
            spans.append((start, i))
            start = None
        if t not in ("[CLS]", "[SEP]", "[PAD]", "[END]") and not (t.startswith("##") and start is not None):
            start = i if start is None else start
    return spans


def test_whole_word_masking_takes_whole_words(tiny_tokenizer):
    text = "the unbelievable films were unbelievable and boring , unbelievable lovers who visited london"
    ids = np.array(tiny_tokenizer(text)["input_ids"])
    tokens = tiny_tokenizer.convert_ids_to_tokens(ids.tolist())
    assert tokens[2:5] == ["un", "##believ", "##able"]
    spans = word_spans(tokens)
    longest = max(e - s for s, e in spans)
    assert longest >= 3
    n_maskable = len(ids) - 2
    collate = MaskingCollator(tiny_tokenizer, mlm_probability=0.2, whole_word_masking=True)
    batch = collate_rows(collate, [ids] * 2000)
    used = used_slots(batch)
    whole_mask = partial_mask = words_taken = 0
    for b in range(2000):
        chosen = set(batch["masked_positions"][b][used[b]].tolist())
        new = batch["input_ids"][b].tolist()
        n = len(chosen)
        target = expected_count(n_maskable, 0.2)
        assert target <= n < target + longest  # overshoot by less than the last word
        for s, e in spans:
            inside = [i in chosen for i in range(s, e)]
            assert all(inside) or not any(inside), (tokens[s:e], inside)
            if all(inside):
                words_taken += 1
                is_mask = [new[i] == tiny_tokenizer.mask_token_id for i in range(s, e)]
                whole_mask += all(is_mask)
                partial_mask += any(is_mask) and not all(is_mask)
    # One 80/10/10 draw per word: never half [MASK]; about 80% of words fully [MASK].
    assert partial_mask == 0
    assert abs(whole_mask / words_taken - 0.8) < 0.03
    # Multi-token words are chosen as often as single ones: "un ##believ ##able" at 2..4 vs "the" at 1.
    pos = batch["masked_positions"][used]
    assert abs((pos == 2).sum().item() - (pos == 1).sum().item()) < 150


def test_word_starts_of_byte_level_bpe(tiny_roberta_dir):
    from transformers import AutoTokenizer

    from mlm.pretrain.masking import continuation_pieces

    tok = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    ids = tok("John Smith visited Paris")["input_ids"]  # <s> John ĠSmith Ġvis ited ĠParis </s> (pieces vary)
    tokens = tok.convert_ids_to_tokens(ids)
    table = continuation_pieces(tok, len(tok))
    assert [bool(table[i]) for i in ids[1:-1]] == [not t.startswith("\u0120") for t in tokens[1:-1]]
    collate = MaskingCollator(tok, whole_word_masking=True)
    word_start, _, _ = collate._words(np.array([ids]), ~collate.is_special[np.array([ids])])
    # every word starts at a "Ġ" token, the first word right after <s>
    assert [tokens[i] for i in np.flatnonzero(word_start[0])] == [tokens[1]] + [t for t in tokens[2:-1] if t[0] == "\u0120"]


def test_word_structure_with_odd_ids():
    # [CLS] w31 ##p20 ##p21 w32 [SEP-like special 30] ##p22 w33 ##p23 [SEP] [PAD]
    ids = np.array([[11, 31, 20, 21, 32, 30, 22, 33, 23, 13, 7]])
    collate = MaskingCollator(ODD, whole_word_masking=True)
    maskable = ~collate.is_special[ids]
    word_start, word_len, start_of = collate._words(ids, maskable)
    assert np.flatnonzero(word_start[0]).tolist() == [1, 4, 6, 7]  # "##" after a special starts a word
    assert word_len[0][[1, 4, 6, 7]].tolist() == [3, 1, 1, 2]
    assert start_of[0][[1, 2, 3, 4, 6, 7, 8]].tolist() == [1, 1, 1, 4, 6, 7, 7]


def test_whole_word_masking_respects_k_and_never_splits_a_word():
    rng = np.random.default_rng(10)
    rows = []
    for _ in range(500):  # words of 1 to 4 tokens
        body = []
        for _ in range(int(rng.integers(3, 15))):
            body += [int(rng.choice(ODD_WORDS))] + [int(t) for t in rng.integers(20, 26, size=int(rng.integers(0, 4)))]
        rows.append(np.array([11] + body + [13]))
    collate = MaskingCollator(ODD, mlm_probability=0.3, whole_word_masking=True, max_predictions=4)
    batch = collate_rows(collate, rows)
    used = used_slots(batch)
    assert batch["masked_positions"].shape[1] == 4
    for b, r in enumerate(rows):
        chosen = set(batch["masked_positions"][b][used[b]].tolist())
        tokens = ODD.convert_ids_to_tokens(r.tolist())
        tokens = ["[CLS]"] + tokens[1:-1] + ["[SEP]"]
        for s, e in word_spans(tokens):
            inside = [i in chosen for i in range(s, e)]
            assert all(inside) or not any(inside)
        assert 1 <= len(chosen) <= 4


def test_a_word_longer_than_k_does_not_block_the_others():
    row = np.array([11, 31, 20, 21, 22, 23, 32, 13])  # a 5-token word and a 1-token word, K = 2
    collate = MaskingCollator(ODD, whole_word_masking=True, max_predictions=2)
    batch = collate_rows(collate, [row] * 50)
    used = used_slots(batch)
    assert (used.sum(1) == 1).all()
    assert (batch["masked_positions"][:, 0] == 6).all()


def test_whole_word_masking_still_masks_a_row_whose_only_word_is_longer_than_k():
    # One word of 5 tokens, K = 2: the >= 1 mask guarantee wins over never splitting a word.
    row = np.array([11, 31, 20, 21, 22, 23, 13])
    collate = MaskingCollator(ODD, whole_word_masking=True, max_predictions=2)
    batch = collate_rows(collate, [row] * 50)
    assert (used_slots(batch).sum(1) == 1).all()


# ---------------------------------------------------------------------------- helpers and errors


def test_gather_masked():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    positions = torch.tensor([[1, 4, 0], [2, 0, 0]])
    out = gather_masked(hidden, positions)
    assert out.shape == (2, 3, 3)
    for b in range(2):
        for k in range(3):
            assert torch.equal(out[b, k], hidden[b, positions[b, k]])


@pytest.mark.parametrize(
    "kwargs", [{"mlm_probability": 0.0}, {"mlm_probability": 1.5}, {"mask_replace_prob": 0.9, "random_replace_prob": 0.2},
               {"random_replace_prob": -0.1}, {"max_predictions": 0}],
)
def test_bad_settings_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        MaskingCollator(ODD, **kwargs)


def test_bad_rows_raise_data_error():
    collate = MaskingCollator(ODD)
    with pytest.raises(DataError, match="outside the tokenizer's vocabulary"):
        collate([{"input_ids": np.array([11, 40, 13]), "example_id": 0}])
    with pytest.raises(DataError, match="outside the tokenizer's vocabulary"):
        collate([{"input_ids": [11, -1, 13]}, {"input_ids": [11, 13]}])
    with pytest.raises(DataError, match="one sequence of ids"):
        collate([{"input_ids": np.zeros((2, 3), dtype=np.int64)}])
    with pytest.raises(DataError, match="one sequence of ids"):
        collate([{"input_ids": np.zeros((2, 3), dtype=np.int64)}, {"input_ids": [11, 13]}])
    with pytest.raises(DataError, match="empty"):
        collate([{"input_ids": []}])
