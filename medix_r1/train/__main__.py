import sys

from medix_r1.train.cli import main

sys.exit(main())
