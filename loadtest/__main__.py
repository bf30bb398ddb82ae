"""`python -m loadtest [options] [UserClass ...]`: Locust with loadtest/locustfile.py, whose defaults make the run
headless, bounded and loopback-only and whose exit code is the verdict (`--help` lists every option);
`python -m loadtest verdict DIR [--budget B] [--write]`: judge a recorded run again, without traffic.

Locust also reads `LOCUST_*` variables as options: a stray `LOCUST_HOST` or `LOCUST_RUN_TIME` in the caller's shell
must not change where the traffic goes or how long it lasts, so those are dropped here, with the proxy and
OpenTelemetry variables.
"""

import os
import sys
from pathlib import Path

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")

if sys.argv[1:2] == ["verdict"]:
    from loadtest.verdict import main as judge_again

    raise SystemExit(judge_again(sys.argv[2:]))

for key in list(os.environ):
    if key.startswith(("LOCUST_", "OTEL_")) or key.lower() in PROXY_VARIABLES:
        del os.environ[key]
from locust.argument_parser import get_parser  # noqa: E402  (imports gevent, which patches the standard library)
from locust.main import main  # noqa: E402

args = ["-f", str(Path(__file__).with_name("locustfile.py")), *sys.argv[1:]]
if {"-h", "--help"} & set(args):  # Locust prints help before importing the locustfile, which adds our options
    import loadtest.locustfile  # noqa: F401

    get_parser().parse_args(args)
sys.argv = ["python -m loadtest", *args]
main()
