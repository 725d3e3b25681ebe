"""The SMS v3 wire protocol: models, signing, the HTTP client and its errors."""
