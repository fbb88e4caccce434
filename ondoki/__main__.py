import sys

from ondoki.entrypoints.cli import main

sys.exit(main())
