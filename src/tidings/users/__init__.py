"""People who sign in (users with a role and a password), their sessions, and API keys for programs."""
