"""`python -m recloop_dev up|status|down`: the local Airflow + SeaweedFS stack (see `local_stack`)."""

import sys

from recloop_dev.local_stack import main

sys.exit(main())
