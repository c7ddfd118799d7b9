def test_tiny_tokenizer_uses_the_hand_made_vocab(tiny_tokenizer):
    enc = tiny_tokenizer("The movie was unbelievable!")
    tokens = tiny_tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", "the", "movie", "was", "un", "##believ", "##able", "!", "[SEP]"]
    assert tiny_tokenizer.pad_token_id == 0 and tiny_tokenizer.mask_token_id == 4
