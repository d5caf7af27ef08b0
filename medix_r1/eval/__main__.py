"""``python -m medix_r1.eval``: evaluate a model; ``python -m medix_r1.eval compare RUN ...``."""
import sys

from .cli import main

sys.exit(main())
