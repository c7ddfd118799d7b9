"""`python -m mlm SUBCOMMAND ...` and `accelerate launch -m mlm SUBCOMMAND ...`."""
import sys

from mlm.cli import main

sys.exit(main())
