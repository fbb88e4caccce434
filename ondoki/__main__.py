import sys

from ondoki.cli import main

sys.exit(main())
