"""The ``local`` provider's job queue: jobs in the gateway's database, trained by a scheduler task in
each gateway instance that runs ``tunegate.trainer`` children (see ``scheduler.py``), plus the
``tunegate demo`` command (``demo.py``).

Importing this package does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tunegate.localjobs.db import JobDB
from tunegate.localjobs.scheduler import Scheduler, job_dir, wake_all

if TYPE_CHECKING:
    from tunegate.config import Settings
    from tunegate.files import FileStore
    from tunegate.store import Store
    from tunegate.upstream import Upstream

__all__ = ["JobDB", "Scheduler", "job_dir", "start_scheduler", "wake_all"]


async def start_scheduler(settings: Settings, store: Store, files: FileStore,
                          upstream: Upstream | None = None) -> Scheduler:
    """The gateway's lifespan calls this once per instance (and ``await scheduler.stop()`` at shutdown).
    ``upstream`` carries the calls to a cluster (``[local_training] engine = "ray"``)."""
    runner = None
    training = settings.local_training
    if training.engine == "ray":
        from tunegate.cluster.runner import RayRunner

        if upstream is None:
            raise ValueError('[local_training] engine = "ray" needs an upstream for the cluster\'s API')
        runner = RayRunner(training.ray, training, files, store, upstream, keep_checkpoints=settings.local_keep_checkpoints)
    scheduler = Scheduler(store, files, Path(settings.data_dir), concurrency=settings.local_concurrency,
                          model_roots=settings.local_model_roots, keep_checkpoints=settings.local_keep_checkpoints,
                          max_epochs=settings.local_max_epochs, training=training, runner=runner)
    await scheduler.start()
    return scheduler
