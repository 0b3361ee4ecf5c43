"""`python -m agentenv ...` (and `torchrun --nproc_per_node=N -m agentenv train ...`): the command line."""

import sys

from agentenv.cli import main

sys.exit(main())
