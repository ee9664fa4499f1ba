import sys

from stl_bench.cli import main

sys.exit(main())
