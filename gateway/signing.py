"""The one signing function: HMAC-SHA256 over the exact raw body, standard Base64.

Used by the gateway, the tests, the provider simulator and the locust file.
"""

import base64
import hmac

# The outcomes of gateway/outcomes.py; named here so this module imports nothing of the gateway
# (the provider simulator and the locust file use it).
SIGNATURE_MISSING = "SIGNATURE_MISSING"
UNKNOWN_PUBLIC_KEY = "UNKNOWN_PUBLIC_KEY"
BAD_SIGNATURE = "BAD_SIGNATURE"


def sign_body(secret: str, body: bytes) -> str:
    # hmac.digest: the one-shot C path, a third cheaper than hmac.new(...).digest()
    digest = hmac.digest(secret.encode("utf-8"), body, "sha256")
    return base64.b64encode(digest).decode("ascii")


def signed_headers(public_key: str, secret: str, body: bytes) -> dict[str, str]:
    return {
        "X-Public-Key": public_key,
        "X-Signature": sign_body(secret, body),
        "Content-Type": "application/json",
    }


class KeyRing:
    """public key -> secret; two pairs may be live at once during a rotation."""

    def __init__(self, secrets_by_public_key: dict[str, str]) -> None:
        self._secrets = dict(secrets_by_public_key)

    @classmethod
    def parse(cls, text: str) -> "KeyRing":
        """Parse `pub1:secret1,pub2:secret2`."""
        pairs: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            public_key, sep, secret = item.partition(":")
            if not sep or not public_key or not secret:
                raise ValueError("PROVIDER_KEYS must look like 'public1:secret1,public2:secret2'")
            pairs[public_key] = secret
        if not pairs:
            raise ValueError("PROVIDER_KEYS holds no key pair")
        return cls(pairs)

    def public_keys(self) -> list[str]:
        return list(self._secrets)

    def secret(self, public_key: str) -> str:
        return self._secrets[public_key]

    def signature_refusal(
        self, public_key: str | None, signature: str | None, body: bytes
    ) -> str | None:
        """None when `signature` is this key's HMAC of `body`; else the refusal's outcome
        (gateway/outcomes.py): no signature, a public key not in the ring, or a mismatch."""
        if not signature:
            return SIGNATURE_MISSING
        secret = self._secrets.get(public_key or "")
        if secret is None:
            return UNKNOWN_PUBLIC_KEY
        expected = sign_body(secret, body)
        if hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace")):
            return None
        return BAD_SIGNATURE
