"""DingTalk (钉钉) channel: the HTTP robot callback, Stream mode and AI-card streaming.

``sign`` and ``parse`` are pure; ``api`` and ``card`` do the outbound HTTP with
aiohttp; ``stream`` holds the Stream-mode connection. ``inbound`` (gateways:
the callback route, the Stream connection) hands messages to the hub;
``sender`` (every process that runs turns) answers them.
"""
