"""``python -m fprune``: prune the reference MLP and print what changed; with arguments, the
command line (``python -m fprune inspect ...`` runs as ``fprune inspect ...``)."""

import sys

from ._demo import run_demo

if __name__ == "__main__":
    if len(sys.argv) > 1:
        from .cli import main

        sys.exit(main(sys.argv[1:]))
    print(run_demo())
