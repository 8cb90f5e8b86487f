"""The migration kit: ``tunegate migrate inventory | export | record | replay`` and ``tunegate eval``
(issue 15).

One module per concern, all of them clients of a running gateway's HTTP API (never of a provider):

- ``api.py``: the gateway calls (lists walked to the end, files streamed to disk through ``.part``)
- ``inventory.py``: jobs, tuned models, base models with retirement dates, referenced files
- ``export.py`` / ``bundle.py``: the bundle on disk (``manifest.json``, ``files/``, ``replays.json``)
- ``hyperparameters.py``: an OpenAI job's settings → each backend's create body, with every loss noted
- ``bases.py``: base-model defaults per backend, ``--base`` overrides
- ``replay.py``: the dry-run plan (tokens, cost, time, what cannot carry over) and the idempotent replay
- ``tables.py``: ``retirements.toml`` and ``prices.toml``, dated and sourced
- ``record.py``: a tuned model's answers on its held-out turns, through ``/v1/chat/completions``,
  rate-limited and resumable (answers JSONL + ``.meta.jsonl``)
- ``graders.py``: OpenAI-shaped graders (string_check, text_similarity, score_model, label_model, multi)
- ``eval.py`` / ``report.py``: models compared on the same prompts; the result in ``<data dir>/evals/``
  (the dashboard's job page reads it, ``tunegate/ui/evals.py``), a terminal table and an HTML report
- ``cli.py``: the Typer commands (``eval_command`` is registered as ``tunegate eval`` in ``tunegate/cli.py``)
"""
