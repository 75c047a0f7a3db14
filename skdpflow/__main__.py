"""``python -m skdpflow``: the command line (what torchrun runs with ``-m skdpflow``)."""

from .cli import main

raise SystemExit(main())
