"""Allows ``python -m cryodomain ...`` (and ``torchrun -m cryodomain ...``)."""

import sys

from cryodomain.commands.main import main

sys.exit(main())
