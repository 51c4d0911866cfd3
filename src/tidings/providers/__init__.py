"""WhatsApp providers: one module each behind ``base.Provider``; ``pool`` builds them per account."""
