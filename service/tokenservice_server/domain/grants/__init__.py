"""One module per OAuth2 grant type (RFC 6749 section 4)."""
