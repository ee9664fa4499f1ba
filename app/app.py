"""Run the token-label-map page from a source checkout: `python app/app.py [--model PATH ...]`.

The same as `stl-bench app` (same flags); the page itself lives in `stl_bench.ui` so the
library never imports this folder.
"""
from __future__ import annotations

import sys

from stl_bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["app", *sys.argv[1:]]))
