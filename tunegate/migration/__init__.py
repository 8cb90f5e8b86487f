"""The migration kit: ``tunegate migrate inventory | export | replay`` (issue 15, part 1).

One module per concern, all of them clients of a running gateway's HTTP API (never of a provider):

- ``api.py``: the gateway calls (lists walked to the end, files streamed to disk through ``.part``)
- ``inventory.py``: jobs, tuned models, base models with retirement dates, referenced files
- ``export.py`` / ``bundle.py``: the bundle on disk (``manifest.json``, ``files/``, ``replays.json``)
- ``hyperparameters.py``: an OpenAI job's settings → each backend's create body, with every loss noted
- ``bases.py``: base-model defaults per backend, ``--base`` overrides
- ``replay.py``: the dry-run plan (tokens, cost, time, what cannot carry over) and the idempotent replay
- ``tables.py``: ``retirements.toml`` and ``prices.toml``, dated and sourced
- ``cli.py``: the Typer commands

``record`` and ``eval`` (part 2) slot in as ``record.py`` / ``eval.py`` plus a command each in ``cli.py``,
reading the same bundle and calling the gateway's ``/v1/chat/completions``.
"""
