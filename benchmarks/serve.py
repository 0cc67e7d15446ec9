#!/usr/bin/env python
"""Load-test an OpenAI-compatible server: a thin wrapper of ``xnb bench``
(library: :mod:`xnb.bench`), in the style of ``vllm bench serve``.

    python benchmarks/serve.py --base-url http://127.0.0.1:9997 -c 1,4,16 -n 64 --out /tmp/bench
    python benchmarks/serve.py --help
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from xnb.cli import cli  # noqa: E402

if __name__ == "__main__":
    cli(args=["bench", *sys.argv[1:]], prog_name="benchmarks/serve.py")
