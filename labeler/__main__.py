"""`python -m labeler [--project DIR] [--host 127.0.0.1] [--port 7860]`: same as `active serve`."""

from __future__ import annotations

import sys

from active.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
