"""``python -m loadtest [options]``: a bounded load test; ``python -m loadtest verdict DIR``: re-judge one."""

from loadtest.runner import main

raise SystemExit(main())
