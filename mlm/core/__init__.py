"""The shared core: configuration, the one training loop, checkpoints, run folders, logs, records and Hugging Face
loading. It imports neither mlm.pretrain nor finetune."""
