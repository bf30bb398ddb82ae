"""`python -m benchmarks.study`: see benchmarks.study.cli."""

from benchmarks.study.cli import main

raise SystemExit(main())
