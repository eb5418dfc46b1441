"""`python -m dist_ae` is the `dist-ae` command."""

import sys

from dist_ae.cli import main

sys.exit(main())
