"""The agent console at ``/console``: where people take over conversations, answer, and curate the FAQ.

One module per job: ``accounts.py`` (agents and their argon2 hashes, ``python -m bot console``), ``auth.py``
(sign-in, sessions in the shared KV, CSRF), ``board.py`` (the inbox rows, shared by every process), ``feed.py`` (live
events to every gateway's SSE connections), ``desk.py`` (take, reply, release), ``canned.py`` (canned answers),
``stats.py`` (the dashboard, from the archive), ``web.py`` (the pages and their JSON calls). FAQ curation lives with
the FAQ (``bot/faq/curation.py``).
"""
