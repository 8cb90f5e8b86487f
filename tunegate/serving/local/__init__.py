"""Serving ``local`` models: the model server and the gateway's side of it.

``server``   the OpenAI-compatible model server, a process of its own (``python -m
             tunegate.serving.local.server``): transformers + peft on CPU (or one GPU);
``engine``   what that server runs in its worker threads (resident base models, adapters in an LRU,
             token-by-token generation with cancellation);
``manager``  the gateway's side: starts the server (or vLLM) on first use, shares it between the
             gateway's workers through a lock file and a state file in the data directory, restarts it
             when it died, stops it at shutdown; or points at an operator's running server.

Importing this package imports neither torch nor transformers.
"""
