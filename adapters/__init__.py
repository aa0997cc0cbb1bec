"""Channel adapters: verify, decrypt and normalize platform traffic into
:class:`bot.types.Event`, and send :class:`bot.types.Reply` back."""
