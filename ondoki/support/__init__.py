"""Infrastructure helpers every layer may use: settings, structured logs, secret redaction."""
