"""Processes started by a job scheduler: tell Lightning who they are, so it starts none itself.

On SLURM (`launcher=slurm`) srun starts one task per device and Lightning's `SLURMEnvironment`
reads the ranks from `SLURM_*`. submitit's local executor (`launcher=local`) also starts one task
per device, but names the ranks `SUBMITIT_LOCAL_*`, which Lightning does not read; here they are
copied to the variables of Lightning's own environment (`LOCAL_RANK` present = processes are
created externally), so the same sweep runs on this machine as on a cluster.
"""

from __future__ import annotations

import os

#: the port of a local job's process group lies in [BASE_PORT, BASE_PORT + PORT_RANGE)
BASE_PORT, PORT_RANGE = 20000, 20000


def adopt_submitit_local_tasks(environ: os._Environ | dict[str, str] = os.environ) -> bool:
    """If this process is one of several tasks of a submitit local job, export `LOCAL_RANK`,
    `NODE_RANK`, `WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT` for it; return whether it did.

    All tasks of a job share its id (the pid of submitit's controller), which picks the port, so
    jobs running side by side get different process groups."""
    if environ.get("SUBMITIT_EXECUTOR") != "local" or "LOCAL_RANK" in environ:
        return False
    ntasks = int(environ.get("SUBMITIT_LOCAL_NTASKS", "1"))
    if ntasks <= 1:
        return False
    job_id = int(environ["SUBMITIT_LOCAL_JOB_ID"])
    environ.update(
        LOCAL_RANK=environ["SUBMITIT_LOCAL_LOCALID"],
        NODE_RANK="0",
        WORLD_SIZE=str(ntasks),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(BASE_PORT + job_id % PORT_RANGE),
    )
    if environ is os.environ:
        # Lightning read the rank from the environment if it was imported before this (it is
        # imported here, not at the top, so that `apo-train --help` does not load it)
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        rank_zero_only.rank = int(environ["LOCAL_RANK"])
    return True
