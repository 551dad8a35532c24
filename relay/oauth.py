"""Bearer tokens for SASL OAUTHBEARER (RFC 7628) and XOAUTH2.

Owns: the parsing of the two SASL client responses, the verification of the
JWT they carry (through PyJWT, never hand-written JOSE code), and the error
challenge a refused token gets.

What must stay true:

- A token is accepted only when it is a JWS signed by a key of the
  configured issuer's JWKS with an allowed asymmetric algorithm (never
  ``none``, never an HMAC: a JWKS holds public keys), and its ``iss``,
  ``aud``, ``exp`` and ``nbf`` hold at the time the caller passes in, within
  ``clock_skew`` seconds. The identity is the value of one configured claim
  (the national practitioner id ``8<RPPS>``, a patient identifier, ``sub``).
- Where the keys come from is behind :class:`KeySource`: a JWKS file
  (:class:`JwksFile`), a JWKS URL with a cache (:class:`JwksUrl`, blocking:
  call it from a worker thread), or a key set in memory (:class:`StaticKeys`,
  tests and ``tokens test``). Nothing else here does I/O or reads the clock.
- A refusal names one :class:`TokenProblem`, which ``mssante account tokens
  test`` prints and the audit trail records; the token itself is never
  logged or stored.
"""

from __future__ import annotations

import enum
import json
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import jwt

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from relay.config import OAuthSettings

# Algorithms a JWKS of public keys may sign with (RFC 7518 §3.1). OpenID
# Connect providers default to RS256; PS256 and ES256 are the modern choices.
DEFAULT_ALGORITHMS: Final = ("RS256", "PS256", "ES256")
# Clocks of the provider and the relay may differ a little; RFC 7519 §4.1.4
# allows "some small leeway, usually no more than a few minutes".
DEFAULT_CLOCK_SKEW: Final = 60.0
# PyJWKClient's default lifespan for a fetched JWKS is 300 s.
DEFAULT_JWKS_CACHE_TTL: Final = 300.0
DEFAULT_JWKS_TIMEOUT: Final = 10.0
# RFC 7628 §3.1: kvsep.
KVSEP: Final = b"\x01"
_SASLNAME_ESCAPE: Final = re.compile(rb"=(2C|3D)")


class OAuthError(Exception):
    """Root of the bearer-token errors."""


class SaslSyntaxError(OAuthError):
    """The client response is not an OAUTHBEARER/XOAUTH2 message."""


class TokenProblem(enum.StrEnum):
    """Why a token is refused (printed by ``tokens test``, audited)."""

    MALFORMED = "not a signed JWT"
    ALGORITHM = "signature algorithm not allowed"
    UNKNOWN_KEY = "signed by a key the issuer does not publish"
    BAD_SIGNATURE = "signature does not verify"
    WRONG_ISSUER = "issued by another issuer"
    WRONG_AUDIENCE = "meant for another audience"
    EXPIRED = "expired"
    NOT_YET_VALID = "not valid yet"
    MISSING_CLAIM = "a required claim is missing"
    UNKNOWN_ACCOUNT = "no account for the identity it names"


class TokenRefusedError(OAuthError):
    def __init__(self, problem: TokenProblem, detail: str = "") -> None:
        self.problem = problem
        self.detail = detail
        super().__init__(f"{problem.value}: {detail}" if detail else problem.value)


class KeysUnavailableError(OAuthError):
    """The issuer's keys cannot be read now (a temporary failure: 4xx)."""


class KeySource(Protocol):
    """Public keys of the issuer, by key id."""

    def key_for(self, kid: str | None) -> jwt.PyJWK:
        """The key ``kid`` names (any key when the set holds one and kid is None).

        Raises:
            TokenRefusedError: UNKNOWN_KEY when no such key is published.
            KeysUnavailableError: the key set cannot be read now.
        """
        ...


def _pick(keys: jwt.PyJWKSet, kid: str | None) -> jwt.PyJWK:
    if kid is None:
        if len(keys.keys) == 1:
            return keys.keys[0]
        raise TokenRefusedError(TokenProblem.UNKNOWN_KEY, "no kid and several keys")
    for key in keys.keys:
        if key.key_id == kid:
            return key
    raise TokenRefusedError(TokenProblem.UNKNOWN_KEY, f"kid {kid!r}")


@dataclass(frozen=True, slots=True)
class StaticKeys:
    """A key set given as a JWKS mapping (RFC 7517 §5)."""

    jwks: Mapping[str, Any]

    def key_for(self, kid: str | None) -> jwt.PyJWK:
        try:
            keys = jwt.PyJWKSet.from_dict(dict(self.jwks))
        except jwt.PyJWKSetError as exc:
            raise KeysUnavailableError(f"JWKS: {exc}") from exc
        return _pick(keys, kid)


class JwksFile:
    """A JWKS file, read again when it changes (key rotation without restart)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: jwt.PyJWKSet | None = None

    def _load(self) -> jwt.PyJWKSet:
        try:
            st = self._path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            with self._lock:
                if self._keys is not None and stamp == self._stamp:
                    return self._keys
                data = json.loads(self._path.read_text(encoding="utf-8"))
                self._keys = jwt.PyJWKSet.from_dict(data)
                self._stamp = stamp
                return self._keys
        except OSError as exc:
            raise KeysUnavailableError(f"{self._path}: {exc.strerror}") from exc
        except (ValueError, jwt.PyJWKSetError) as exc:
            raise KeysUnavailableError(f"{self._path}: not a JWKS: {exc}") from exc

    def key_for(self, kid: str | None) -> jwt.PyJWK:
        return _pick(self._load(), kid)


class JwksUrl:
    """The issuer's ``jwks_uri``, fetched with PyJWKClient and cached.

    Blocking (urllib): call :meth:`key_for` from a worker thread.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_ttl: float = DEFAULT_JWKS_CACHE_TTL,
        timeout: float = DEFAULT_JWKS_TIMEOUT,
    ) -> None:
        self._client = jwt.PyJWKClient(
            url, cache_jwk_set=True, lifespan=cache_ttl, timeout=timeout
        )

    def key_for(self, kid: str | None) -> jwt.PyJWK:
        try:
            keys = self._client.get_jwk_set()
            try:
                return _pick(keys, kid)
            except TokenRefusedError:
                if kid is None:
                    raise
                # A rotated key: PyJWKClient refreshes once, after its cooldown.
                return self._client.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError as exc:
            raise KeysUnavailableError(f"JWKS URL: {exc}") from exc
        except jwt.PyJWKClientError as exc:
            raise TokenRefusedError(TokenProblem.UNKNOWN_KEY, str(exc)) from exc
        except jwt.PyJWKSetError as exc:
            raise KeysUnavailableError(f"JWKS URL: {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRules:
    """What a token must say to be accepted."""

    issuer: str
    audience: str
    claim: str = "sub"  # the claim naming the account (its external id)
    clock_skew: float = DEFAULT_CLOCK_SKEW
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    identity: str  # the value of the rules' claim
    claims: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    rules: TokenRules
    keys: KeySource

    def verify(self, token: str, *, now: float) -> VerifiedToken:
        """Check ``token`` at time ``now`` (POSIX seconds).

        Raises:
            TokenRefusedError: the token is refused; ``problem`` says why.
            KeysUnavailableError: the keys cannot be read (try again later).
        """
        rules = self.rules
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise TokenRefusedError(TokenProblem.MALFORMED, str(exc)) from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in rules.algorithms:
            raise TokenRefusedError(TokenProblem.ALGORITHM, repr(alg))
        kid = header.get("kid")
        key = self.keys.key_for(kid if isinstance(kid, str) else None)
        try:
            # Times are checked below against ``now``, not PyJWT's clock.
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=rules.audience,
                issuer=rules.issuer,
                options={
                    "require": ["exp", "iss", "aud"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise TokenRefusedError(TokenProblem.BAD_SIGNATURE) from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRefusedError(TokenProblem.WRONG_AUDIENCE, str(exc)) from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenRefusedError(TokenProblem.WRONG_ISSUER, str(exc)) from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefusedError(TokenProblem.MISSING_CLAIM, exc.claim) from exc
        except jwt.InvalidAlgorithmError as exc:
            raise TokenRefusedError(TokenProblem.ALGORITHM, str(exc)) from exc
        except jwt.InvalidTokenError as exc:
            raise TokenRefusedError(TokenProblem.MALFORMED, str(exc)) from exc
        # RFC 7519 §4.1.4, §4.1.5: exp and nbf, with a small leeway.
        exp = _numeric_date(claims, "exp")
        if exp is None or now >= exp + rules.clock_skew:
            raise TokenRefusedError(TokenProblem.EXPIRED)
        nbf = _numeric_date(claims, "nbf")
        if nbf is not None and now < nbf - rules.clock_skew:
            raise TokenRefusedError(TokenProblem.NOT_YET_VALID)
        identity = claims.get(rules.claim)
        if not isinstance(identity, str) or not identity:
            raise TokenRefusedError(TokenProblem.MISSING_CLAIM, rules.claim)
        return VerifiedToken(identity, claims)


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRefusedError(TokenProblem.MALFORMED, f"{name} is not a NumericDate")
    return float(value)


# -- SASL ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BearerResponse:
    """What the client sent: the token and the identity it asks for, if any."""

    token: str = field(repr=False)
    authzid: str | None = None


def _bearer(value: bytes) -> str:
    # RFC 7628 §3.1: auth-value = "Bearer" 1*SP b64token (RFC 6750 §2.1).
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        raise SaslSyntaxError("auth: expected 'Bearer <token>'")
    try:
        return token.strip().decode("ascii")
    except UnicodeDecodeError:
        raise SaslSyntaxError("auth: token is not ASCII") from None


def parse_oauthbearer(message: bytes) -> BearerResponse:
    """RFC 7628 §3.1 client response: ``gs2-header kvsep *kvpair kvsep``."""
    # RFC 5801 §4: gs2-header = gs2-cbind-flag "," [ authzid ] ",".
    flag, sep, rest = message.partition(b",")
    if not sep or flag not in (b"n", b"y"):
        # "p=..." asks for channel binding, which OAUTHBEARER does not support
        # (RFC 7628 §3.1: "Channel binding is not supported").
        raise SaslSyntaxError("gs2 header: expected 'n,' or 'y,'")
    authz_field, sep, rest = rest.partition(b",")
    if not sep:
        raise SaslSyntaxError("gs2 header: missing ','")
    authzid: str | None = None
    if authz_field:
        if not authz_field.startswith(b"a="):
            raise SaslSyntaxError("gs2 header: expected 'a=<authzid>'")
        # RFC 5801 §4: saslname escapes ',' as =2C and '=' as =3D.
        raw = _SASLNAME_ESCAPE.sub(
            lambda m: b"," if m.group(1) == b"2C" else b"=", authz_field[2:]
        )
        try:
            authzid = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SaslSyntaxError("authzid is not UTF-8") from None
    if not rest.startswith(KVSEP) or not rest.endswith(KVSEP + KVSEP):
        raise SaslSyntaxError("expected kvsep-separated key=value pairs")
    token: str | None = None
    for pair in rest[1:-2].split(KVSEP):
        key, eq, value = pair.partition(b"=")
        if not eq or not re.fullmatch(rb"[A-Za-z]+", key):
            raise SaslSyntaxError("malformed key=value pair")
        if key == b"auth":
            token = _bearer(value)
    if token is None:
        raise SaslSyntaxError("no auth= pair")
    return BearerResponse(token, authzid)


def parse_xoauth2(message: bytes) -> BearerResponse:
    """XOAUTH2: ``user=<user> ^A auth=Bearer <token> ^A ^A`` (Google's format)."""
    if not message.endswith(KVSEP + KVSEP):
        raise SaslSyntaxError("expected to end with two ^A")
    user: str | None = None
    token: str | None = None
    for pair in message[:-2].split(KVSEP):
        key, eq, value = pair.partition(b"=")
        if not eq:
            raise SaslSyntaxError("malformed key=value pair")
        if key == b"user":
            try:
                user = value.decode("utf-8")
            except UnicodeDecodeError:
                raise SaslSyntaxError("user is not UTF-8") from None
        elif key == b"auth":
            token = _bearer(value)
    if token is None:
        raise SaslSyntaxError("no auth= pair")
    return BearerResponse(token, user or None)


def error_challenge(mechanism: str, rules: TokenRules | None) -> bytes:
    """The JSON a server sends before failing a token (not base64 yet).

    RFC 7628 §3.2.2: ``status``, with ``scope`` and ``openid-configuration``
    to help the client get a better token; XOAUTH2 uses an HTTP status.
    """
    scope = "openid"
    if mechanism == "XOAUTH2":
        body: dict[str, str] = {"status": "401", "schemes": "bearer", "scope": scope}
    else:
        body = {"status": "invalid_token", "scope": scope}
        if rules is not None:
            body["openid-configuration"] = (
                rules.issuer.rstrip("/") + "/.well-known/openid-configuration"
            )
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def verifier_for(settings: OAuthSettings) -> TokenVerifier:
    """The verifier ``[auth.oauth]`` describes."""
    keys: KeySource
    if settings.jwks_url is not None:
        keys = JwksUrl(settings.jwks_url, cache_ttl=settings.jwks_cache_ttl)
    else:
        assert settings.jwks_file is not None  # noqa: S101 - config checks one is set
        keys = JwksFile(settings.jwks_file)
    return TokenVerifier(settings.rules, keys)
