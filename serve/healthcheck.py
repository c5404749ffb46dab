"""The container's HEALTHCHECK: exit 0 when the server on this machine has a model loaded.

    python -m serve.healthcheck            # GET http://127.0.0.1:$SERVE_PORT/readyz (port 8501 by default)

Standard library only, so it starts in a few milliseconds and follows `--port` through SERVE_PORT.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = 8501


def ready(port: int, timeout: float = 2.0) -> bool:
    """True when /readyz answers 200 (a model is loaded and has run)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=timeout) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> None:
    sys.exit(0 if ready(int(os.environ.get("SERVE_PORT") or DEFAULT_PORT)) else 1)


if __name__ == "__main__":
    main()
