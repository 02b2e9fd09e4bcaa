"""Ray job entrypoint: ``ray job submit --working-dir . -- python jobs/score.py --config FILE``.

The driver joins the cluster through RAY_ADDRESS, which ``ray job submit`` sets.
"""

import sys

from crossenc.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
