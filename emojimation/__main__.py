import sys

from emojimation.cli import main

sys.exit(main())
