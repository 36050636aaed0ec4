"""`python -m offload ...`: the CLI, as the `offload` command."""

from offload.cli import main

main()
