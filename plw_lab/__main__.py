import sys

from plw_lab.cli import main

sys.exit(main())
