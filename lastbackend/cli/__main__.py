"""``python -m lastbackend.cli``: the same as the ``lastbackend`` script."""

import sys

from lastbackend.cli import main

sys.exit(main())
