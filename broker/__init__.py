"""ci-broker: exchange CI OIDC tokens for short-lived cloud credentials."""

__version__ = "0.1.0"
