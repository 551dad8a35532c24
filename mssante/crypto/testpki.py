"""A test PKI modelled on IGC-Santé, generated in memory.

Owns the certificates that tests and the demo use: a root, three
intermediates (persons, organisations, servers) like IGC-Santé's
``AC IGC-SANTE ... PERSONNES / ORGANISATIONS`` hierarchy, and leaves for
practitioners, organisational mailboxes, operators (TLS client + server) and
servers (TLS server, ``localhost`` / ``127.0.0.1``), with expired, revoked
(listed on the issuer's CRL), wrong-usage and untrusted variants.

What must stay true:

- keys are generated at run time and live only in memory; nothing here reads
  or writes files (callers write the PEM bytes where they need them), and no
  private key is ever committed;
- time comes in as a parameter (``at``); certificates are valid from one day
  before ``at`` for a year, CAs for ten years;
- TLS certificates (operator, server) are RSA 2048, since the MSSanté TLS 1.2
  suites are ECDHE-RSA; ECDSA P-256 is offered for message signing only;
- every leaf carries an AKI, an SKI and a CRL distribution point; every CA
  issues a CRL (:meth:`TestPKI.crls`) listing what :meth:`TestPKI.revoke`
  revoked.

Typical use::

    pki = TestPKI(at=now)
    alice = pki.practitioner("alice@hopital.mssante.test")
    server = pki.server()                 # CN=localhost, SAN localhost, 127.0.0.1
    op = pki.operator("mail.operator.example")
    open("server.pem", "wb").write(server.fullchain_pem)   # caller's I/O
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Issued", "KeyType", "TestPKI", "Usage"]

RSA_BITS: Final = 2048  # MSSanté TLS and S/MIME profile: RSA 2048 minimum
CA_LIFETIME: Final = timedelta(days=3650)
LEAF_LIFETIME: Final = timedelta(days=365)
BACKDATE: Final = timedelta(days=1)
CRL_LIFETIME: Final = timedelta(days=7)
CRL_BASE: Final = "http://crl.igc-sante.test/"

KeyType = Literal["rsa", "ec"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class Usage(enum.Enum):
    """What an S/MIME leaf may do (key usage bits)."""

    SIGNATURE = "signature"
    ENCRYPTION = "encryption"
    BOTH = "both"


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate with its private key and issuing chain.

    ``chain`` holds the intermediates from the issuer up to, not including,
    the root; it is empty for a root.
    """

    cert: x509.Certificate
    key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM: for tests and the demo only."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def chain_pem(self) -> bytes:
        """The intermediates, PEM, issuer first."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    @property
    def fullchain_pem(self) -> bytes:
        """Leaf then intermediates: what a TLS server presents."""
        return self.cert_pem + self.chain_pem


def _name(
    cn: str, *, o: str, ou: str | None = None, serial: str | None = None
) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, o),
    ]
    if ou is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    if serial is not None:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _new_key(kind: KeyType) -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def _key_usage(*, sign: bool, encipher: bool, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=sign and not ca,
        key_encipherment=encipher,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


class TestPKI:
    """An IGC-Santé-like hierarchy, built in memory at ``at``.

    Args:
        at: the reference time; certificates are valid from ``at - 1 day``.
        organisation: ``O=`` of the CA names.

    The instance keeps which certificates it revoked, per issuer, so that
    :meth:`crls` lists them.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, at: datetime, *, organisation: str = "MSSANTE TEST") -> None:
        self.at = at
        self._org = organisation
        self._revoked: dict[x509.Name, list[tuple[int, datetime]]] = {}
        root_key = _new_key("rsa")
        root_name = _name(
            "TEST AC RACINE IGC-SANTE", o=organisation, ou="IGC-SANTE TEST"
        )
        self.root = Issued(
            self._sign(root_name, root_key, root_key, None, ca=0), root_key
        )
        self.persons = self._intermediate("TEST AC IGC-SANTE PERSONNES", self.root)
        self.organisations = self._intermediate(
            "TEST AC IGC-SANTE ORGANISATIONS", self.root
        )
        self.servers = self._intermediate("TEST AC IGC-SANTE SERVEURS", self.root)
        other_key = _new_key("rsa")
        other_name = _name("AC RACINE HORS CONFIANCE", o="UNTRUSTED TEST")
        self.untrusted_root = Issued(
            self._sign(other_name, other_key, other_key, None, ca=0), other_key
        )

    # -- public: trust material -------------------------------------------------

    @property
    def root_pem(self) -> bytes:
        """The trust anchor, PEM."""
        return self.root.cert_pem

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        return (self.persons.cert, self.organisations.cert, self.servers.cert)

    @property
    def intermediates_pem(self) -> bytes:
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in self.intermediates
        )

    def revoke(self, issued: Issued, *, at: datetime | None = None) -> None:
        """Record ``issued`` as revoked by its issuer (listed by :meth:`crls`)."""
        when = self.at - timedelta(hours=1) if at is None else at
        self._revoked.setdefault(issued.cert.issuer, []).append(
            (issued.cert.serial_number, when)
        )

    def crls(self, *, at: datetime | None = None) -> tuple[bytes, ...]:
        """DER CRLs of the root and the three intermediates, issued at ``at``.

        ``at`` defaults to one hour before the PKI's reference time; the CRLs
        are valid for a week.
        """
        when = self.at - timedelta(hours=1) if at is None else at
        return tuple(
            self._crl(ca, when)
            for ca in (self.root, self.persons, self.organisations, self.servers)
        )

    # -- public: leaves ---------------------------------------------------------

    def practitioner(
        self,
        address: str,
        *,
        name: str = "DUPONT Jean",
        rpps: str | None = None,
        key: KeyType = "rsa",
        usage: Usage = Usage.BOTH,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> Issued:
        """An S/MIME certificate for a health professional's mailbox.

        EKU emailProtection, the address as an rfc822Name SAN; ``rpps`` goes
        into the subject serialNumber as the national id ``8`` + RPPS. An EC
        key can only sign (no key transport), so ``key="ec"`` forces
        :attr:`Usage.SIGNATURE`.
        """
        return self._smime(
            self.persons,
            address,
            _name(
                name,
                o=self._org,
                ou="PROFESSIONNEL DE SANTE",
                serial=None if rpps is None else "8" + rpps,
            ),
            key=key,
            usage=usage,
            not_before=not_before,
            not_after=not_after,
        )

    def organisation(
        self,
        address: str,
        *,
        name: str = "HOPITAL TEST",
        finess: str | None = None,
        key: KeyType = "rsa",
        usage: Usage = Usage.BOTH,
    ) -> Issued:
        """An S/MIME certificate for an organisational (ORG/APP) mailbox."""
        return self._smime(
            self.organisations,
            address,
            _name(name, o=name, ou=None if finess is None else finess),
            key=key,
            usage=usage,
        )

    def operator(
        self,
        hostname: str = "mail.operator.example",
        *,
        organisation: str = "OPERATEUR TEST",
        unit: str = "MSSANTE",
        expired: bool = False,
    ) -> Issued:
        """An operator's TLS certificate, client and server (mutual TLS on MX).

        RSA 2048, EKU serverAuth + clientAuth, subject
        ``CN=<hostname>,OU=<unit>,O=<organisation>,C=FR`` (the DN an operator
        whitelist names), SAN dNSName ``hostname``. ``expired``: it ended 30
        days before ``at``.
        """
        return self._tls(
            _name(hostname, o=organisation, ou=unit),
            dns=(hostname,),
            ips=(),
            eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            not_after=self.at - timedelta(days=30) if expired else None,
        )

    def server(
        self,
        hostnames: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1", "::1"),
        *,
        organisation: str = "OPERATEUR TEST",
    ) -> Issued:
        """A TLS server certificate: RSA 2048, serverAuth, SAN DNS and IP.

        The defaults fit a relay listening on loopback in tests and the demo.
        """
        return self._tls(
            _name(hostnames[0], o=organisation, ou="SERVEUR"),
            dns=hostnames,
            ips=ips,
            eku=[ExtendedKeyUsageOID.SERVER_AUTH],
        )

    def expired(self, address: str, *, key: KeyType = "rsa") -> Issued:
        """A practitioner certificate that ended 30 days before ``at``."""
        return self.practitioner(
            address,
            key=key,
            not_before=self.at - timedelta(days=400),
            not_after=self.at - timedelta(days=30),
        )

    def revoked(self, address: str, *, key: KeyType = "rsa") -> Issued:
        """A practitioner certificate, revoked an hour before ``at``."""
        issued = self.practitioner(address, key=key)
        self.revoke(issued)
        return issued

    def wrong_usage(self, address: str) -> Issued:
        """A certificate for the address with EKU serverAuth only (no S/MIME)."""
        key = _new_key("rsa")
        cert = self._sign(
            _name("USAGE ERRONE", o=self._org, ou="PROFESSIONNEL DE SANTE"),
            key,
            self.persons.key,
            self.persons.cert,
            ku=_key_usage(sign=True, encipher=True),
            eku=[ExtendedKeyUsageOID.SERVER_AUTH],
            san=[x509.RFC822Name(address)],
        )
        return Issued(cert, key, (self.persons.cert,))

    def untrusted(self, address: str, *, key: KeyType = "rsa") -> Issued:
        """A well-formed S/MIME certificate issued by a root nobody trusts."""
        return self._smime(
            self.untrusted_root,
            address,
            _name("HORS CONFIANCE", o="UNTRUSTED TEST"),
            key=key,
            usage=Usage.BOTH,
            chain=(),
        )

    # -- internals ----------------------------------------------------------------

    def _intermediate(self, cn: str, parent: Issued) -> Issued:
        key = _new_key("rsa")
        cert = self._sign(
            _name(cn, o=self._org, ou="IGC-SANTE TEST"),
            key,
            parent.key,
            parent.cert,
            ca=0,
        )
        return Issued(cert, key, ())

    def _smime(
        self,
        ca: Issued,
        address: str,
        subject: x509.Name,
        *,
        key: KeyType,
        usage: Usage,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        chain: tuple[x509.Certificate, ...] | None = None,
    ) -> Issued:
        if key == "ec":
            usage = Usage.SIGNATURE
        private = _new_key(key)
        cert = self._sign(
            subject,
            private,
            ca.key,
            ca.cert,
            # RFC 8550 §4.4.2: digitalSignature to sign, keyEncipherment for
            # RSA key transport.
            ku=_key_usage(
                sign=usage is not Usage.ENCRYPTION,
                encipher=usage is not Usage.SIGNATURE,
            ),
            # RFC 8550 §4.4.4: id-kp-emailProtection.
            eku=[ExtendedKeyUsageOID.EMAIL_PROTECTION],
            # RFC 8550 §3: the address goes in subjectAltName rfc822Name.
            san=[x509.RFC822Name(address)],
            not_before=not_before,
            not_after=not_after,
        )
        return Issued(cert, private, (ca.cert,) if chain is None else chain)

    def _tls(
        self,
        subject: x509.Name,
        *,
        dns: tuple[str, ...],
        ips: tuple[str, ...],
        eku: list[x509.ObjectIdentifier],
        not_after: datetime | None = None,
    ) -> Issued:
        key = _new_key("rsa")
        san: list[x509.GeneralName] = [x509.DNSName(h) for h in dns]
        san += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
        cert = self._sign(
            subject,
            key,
            self.servers.key,
            self.servers.cert,
            ku=_key_usage(sign=True, encipher=True),
            eku=eku,
            san=san,
            not_before=None if not_after is None else not_after - timedelta(days=365),
            not_after=not_after,
        )
        return Issued(cert, key, (self.servers.cert,))

    def _sign(
        self,
        subject: x509.Name,
        key: PrivateKey,
        issuer_key: PrivateKey,
        issuer: x509.Certificate | None,
        *,
        ca: int | None = None,
        ku: x509.KeyUsage | None = None,
        eku: list[x509.ObjectIdentifier] | None = None,
        san: list[x509.GeneralName] | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> x509.Certificate:
        is_ca = ca is not None
        lifetime = CA_LIFETIME if is_ca else LEAF_LIFETIME
        start = self.at - BACKDATE if not_before is None else not_before
        end = start + lifetime if not_after is None else not_after
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if issuer is None else issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            # RFC 5280 §4.2.1.9
            .add_extension(
                x509.BasicConstraints(
                    ca=is_ca, path_length=None if issuer is None else ca
                ),
                critical=True,
            )
            .add_extension(
                ku or _key_usage(sign=False, encipher=False, ca=True), critical=True
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                critical=False,
            )
        )
        if issuer is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    issuer_key.public_key()
                ),
                critical=False,
            ).add_extension(
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            [x509.UniformResourceIdentifier(_crl_url(issuer))],
                            None,
                            None,
                            None,
                        )
                    ]
                ),
                critical=False,
            )
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        if san is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(san), critical=False
            )
        return builder.sign(issuer_key, hashes.SHA256())

    def _crl(self, ca: Issued, at: datetime) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.cert.subject)
            .last_update(at)
            .next_update(at + CRL_LIFETIME)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                critical=False,
            )
            .add_extension(x509.CRLNumber(1), critical=False)
        )
        for serial, when in self._revoked.get(ca.cert.subject, []):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(when)
                .build()
            )
        return builder.sign(ca.key, hashes.SHA256()).public_bytes(
            serialization.Encoding.DER
        )


def _crl_url(issuer: x509.Certificate) -> str:
    cn = issuer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    slug = str(cn).lower().replace(" ", "-")
    return f"{CRL_BASE}{slug}.crl"
