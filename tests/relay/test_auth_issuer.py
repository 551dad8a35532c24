"""A local OpenID Connect issuer, and the token verifier against it.

:class:`LocalIssuer` generates its keys at run time, publishes them as a JWKS
(in memory or a file) and mints tokens: good ones, expired ones, for another
audience, signed by a key it does not publish. The SMTP, IMAP and CLI auth
tests import it from here.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from directory.model import BalType, Certificate, CertificateUsage
from relay.accounts import (
    DEMO_MECHANISMS,
    PRODUCTION_MECHANISMS,
    AccountKind,
    Mechanism,
)
from relay.config import OAuthSettings
from relay.oauth import (
    JwksFile,
    KeysUnavailableError,
    SaslSyntaxError,
    StaticKeys,
    TokenProblem,
    TokenRefusedError,
    TokenRules,
    TokenVerifier,
    error_challenge,
    parse_oauthbearer,
    parse_xoauth2,
)
from tests.directory import samples
from tests.support.relay_fixtures import (
    DOCTOR,
    Harness,
    TlsFiles,
    relay_config,
    started,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from mssante.crypto.testpki import TestPKI
    from relay.config import Config

ISSUER = "https://auth.esante.test/realms/esante-wallet"
AUDIENCE = "mssante-relay"
CLAIM = "SubjectNameID"  # where Pro Santé Connect puts the national id 8<RPPS>
NOW = 1_780_000_000.0


@dataclass
class LocalIssuer:
    """Keys and token minting for tests; nothing leaves the process but files."""

    issuer: str = ISSUER
    audience: str = AUDIENCE
    rsa_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(65537, 2048)
    )
    ec_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    # Keys of the same shapes the issuer never published (a forger's).
    rogue_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(65537, 2048)
    )
    rogue_ec_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    @property
    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(RSAAlgorithm.to_jwk(self.rsa_key.public_key()))
        ec_jwk = json.loads(ECAlgorithm.to_jwk(self.ec_key.public_key()))
        rsa_jwk |= {"kid": "rsa-1", "use": "sig", "alg": "RS256"}
        ec_jwk |= {"kid": "ec-1", "use": "sig", "alg": "ES256"}
        return {"keys": [rsa_jwk, ec_jwk]}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks), encoding="utf-8")
        return path

    def rules(self, claim: str = CLAIM) -> TokenRules:
        return TokenRules(issuer=self.issuer, audience=self.audience, claim=claim)

    def token(
        self,
        identity: str,
        *,
        now: float = NOW,
        lifetime: float = 300,
        key: str = "rsa",
        **claims: Any,  # noqa: ANN401 - JSON values
    ) -> str:
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + lifetime),
            CLAIM: identity,
            "sub": "f3a1c2",
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        if key in ("ec", "rogue-ec"):
            signer_ec = self.rogue_ec_key if key == "rogue-ec" else self.ec_key
            return jwt.encode(body, signer_ec, "ES256", headers={"kid": "ec-1"})
        signer = self.rogue_key if key == "rogue" else self.rsa_key
        return jwt.encode(body, signer, "RS256", headers={"kid": "rsa-1"})


@pytest.fixture(scope="session")
def issuer() -> LocalIssuer:
    return LocalIssuer()


def oauthbearer(token: str, user: str | None = None) -> bytes:
    """RFC 7628 §3.1 client response, as a client builds it by hand."""
    authz = f"a={user}" if user else ""
    return f"n,{authz},\x01host=localhost\x01port=587\x01auth=Bearer {token}\x01\x01".encode()


def xoauth2(token: str, user: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


@pytest.fixture
def verifier(issuer: LocalIssuer) -> TokenVerifier:
    return TokenVerifier(issuer.rules(), StaticKeys(issuer.jwks))


RPPS_ID = "810101234567"


def test_good_token_gives_the_configured_claim(
    issuer: LocalIssuer, verifier: TokenVerifier
) -> None:
    verified = verifier.verify(issuer.token(RPPS_ID), now=NOW + 10)
    assert verified.identity == RPPS_ID


def test_ec_signed_token_is_accepted(
    issuer: LocalIssuer, verifier: TokenVerifier
) -> None:
    assert verifier.verify(issuer.token(RPPS_ID, key="ec"), now=NOW).identity == RPPS_ID


@pytest.mark.parametrize(
    ("kwargs", "at", "problem"),
    [
        ({}, NOW + 301 + 60, TokenProblem.EXPIRED),
        ({}, NOW - 61, TokenProblem.NOT_YET_VALID),
        ({"aud": "another-service"}, NOW, TokenProblem.WRONG_AUDIENCE),
        ({"iss": "https://evil.example"}, NOW, TokenProblem.WRONG_ISSUER),
        ({"key": "rogue"}, NOW, TokenProblem.BAD_SIGNATURE),
        ({"exp": None}, NOW, TokenProblem.MISSING_CLAIM),
        ({CLAIM: None}, NOW, TokenProblem.MISSING_CLAIM),
    ],
    ids=[
        "expired",
        "not-yet-valid",
        "wrong-audience",
        "wrong-issuer",
        "wrong-key",
        "no-exp",
        "no-identity",
    ],
)
def test_refused_token_names_its_problem(
    issuer: LocalIssuer,
    verifier: TokenVerifier,
    kwargs: dict[str, Any],
    at: float,
    problem: TokenProblem,
) -> None:
    token = issuer.token(RPPS_ID, **kwargs)
    with pytest.raises(TokenRefusedError) as caught:
        verifier.verify(token, now=at)
    assert caught.value.problem is problem


def test_clock_skew_tolerates_a_slightly_late_clock(
    issuer: LocalIssuer, verifier: TokenVerifier
) -> None:
    # exp = NOW + 300; within the 60 s leeway.
    assert verifier.verify(issuer.token(RPPS_ID), now=NOW + 330).identity == RPPS_ID


def test_unsigned_and_hmac_tokens_are_refused(
    issuer: LocalIssuer, verifier: TokenVerifier
) -> None:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 60, CLAIM: RPPS_ID}
    unsigned = jwt.encode(claims, "", "none")
    # An HMAC "signed" with the public key: the classic algorithm confusion.
    # Built by hand: PyJWT itself refuses to sign with such a key.
    public = json.dumps(issuer.jwks["keys"][0]).encode()
    signing_input = (
        _b64url(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode())
        + "."
        + _b64url(json.dumps(claims).encode())
    )
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    hmac_token = signing_input + "." + _b64url(mac)
    for token in (unsigned, hmac_token, "not.a.jwt", "garbage"):
        with pytest.raises(TokenRefusedError) as caught:
            verifier.verify(token, now=NOW)
        assert caught.value.problem in {TokenProblem.ALGORITHM, TokenProblem.MALFORMED}


def test_unknown_key_id_is_refused(issuer: LocalIssuer) -> None:
    token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 60, CLAIM: RPPS_ID},
        issuer.rsa_key,
        "RS256",
        headers={"kid": "retired-2019"},
    )
    with pytest.raises(TokenRefusedError) as caught:
        TokenVerifier(issuer.rules(), StaticKeys(issuer.jwks)).verify(token, now=NOW)
    assert caught.value.problem is TokenProblem.UNKNOWN_KEY


def test_jwks_file_is_read_again_after_key_rotation(
    issuer: LocalIssuer, tmp_path: Path
) -> None:
    path = issuer.write_jwks(tmp_path / "jwks.json")
    verifier = TokenVerifier(issuer.rules(), JwksFile(path))
    assert verifier.verify(issuer.token(RPPS_ID), now=NOW).identity == RPPS_ID
    rotated = dataclasses.replace(issuer, rsa_key=issuer.rogue_key)
    rotated.write_jwks(path)
    token = rotated.token(RPPS_ID)
    assert verifier.verify(token, now=NOW).identity == RPPS_ID
    with pytest.raises(TokenRefusedError):
        verifier.verify(issuer.token(RPPS_ID), now=NOW)


def test_missing_jwks_file_is_a_temporary_failure(
    issuer: LocalIssuer, tmp_path: Path
) -> None:
    verifier = TokenVerifier(issuer.rules(), JwksFile(tmp_path / "absent.json"))
    with pytest.raises(KeysUnavailableError):
        verifier.verify(issuer.token(RPPS_ID), now=NOW)


def test_oauthbearer_response_is_parsed_with_escaped_authzid() -> None:
    parsed = parse_oauthbearer(oauthbearer("abc.def.ghi", "a=2Cb"))
    assert parsed.token == "abc.def.ghi"
    assert parsed.authzid == "a,b"
    assert parse_oauthbearer(b"n,,\x01auth=Bearer t\x01\x01").authzid is None


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"p=tls-unique,,\x01auth=Bearer t\x01\x01",  # channel binding
        b"n,,\x01auth=Bearer t\x01",  # one kvsep short
        b"n,,\x01auth=Basic dXNlcg==\x01\x01",
        b"n,,\x01host=x\x01\x01",  # no auth
        b"n,u=x,\x01auth=Bearer t\x01\x01",
        b"n,,\x01=x\x01auth=Bearer t\x01\x01",
    ],
)
def test_malformed_oauthbearer_response_is_a_syntax_error(message: bytes) -> None:
    with pytest.raises(SaslSyntaxError):
        parse_oauthbearer(message)


def test_xoauth2_response_is_parsed() -> None:
    parsed = parse_xoauth2(xoauth2("tok", "zoe@example"))
    assert (parsed.token, parsed.authzid) == ("tok", "zoe@example")
    with pytest.raises(SaslSyntaxError):
        parse_xoauth2(b"user=x\x01\x01")


def test_error_challenge_follows_rfc_7628(issuer: LocalIssuer) -> None:
    body = json.loads(error_challenge("OAUTHBEARER", issuer.rules()))
    assert body["status"] == "invalid_token"
    assert body["openid-configuration"].startswith(ISSUER + "/.well-known/")
    assert json.loads(error_challenge("XOAUTH2", None))["status"] == "401"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def now() -> float:
    return time.time()


# -- a relay that trusts the local issuer ----------------------------------------

APP_ADDRESS = "lps@ch-paris-1.mssante.fr"
APP_LOGIN = "lps-cabinet"


@dataclass
class AuthRelay:
    harness: Harness
    issuer: LocalIssuer
    app_cert: Path  # TLS client certificate of the APP mailbox
    app_key: Path
    stranger_cert: Path  # trusted, but attached to no mailbox
    stranger_key: Path


@pytest.fixture(scope="session")
def app_tls(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("app-tls")
    app = pki.operator("lps.cabinet.example", organisation="CABINET TEST")
    stranger = pki.operator("other.cabinet.example", organisation="CABINET B")
    for name, issued in (("app", app), ("stranger", stranger)):
        (out / f"{name}.pem").write_bytes(issued.fullchain_pem)
        (out / f"{name}.key").write_bytes(issued.key_pem)
    return {"dir": out, "der": app.cert_der}


def auth_config(
    cfg: Config,
    jwks: Path,
    *,
    production: bool = False,
    **auth: Any,  # noqa: ANN401
) -> Config:
    oauth = OAuthSettings(issuer=ISSUER, audience=AUDIENCE, claim=CLAIM, jwks_file=jwks)
    mechanisms = (
        PRODUCTION_MECHANISMS
        if production
        else DEMO_MECHANISMS.replace(
            {
                AccountKind.APPLICATION: DEMO_MECHANISMS.for_kind(
                    AccountKind.APPLICATION
                )
                | {Mechanism.EXTERNAL}
            }
        )
    )
    return dataclasses.replace(
        cfg,
        auth=dataclasses.replace(
            cfg.auth,
            oauth=oauth,
            production=production,
            mechanisms=mechanisms,
            **auth,
        ),
    )


@contextlib.asynccontextmanager
async def auth_relay_started(
    tmp_path: Path,
    tls_files: TlsFiles,
    issuer: LocalIssuer,
    app_tls: dict[str, Any],
    *,
    production: bool = False,
) -> AsyncIterator[AuthRelay]:
    cfg = relay_config(tmp_path, tls_files.directory, None)
    jwks = issuer.write_jwks(tmp_path / "jwks.json")
    cfg = auth_config(cfg, jwks, production=production)
    async with started(tls_files, cfg) as h:
        accounts = h.running.accounts
        accounts.set_external_id(DOCTOR.address, "8" + samples.RPPS_1)
        await h.running.directory.add(
            samples.org_mailbox(
                APP_ADDRESS,
                bal_type=BalType.APP,
                certificates=(
                    Certificate(
                        usage=CertificateUsage.AUTHENTICATION, der=app_tls["der"]
                    ),
                ),
            )
        )
        accounts.create(APP_LOGIN, AccountKind.APPLICATION, None, [APP_ADDRESS])
        d = app_tls["dir"]
        yield AuthRelay(
            h,
            issuer,
            d / "app.pem",
            d / "app.key",
            d / "stranger.pem",
            d / "stranger.key",
        )


@pytest.fixture
async def auth_relay(
    tmp_path: Path, tls_files: TlsFiles, issuer: LocalIssuer, app_tls: dict[str, Any]
) -> AsyncIterator[AuthRelay]:
    async with auth_relay_started(tmp_path, tls_files, issuer, app_tls) as r:
        yield r


@pytest.fixture
async def production_relay(
    tmp_path: Path, tls_files: TlsFiles, issuer: LocalIssuer, app_tls: dict[str, Any]
) -> AsyncIterator[AuthRelay]:
    async with auth_relay_started(
        tmp_path, tls_files, issuer, app_tls, production=True
    ) as r:
        yield r
