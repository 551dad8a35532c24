"""The texts sent to a patient's ordinary contact: one constructor per kind.

Owns: every word the relay says outside the trust space (issue 10). Each
:class:`relay.contact.NoticeKind` has one constructor here returning a
:class:`relay.contact.ContactNotice`; nothing else builds one.

What must stay true:

- **No health data.** The texts are fixed French sentences. The only
  variable parts are operator settings (how to read, where to see an access
  report) and, for account codes, the one-time code and its validity; never
  a sender, a subject, a document or anything from a message. The
  constructors take nothing that could carry them.
- The SMS text (``short``) fits one SMS: at most 160 characters of the GSM
  03.38 alphabet (3GPP TS 23.038 §6.2.1), counting the extension characters
  twice; a constructor that would exceed it raises :class:`ValueError`
  (the config check builds every text once at start, so it fails there).
"""

from __future__ import annotations

import re
from typing import Final

from relay.contact import ContactNotice, NoticeKind

# 3GPP TS 23.038 §6.2.1: the GSM 7-bit default alphabet (without ESC) and its
# extension table (each extension character takes two septets).
GSM7_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION: Final = frozenset("^{}\\[~]|€\f")
# One SMS holds 160 septets (3GPP TS 23.040 §9.2.3.16 with no header).
SMS_MAX_SEPTETS: Final = 160
# A one-time code: digits and capitals (a dash for readability), nothing that
# could carry words.
_CODE: Final = re.compile(r"[0-9A-Z]{4,12}(-[0-9A-Z]{2,12}){0,3}")

SERVICE: Final = "Messagerie de santé"
_AUTOMATIC: Final = (
    "Ceci est un message automatique : merci de ne pas y répondre.\n"
    "Votre messagerie de santé ne vous demandera jamais votre mot de passe"
    " par courriel ou par SMS.\n"
)


def gsm7_septets(text: str) -> int:
    """The length of ``text`` in GSM 7-bit septets; ValueError if it needs UCS-2."""
    count = 0
    for char in text:
        if char in GSM7_BASIC:
            count += 1
        elif char in GSM7_EXTENSION:
            count += 2
        else:
            raise ValueError(f"{char!r} is not in the GSM 7-bit alphabet")
    return count


def _notice(kind: NoticeKind, subject: str, text: str, short: str) -> ContactNotice:
    if gsm7_septets(short) > SMS_MAX_SEPTETS:
        raise ValueError(
            f"the SMS text of a {kind} notice is longer than {SMS_MAX_SEPTETS}"
            f" characters: {short!r}"
        )
    return ContactNotice(kind=kind, subject=subject, text=text, short=short)


def new_message(*, read_url: str = "", imap_host: str = "") -> ContactNotice:
    """NEW_MESSAGE: a secure message waits, and how to read it.

    ``read_url``: the web address where patients read their mail; else
    ``imap_host``, the server their mail client connects to.
    """
    if read_url:
        how = f"connectez-vous à votre messagerie de santé : {read_url}"
        short_how = read_url
    elif imap_host:
        how = (
            "ouvrez votre messagerie de santé dans votre logiciel de messagerie"
            f" (serveur {imap_host})"
        )
        short_how = f"serveur {imap_host}"
    else:
        raise ValueError("new_message: read_url or imap_host is required")
    text = (
        "Bonjour,\n"
        "\n"
        "Un nouveau message sécurisé vous attend dans votre messagerie de santé.\n"
        "\n"
        f"Pour le lire, {how}.\n"
        "\n"
        "Pour protéger vos données de santé, ce courriel ne dit rien du message :"
        " ni qui l'a envoyé, ni son objet, ni son contenu.\n"
        "\n" + _AUTOMATIC
    )
    short = f"{SERVICE} : un nouveau message sécurisé vous attend. Pour le lire : {short_how}"
    return _notice(
        NoticeKind.NEW_MESSAGE,
        "Un nouveau message vous attend dans votre messagerie de santé",
        text,
        short,
    )


def validity(seconds: float) -> str:
    """A validity in plain French: "15 minutes", "1 heure", "2 jours"."""
    minutes = max(1, round(seconds / 60))
    if minutes < 120 and minutes % 60:
        return f"{minutes} minute{'s' if minutes > 1 else ''}"
    hours = round(minutes / 60)
    if hours < 48 and hours % 24:
        return f"{hours} heure{'s' if hours > 1 else ''}"
    days = round(hours / 24)
    return f"{days} jour{'s' if days > 1 else ''}"


def _code(code: str) -> str:
    if not _CODE.fullmatch(code):
        raise ValueError("a one-time code is 4 to 12 digits or capital letters")
    return code


def _where(url: str, action: str) -> str:
    return f"Pour {action}, rendez-vous sur {url}\n" if url else ""


def activation_code(code: str, *, valid_for: float, url: str = "") -> ContactNotice:
    """ACTIVATION_CODE: the one-time code that opens the account (seconds
    valid), and the address of the page where it is used."""
    code, lasting = _code(code), validity(valid_for)
    text = (
        "Bonjour,\n"
        "\n"
        f"Votre code d'activation de messagerie de santé est : {code}\n"
        f"Il est valable {lasting} et ne sert qu'une fois.\n"
        + _where(url, "choisir votre mot de passe")
        + "Votre identifiant est votre matricule INS (15 caractères).\n"
        "\n"
        "Ne le communiquez à personne. Si vous n'avez pas demandé l'ouverture"
        " de votre messagerie de santé, ignorez ce message.\n"
        "\n" + _AUTOMATIC
    )
    short = (
        f"{SERVICE} : votre code d'activation est {code}, valable {lasting}."
        " Ne le communiquez à personne."
    )
    return _notice(
        NoticeKind.ACTIVATION_CODE,
        "Votre code d'activation de messagerie de santé",
        text,
        short,
    )


def recovery_code(code: str, *, valid_for: float, url: str = "") -> ContactNotice:
    """RECOVERY_CODE: the one-time code that lets the patient set a new
    password, and the address of the page where it is used."""
    code, lasting = _code(code), validity(valid_for)
    text = (
        "Bonjour,\n"
        "\n"
        "Pour choisir un nouveau mot de passe de messagerie de santé, utilisez"
        f" ce code : {code}\n"
        f"Il est valable {lasting} et ne sert qu'une fois.\n"
        + _where(url, "le saisir")
        + "\n"
        "Ne le communiquez à personne. Si vous n'avez rien demandé, ignorez ce"
        " message : votre mot de passe reste le même.\n"
        "\n" + _AUTOMATIC
    )
    short = (
        f"{SERVICE} : votre code pour un nouveau mot de passe est {code}, valable"
        f" {lasting}. Ne le communiquez à personne."
    )
    return _notice(
        NoticeKind.RECOVERY_CODE,
        "Votre code pour un nouveau mot de passe de messagerie de santé",
        text,
        short,
    )


def break_glass(*, access_report_url: str = "") -> ContactNotice:
    """BREAK_GLASS: an administrator opened the mailbox; where to see why."""
    where = (
        f"sur {access_report_url}"
        if access_report_url
        else "dans le relevé des accès déposé dans votre messagerie de santé"
    )
    text = (
        "Bonjour,\n"
        "\n"
        "Un administrateur de votre messagerie de santé a ouvert votre boîte aux"
        " lettres. Cet accès exceptionnel et son motif sont enregistrés.\n"
        "\n"
        f"Vous pouvez en voir le motif {where}.\n"
        "\n" + _AUTOMATIC
    )
    short_where = access_report_url or "dans votre relevé des accès"
    short = (
        f"{SERVICE} : un administrateur a ouvert votre messagerie. Motif consultable"
        f" {'sur ' if access_report_url else ''}{short_where}"
    )
    return _notice(
        NoticeKind.BREAK_GLASS,
        "Un accès exceptionnel à votre messagerie de santé",
        text,
        short,
    )
