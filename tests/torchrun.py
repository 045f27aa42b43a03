"""The torchrun command line the multi-process tests launch, and a free 127.0.0.1 port for it.

``torchrun_command(2, script, "a", "b")`` is ``python -m torch.distributed.run
--nproc_per_node=2 --nnodes=1 --master_addr=127.0.0.1 --master_port=<free>
script a b``. Extra keyword flags follow the standard ones (``monitor_interval=2``
is ``--monitor-interval=2``); given an ``rdzv_endpoint``, there is no
``--master_addr``/``--master_port``. ``plain_if_one=True`` runs one process as
``python script ...`` with no launcher at all.
"""
from __future__ import annotations

import socket
import sys


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (another process may still take it before it is bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(nproc: int, script, *args: str, nnodes: int = 1, plain_if_one: bool = False,
                     **flags) -> list[str]:
    if plain_if_one and nproc == 1 and nnodes == 1:
        return [sys.executable, str(script), *args]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}"]
    if "rdzv_endpoint" not in flags:
        cmd += ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    cmd += [f"--{name.replace('_', '-')}={value}" for name, value in flags.items()]
    return [*cmd, str(script), *args]
