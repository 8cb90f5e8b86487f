"""Using the tuned model: what chat completions and models share across providers.

``request``  checks a chat request's OpenAI shape once, before any provider sees it;
``shapes``   builds OpenAI's answer objects (``chat.completion``, ``chat.completion.chunk``, ``model``);
``sse``      reads a provider's Server-Sent Events and writes ours;
``local``    the ``local`` provider's model server (its own process; transformers + peft, or vLLM).

The routes are ``tunegate.api.chat`` and ``tunegate.api.models``; each provider's translation lives in
its own folder. Nothing here imports a provider.
"""
