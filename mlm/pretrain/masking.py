"""Dynamic masking for MLM pretraining: token ids in, masked batch with sparse labels out.

    collate = MaskingCollator(tokenizer, mlm_probability=0.15, whole_word_masking=False, seed=0)
    batch = collate([{"input_ids": np.array([2, 17, 40, 3]), "example_id": 7}, ...])
    batch["input_ids"]         # (B, T) long, with [MASK] / random / kept replacements applied
    batch["attention_mask"]    # (B, T) long, 0 on padding
    batch["masked_positions"]  # (B, K) long, chosen positions ascending; unused slots 0
    batch["masked_labels"]     # (B, K) long, original ids there; -100 in unused slots
    batch["padded"]            # bool: whether any row is padded (attention_mask has a 0)
    hidden_at_masks = gather_masked(hidden, batch["masked_positions"])   # (B, K, H)

The rules, following BERT's create_pretraining_data:

* Maskable tokens are those that are not special ([CLS], [SEP], [PAD], [MASK], anything in
  tokenizer.all_special_ids). Each row masks exactly
  num_to_mask = max(1, round(mlm_probability * n_maskable)) tokens, chosen uniformly without
  replacement among its maskable tokens (round = Python's round, half to even). A row with no maskable
  token gets no mask and only -100 labels; the loss normalises by the number of labels, so the row
  contributes nothing. Any row with a maskable token gets at least one mask.
* Each chosen unit draws independently: [MASK] with mask_replace_prob, a random non-special token
  with random_replace_prob, otherwise it keeps its id. Independent draws make the split exact in
  expectation even for rows with a single mask (exact per-row counts would round 1 mask to "always
  [MASK]").
* Whole-word masking: a word is a token plus the continuation tokens after it ("##" pieces of WordPiece;
  with byte-level BPE or SentencePiece, the tokens up to the next one marked as a word start). Words are taken
  in random order until num_to_mask tokens are reached, so a row overshoots by less than the length of
  its last word and a word is never split. The 80/10/10 draw is made once per WORD: all of its tokens
  become [MASK], or all become random tokens (each its own random id), or all stay. (BERT draws per
  token, which leaves words half-masked and leaks the answer.)
* K, the number of label slots, depends only on the padded length T and the settings, so compiled
  models see static shapes: K = max_predictions if given, else max(1, ceil(mlm_probability * T)),
  plus WWM_EXTRA_SLOTS with whole-word masking (capped at T). Without whole-word masking the default
  K is never exceeded. A row that would need more than K slots is capped: it masks K tokens (like
  BERT's max_predictions_per_seq), and under whole-word masking stops before the word that would not
  fit. Should every word of a row be longer than K, that row masks single tokens instead, as the
  >= 1 mask guarantee comes first.

Randomness is counter-based: every draw is a SplitMix64 hash of (seed, example_id, stream, position).
A row's mask therefore depends only on its own ids, the seed and its example_id, not on the batch,
its position in it, the padding or the process; a new example_id (the same block in a later epoch)
gives a new mask. It is also fast: the whole batch is drawn in a few vectorised numpy operations,
where building one np.random.Generator per row alone costs about 17 us x B.
"""
from __future__ import annotations

import json
import math
from typing import Optional, Sequence

import numpy as np
import torch

from mlm.errors import ConfigError, DataError

# Extra label slots under whole-word masking, for the part of the last word past num_to_mask.
WWM_EXTRA_SLOTS = 4

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# Selection keys hold random bits above the position, which sits in the low bits: every key in a row
# is distinct (the order is fully determined by the data), and sorting the keys themselves, cheaper
# than an argsort, yields the positions in random order.
_POS_BITS = 20
_POS_MASK = (1 << _POS_BITS) - 1
_MAX_LEN = _POS_MASK - 1
_NONE = np.iinfo(np.int64).max  # key of a position that cannot be chosen: sorts last
# One stream per kind of draw (which units, what to do with them, which random token), each salted
# with an arbitrary constant so that the streams of a row are unrelated.
_SELECT, _ACTION, _TOKEN = 0, 1, 2
_STREAM_SALT = np.array([0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1, 0x510E527FADE682D1], dtype=np.uint64)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, in place: a bijection on uint64 whose output bits look independent of the input's."""
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def _seed_key(seed: int) -> np.ndarray:
    """(1,) uint64 hash of the seed."""
    return _mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + _GOLDEN)


def _row_keys(seed_key: np.ndarray, example_ids: np.ndarray) -> np.ndarray:
    """(S, B) uint64: a key per stream and row, from (seed, example_id, stream) only."""
    row = _mix64(seed_key ^ example_ids.astype(np.uint64))  # (B,)
    return _mix64(row[None, :] ^ _STREAM_SALT[:, None])


def _hash_at(keys: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Random uint64 for each (row, position): element `position` of the row's SplitMix64 sequence.

    keys (B,); positions (B, N) or (N,) -> (B, N). Unrelated to the padded length or the batch.
    """
    return _mix64(keys[:, None] + (positions.astype(np.uint64) + np.uint64(1)) * _GOLDEN)


def _random_order(h: np.ndarray, candidate: np.ndarray, K: int) -> np.ndarray:
    """(B, K): the first K candidate positions of each row in random order; T once a row runs out.

    Sorting by iid random keys is a uniform random permutation, so any prefix of it is a uniform
    choice without replacement. np.partition finds the K smallest keys in O(T) per row.
    """
    B, T = candidate.shape
    pos = np.arange(T, dtype=np.int64)
    keys = ((h >> np.uint64(1)).astype(np.int64) & ~_POS_MASK) | pos  # (B, T), 63-bit, distinct
    keys = np.where(candidate, keys, _NONE)
    if K < T:
        keys = np.partition(keys, K - 1, axis=1)[:, :K]
    elif K > T:
        keys = np.concatenate([keys, np.full((B, K - T), _NONE)], axis=1)
    keys = np.sort(keys, axis=1)  # (B, K)
    return np.where(keys == _NONE, T, keys & _POS_MASK)


def continuation_pieces(tokenizer, vocab_size: int) -> np.ndarray:
    """(V,) bool: the tokens that continue the word before them. WordPiece marks continuations ("##ing");
    byte-level BPE (RoBERTa) and SentencePiece (XLM-R, ALBERT) mark word starts instead ("Ġword", "▁word")."""
    from mlm.core.hf import pre_tokenizer_steps

    backend = getattr(tokenizer, "backend_tokenizer", None)  # a slow (Python) tokenizer is taken for WordPiece
    model = json.loads(backend.to_str())["model"] if backend is not None else {"type": "WordPiece"}
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    if model["type"] == "WordPiece":
        prefix = model.get("continuing_subword_prefix") or "##"
        return np.array([t is not None and t.startswith(prefix) for t in tokens], dtype=bool)
    for step in pre_tokenizer_steps(tokenizer):
        start = {"ByteLevel": "\u0120", "Metaspace": step.get("replacement", "\u2581")}.get(step.get("type"))
        if start:
            return np.array([t is not None and not t.startswith(start) for t in tokens], dtype=bool)
    raise ConfigError("whole_word_masking: cannot tell where words start with this tokenizer (WordPiece, "
                      "byte-level BPE and SentencePiece are supported)")


class MaskingCollator:
    """Pads a list of examples and masks them; see the module docstring for the rules."""

    def __init__(
        self,
        tokenizer,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        whole_word_masking: bool = False,
        seed: int = 0,
        max_predictions: Optional[int] = None,
    ):
        if not 0.0 < mlm_probability <= 1.0:
            raise ConfigError(f"mlm_probability must be in (0, 1], got {mlm_probability}")
        if mask_replace_prob < 0 or random_replace_prob < 0 or mask_replace_prob + random_replace_prob > 1.0 + 1e-9:
            raise ConfigError(
                "mask_replace_prob and random_replace_prob must be >= 0 with a sum <= 1, got "
                f"{mask_replace_prob} and {random_replace_prob}"
            )
        if max_predictions is not None and max_predictions < 1:
            raise ConfigError(f"max_predictions must be >= 1, got {max_predictions}")
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ConfigError("tokenizer: masking needs a tokenizer with a [MASK] and a [PAD] token")

        self.mlm_probability = float(mlm_probability)
        self.mask_replace_prob = float(mask_replace_prob)
        self.random_replace_prob = float(random_replace_prob)
        self.whole_word_masking = bool(whole_word_masking)
        self.seed = int(seed)
        self._seed_key = _seed_key(self.seed)
        # The 80/10/10 draw compares the top 53 bits of a hash, a uniform integer in [0, 2^53), with
        # these thresholds: the same as comparing a uniform float in [0, 1) with the probabilities.
        self._mask_below = np.uint64(round(self.mask_replace_prob * 2**53))
        self._random_below = np.uint64(round((self.mask_replace_prob + self.random_replace_prob) * 2**53))
        self.max_predictions = max_predictions
        self.pad_id = int(tokenizer.pad_token_id)
        self.mask_id = int(tokenizer.mask_token_id)

        # Only arrays are kept, not the tokenizer: the collator is pickled to every DataLoader worker.
        self.vocab_size = len(tokenizer)
        special = set(tokenizer.all_special_ids)
        for name in ("pad_token_id", "mask_token_id", "cls_token_id", "sep_token_id"):
            if getattr(tokenizer, name, None) is not None:
                special.add(getattr(tokenizer, name))
        self.is_special = np.zeros(self.vocab_size, dtype=bool)  # (V,)
        self.is_special[[i for i in special if 0 <= i < self.vocab_size]] = True
        self.is_maskable = ~self.is_special  # (V,)
        self.nonspecial_ids = np.flatnonzero(~self.is_special).astype(np.int64)  # random replacements
        if len(self.nonspecial_ids) == 0 and self.random_replace_prob > 0:
            raise ConfigError("random_replace_prob: the tokenizer has no non-special token to draw from")

        self.is_continuation = None  # (V,) bool, pieces that continue a word, only needed for whole-word masking
        if self.whole_word_masking:
            self.is_continuation = continuation_pieces(tokenizer, self.vocab_size)

    def num_predictions(self, seq_len: int) -> int:
        """K, the number of label slots for a batch padded to seq_len: data-independent, so shapes are static."""
        if self.max_predictions is not None:
            return int(self.max_predictions)
        # The epsilon keeps float noise (0.3 * 10 = 3.0000000000000004) from adding a slot.
        k = max(1, math.ceil(self.mlm_probability * seq_len - 1e-9))
        if self.whole_word_masking:
            k = min(max(seq_len, 1), k + WWM_EXTRA_SLOTS)
        return k

    # ------------------------------------------------------------------ batching

    def _pad(self, examples: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, T) int64 ids padded with the pad id, (B,) lengths, (B,) uint64 example ids."""
        rows = [np.asarray(ex["input_ids"]) for ex in examples]
        for i, r in enumerate(rows):
            if r.ndim != 1:
                raise DataError(f"example {i}: input_ids must be one sequence of ids, got shape {r.shape}")
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        T = int(lengths.max())
        if T == 0:
            raise DataError("every example of the batch has an empty input_ids")
        if T > _MAX_LEN:
            raise DataError(f"rows of {T} tokens are longer than the {_MAX_LEN} the collator supports")
        if (lengths == T).all():
            ids = np.stack(rows, dtype=np.int64)  # packed rows: one copy, no padding
        else:
            ids = np.full((len(rows), T), self.pad_id, dtype=np.int64)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = r
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.vocab_size:
            bad = high if high >= self.vocab_size else low
            raise DataError(
                f"token id {bad} is outside the tokenizer's vocabulary of {self.vocab_size}: "
                "were the blocks built with another tokenizer?"
            )
        example_ids = np.array([ex.get("example_id", i) for i, ex in enumerate(examples)], dtype=np.int64)
        return ids, lengths, example_ids.astype(np.uint64)

    def __call__(self, examples: Sequence[dict]) -> dict:
        if len(examples) == 0:
            raise ValueError("cannot collate an empty list of examples")
        ids, lengths, example_ids = self._pad(examples)  # (B, T), (B,), (B,)
        B, T = ids.shape
        K = self.num_predictions(T)
        pos = np.arange(T, dtype=np.int64)
        attention_mask = (pos[None, :] < lengths[:, None]).astype(np.int64)  # (B, T), 0 on padding
        maskable = self.is_maskable[ids]  # (B, T); padding is [PAD], so never maskable

        n_maskable = maskable.sum(axis=1)  # (B,)
        # np.rint rounds half to even, like Python's round in BERT's script.
        num_to_mask = np.where(n_maskable > 0, np.maximum(1, np.rint(self.mlm_probability * n_maskable)), 0)
        num_to_mask = np.minimum(num_to_mask, K).astype(np.int64)  # (B,)

        keys = _row_keys(self._seed_key, example_ids)  # (S, B)
        h = _hash_at(keys[_SELECT], pos)  # (B, T)
        if self.whole_word_masking:
            positions, used, decide_at = self._choose_words(ids, maskable, h, num_to_mask, K)
        else:
            # The first num_to_mask maskable positions of a random order, then sorted ascending.
            order = _random_order(h, maskable, K)  # (B, K)
            used = np.arange(K)[None, :] < num_to_mask[:, None]  # (B, K), a prefix of the slots
            positions = np.sort(np.where(used, order, T), axis=1)  # unused slots (T) sort last
            positions[~used] = 0
            decide_at = positions

        rows = np.arange(B)[:, None]  # (B, 1)
        originals = ids[rows, positions]  # (B, K)
        masked_labels = np.where(used, originals, -100)  # (B, K)

        # 80/10/10, one draw per unit: per token, or per word when decide_at is the word's start.
        u = _hash_at(keys[_ACTION], decide_at) >> np.uint64(11)  # (B, K) uniform in [0, 2^53)
        new = np.where(u < self._mask_below, self.mask_id, originals)  # (B, K)
        randomise = (u >= self._mask_below) & (u < self._random_below)
        if randomise.any():  # each token its own random id, uniform over the non-special ids
            hr = _hash_at(keys[_TOKEN], positions)  # (B, K)
            random_ids = self.nonspecial_ids[(hr % np.uint64(len(self.nonspecial_ids))).astype(np.int64)]
            new[randomise] = random_ids[randomise]
        # Write the used slots only: unused slots also point at position 0, which may hold a real mask.
        masked_ids = ids.copy()
        np.put(masked_ids, (rows * T + positions)[used], new[used])

        return {
            "input_ids": torch.from_numpy(masked_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "masked_positions": torch.from_numpy(positions),
            "masked_labels": torch.from_numpy(masked_labels),
            # known here on the host: the model then needs no device read to skip the attention mask
            "padded": bool((lengths < T).any()),
        }

    # ------------------------------------------------------------------ whole-word masking

    def _words(self, ids: np.ndarray, maskable: np.ndarray):
        """Word structure, all (B, T).

        word_start: a maskable token that does not continue a maskable token before it ("##" right
        after [CLS] starts its own word); word_len: the word's token count at its start, 0 elsewhere;
        start_of: for each maskable token, the position of its word's start.
        """
        B, T = ids.shape
        pos = np.arange(T, dtype=np.int64)
        prev_maskable = np.zeros_like(maskable)
        prev_maskable[:, 1:] = maskable[:, :-1]
        word_start = maskable & ~(self.is_continuation[ids] & prev_maskable)
        # A word ends at the next word start or non-maskable token: a suffix minimum finds it.
        boundary = np.where(word_start | ~maskable, pos, T)  # (B, T)
        next_boundary = np.full((B, T), T, dtype=np.int64)
        next_boundary[:, :-1] = np.minimum.accumulate(boundary[:, :0:-1], axis=1)[:, ::-1]
        word_len = np.where(word_start, next_boundary - pos, 0)
        start_of = np.maximum.accumulate(np.where(word_start, pos, 0), axis=1)
        return word_start, word_len, start_of

    def _choose_words(self, ids, maskable, h, num_to_mask, K):
        """Whole words in random order while fewer than num_to_mask tokens are taken and K slots suffice.

        Returns positions (B, K) ascending with unused slots 0, used (B, K), and decide_at (B, K), the
        start of each chosen token's word, where its 80/10/10 draw is read.
        """
        B, T = ids.shape
        rows = np.arange(B)[:, None]  # (B, 1)
        word_start, word_len, start_of = self._words(ids, maskable)
        # A word longer than K can never fit: leaving it out keeps it from ending the selection early.
        order = _random_order(h, word_start & (word_len <= K), K)  # (B, K) word starts, T = none
        # Every word has >= 1 token and num_to_mask <= K, so K words are always enough.
        lens = np.where(order < T, word_len[rows, np.minimum(order, T - 1)], 0)  # (B, K)
        after = np.cumsum(lens, axis=1)  # tokens taken up to and including this word
        take = (lens > 0) & (after - lens < num_to_mask[:, None]) & (after <= K)  # a prefix of the order

        # A token is chosen when the start of its word is. (np.put on the taken slots only: a plain
        # scatter with the untaken slots pointing anywhere could overwrite a taken start.)
        chosen_start = np.zeros((B, T), dtype=bool)
        np.put(chosen_start, (rows * T + order)[take], True)
        chosen = maskable & chosen_start[rows, start_of]  # (B, T)

        starved = ~take[:, 0] & (num_to_mask > 0)
        if starved.any():  # every word of the row is longer than K: single tokens, for >= 1 mask
            single = _random_order(h[starved], maskable[starved], K)  # (S, K)
            pick = np.arange(K)[None, :] < num_to_mask[starved][:, None]
            fallback = np.zeros((len(single), T), dtype=bool)
            np.put(fallback, (np.arange(len(single))[:, None] * T + single)[pick], True)
            chosen[starved] = fallback

        positions = np.sort(np.where(chosen, np.arange(T), T), axis=1)[:, :K]  # at most K per row
        used = positions < T
        positions[~used] = 0
        decide_at = start_of[rows, positions]  # (B, K)
        return positions, used, decide_at
