import sys

from veil.node.cli import main

sys.exit(main())
