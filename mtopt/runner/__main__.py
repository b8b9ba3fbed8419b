"""``python -m mtopt.runner``: the ``mtopt-bench`` command line."""

import sys

from mtopt.runner.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m mtopt.runner"))
