"""A plain script, no `if __name__ == "__main__":` guard: `xnb.connect()` works.

Dask spawns worker processes, which re-run a script's top-level code; xnb
starts the embedded cluster for a script in a child process whose own main
module is guarded (xnb/runtime/cluster_process.py), for as long as the script runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import SMOL, wait_until

SCRIPT = f"""
import os
import xnb

c = xnb.connect()
m = c.launch({SMOL!r})
print("workers", len(c.cluster_info()["workers"]))
print("tokens", m.chat("hi", max_tokens=3)["usage"]["completion_tokens"])
print("cluster-pid", c.cluster.process.pid)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(")")[-1].split()[0] != "Z"


def test_script_without_main_guard(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text(SCRIPT)
    env = {**os.environ, "XNB_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop("XNB_SCHEDULER_ADDRESS", None)
    run = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    assert out["workers"] == "1" and int(out["tokens"]) >= 1
    # the cluster lived as long as the script: its process and runtime file are gone
    wait_until(lambda: not _alive(int(out["cluster-pid"])), 30, "the cluster process to stop")
    assert not (tmp_path / "home" / "runtime" / "cluster.json").exists()
