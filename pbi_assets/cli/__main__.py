"""`python -m pbi_assets.cli ...` is `pbi ...`."""

import sys

from pbi_assets.cli.main import main

sys.exit(main())
