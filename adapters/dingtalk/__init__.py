"""DingTalk (钉钉) channel: the HTTP robot callback, Stream mode and AI-card streaming.

``sign`` and ``parse`` are pure; ``api`` and ``card`` do the outbound HTTP with
aiohttp; ``stream`` holds the Stream-mode connection; ``adapter`` ties them to
the hub.
"""
