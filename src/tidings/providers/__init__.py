"""WhatsApp providers: one module each, declaring its plug-in (``plugin.ProviderType``) and its sender
(``base.Provider``); ``registry`` lists them, ``pool`` builds one per account."""
