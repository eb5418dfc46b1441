"""Training throughput of dist-ae against the notebook's model.fit and the machine's matrix-product ceiling.

The same as `dist-ae bench`: `python bench/throughput.py [--tiny] [--json PATH]`.
"""

import sys

from dist_ae.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
