"""The `mlm` command: pretrain, finetune, predict, evaluate, tokenizer.

    mlm pretrain [--recipe FILE.yaml] [--FIELD VALUE ...]
    mlm finetune --task {cls,ner,qa} [--recipe FILE.yaml] [--FIELD VALUE ...]
    mlm predict --model DIR (--text "..." | --question "..." --context "..." | --input FILE) [--output FILE]
    mlm evaluate --model DIR --input FILE [--input FILE2 ...] [--output_dir DIR]
    mlm export --model DIR [--onnx DIR] [--quantize]
    mlm tokenizer --train_file FILES --output_dir DIR [--vocab_size N]

Every subcommand prints `--help` with all fields and defaults. Errors the user can fix (bad flags,
recipe keys, input files) are one line on stderr and exit status 1, without a traceback.

`mlm` knows its own commands (pretrain, tokenizer); the others are found through the entry-point group
`mlm.commands` (pyproject.toml: `finetune`, `predict`, `evaluate` and `export` are registered by the `finetune`
package), so nothing under `mlm/` imports `finetune`. An entry point names a function that takes the argument list.
"""
from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points

from mlm.errors import UserError

USAGE = __doc__.split("\n\n")[1]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    commands = _commands()
    if command not in commands:
        print(f"mlm: error: unknown command {command!r} (choose from {', '.join(commands)})", file=sys.stderr)
        return 2
    try:
        commands[command](rest)
    except UserError as e:
        code = getattr(e, "exit_code", None)  # Preempted: a requested stop, not an error
        print(f"mlm {command}: {'' if code else 'error: '}{e}", file=sys.stderr)
        return code or 1
    except KeyboardInterrupt:
        resumable = " (checkpoints are written whole: --resume_from_checkpoint latest continues from the last one)"
        print(f"mlm {command}: interrupted{resumable if command in ('pretrain', 'finetune') else ''}", file=sys.stderr)
        return 130
    return 0


# Commands of this package, in the order `mlm` lists them; registered ones go in their place (by name) or last.
ORDER = ("pretrain", "finetune", "predict", "evaluate", "export", "tokenizer")


def _commands() -> dict:
    """Subcommand name -> function(argv): mlm's own, then those registered under the `mlm.commands` group."""
    found = {"pretrain": _pretrain, "tokenizer": _tokenizer}
    for ep in entry_points(group="mlm.commands"):
        found.setdefault(ep.name, ep)
    ranked = sorted(found, key=lambda name: (ORDER.index(name) if name in ORDER else len(ORDER), name))
    return {name: _loaded(found[name]) for name in ranked}


def _loaded(command):
    """An entry point is imported only when its command runs (keeps `mlm --help` fast)."""
    return command if callable(command) else (lambda argv: command.load()(argv))


def _pretrain(argv):
    from mlm.core.config import parse_config
    from mlm.pretrain.run import PretrainConfig, main

    main(parse_config(PretrainConfig, argv, prog="mlm pretrain"))


def _tokenizer(argv):
    from mlm.core.config import parse_config
    from mlm.pretrain.wordpiece import TokenizerConfig, main

    main(parse_config(TokenizerConfig, argv, prog="mlm tokenizer"))


if __name__ == "__main__":
    sys.exit(main())
