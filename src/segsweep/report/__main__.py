import sys

from segsweep.report import main

sys.exit(main())
