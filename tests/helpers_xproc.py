"""A separate process that attaches to a running xnb cluster by scheduler address, does one
thing and exits (without closing its client explicitly), for the cross-process tests.

    python tests/helpers_xproc.py SCHEDULER_ADDRESS launch UID
    python tests/helpers_xproc.py SCHEDULER_ADDRESS terminate UID

Prints one JSON line: this process's Dask client id and what it saw.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    address, action, uid = sys.argv[1:4]
    import xnb

    client = xnb.connect(address, start=False)
    if action == "launch":
        model = client.launch("smollm2-135m-instruct", uid=uid, timeout=120,
                              engine_options={"n_threads": 1})
        out = {"status": model.status, "worker": model.record["replicas"][0]["worker"]}
    elif action == "terminate":
        out = {"status": client.terminate(uid)["status"]}
    else:
        raise SystemExit(f"unknown action {action!r}")
    print(json.dumps({"client": client.dask.id, **out}), flush=True)


if __name__ == "__main__":
    main()
