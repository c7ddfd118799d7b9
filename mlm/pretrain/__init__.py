"""The pretraining track: corpus -> WordPiece tokenizer -> packing -> masking -> model -> mlm.core.loop."""
