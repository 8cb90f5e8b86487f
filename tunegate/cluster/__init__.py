"""Training on a cluster the team already runs: the ``local`` provider's jobs handed to Ray.

With ``[local_training] engine = "ray"`` a gateway instance no longer trains in its own children: its
scheduler (``tunegate.localjobs``) submits each job it claims to a Ray cluster through Ray's Job
Submission REST API, and follows it there. The pieces, one concern each:

* ``settings.py``   — ``[local_training.ray]``: the cluster's address, resources, runtime env.
* ``ray_jobs.py``   — the REST client (``/api/jobs/``) over the gateway's own ``Upstream`` (the operator's
  address is a trusted host, like the S3 endpoint; nothing a client sends can change it).
* ``layout.py``     — where a job's inputs, checkpoints and results live in the shared object store, and
  the job document the gateway hands to the cluster; imported by both sides.
* ``runner.py``     — ``RayTrainingJob``: the scheduler's process interface (start, poll, pause, cancel)
  for a job that runs on Ray; events come from the job's log, artifacts from the object store.
* ``entrypoint.py`` — what runs on the cluster (``python -m tunegate.cluster.entrypoint``): fetch the
  inputs, train with the same ``tunegate.trainer`` processes as an instance would, publish events,
  checkpoints and the adapter.

Nothing here imports ``ray``: the gateway speaks HTTP to the cluster; ``ray`` is only needed on the
cluster's nodes (``pip install 'tunegate[local,ray]'``).
"""
