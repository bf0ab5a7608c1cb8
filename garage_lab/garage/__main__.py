"""``python -m garage_lab.garage <version> <args>``: the simulated garage binary."""

import sys

from .main import main

sys.exit(main())
