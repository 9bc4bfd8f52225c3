"""``python -m benchmarks``: run the suite and print the markdown report."""

from .run import main

raise SystemExit(main())
