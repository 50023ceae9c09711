"""The member's node: identity, signed entries, store, documents, local app and CLI."""
