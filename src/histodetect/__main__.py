"""`python -m histodetect` runs the command-line interface."""

import sys

from histodetect.cli.main import main

sys.exit(main())
