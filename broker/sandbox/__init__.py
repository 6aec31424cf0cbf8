"""Local stand-ins for the outside world: a CI OIDC issuer and the clouds' token endpoints.

Used by `ci-broker demo` and the test suite, never by the production request path. The stand-ins
are not fakes that accept anything: the cloud endpoints verify the broker's assertion against its
published JWKS exactly as the real trust configuration would (issuer, audience, subject, expiry).
"""
