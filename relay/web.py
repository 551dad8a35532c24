"""The HTTPS listener where patients activate their account and recover it.

Owns: the ``[web]`` listener and its three forms, each a ``GET`` (a plain
HTML form for a browser) and a ``POST`` taking form fields
(``application/x-www-form-urlencoded`` or ``multipart/form-data``) or a JSON
object:

- ``POST /activate`` ``login``, ``code``, ``password``: sets the first
  password; 200, or 400 (weak password: the policy's message; any problem
  with the code or the login: one message), 429 when throttled.
- ``POST /recover`` ``login``: 202 and the same text whatever the login
  (the code goes to the declared contact after the reply), 429 when
  throttled.
- ``POST /reset`` ``login``, ``code``, ``password``: as ``/activate``.

And, when the relay gives it a :class:`relay.selfservice.SelfService`, the
patient's own pages under ``/compte`` (:class:`AccountFace`): sign-in
(``POST /compte/connexion``), the mailbox's state and consent history
(``GET /compte``), a directory search (``GET /compte/recherche?q=``) and
one ``POST /compte/<action>`` per change (``fermer``, ``rouvrir``,
``bloquer``, ``debloquer``, ``aidant``, ``aidant/retirer``, ``contact``,
``medecin-traitant``, ``releve``, ``deconnexion``). HTML for browsers, JSON
for apps (``Accept: application/json`` or a JSON body).

A login is the patient's address or their INS matricule. Everything that
decides is in :class:`relay.enrolment.Enrolment`; this module parses and
renders. HTTP is aiohttp's (a maintained server, not a hand-written parser);
TLS is the relay's (:func:`relay.tls.server_context`: TLS 1.3, or TLS 1.2
with the MSSanté suites).

What must stay true:

- Nothing from a request body reaches a log: aiohttp's access log is off
  (it would print the request line and headers), and handlers log nothing
  but their failures' types.
- Answers carry ``Cache-Control: no-store`` and a content security policy
  that allows no script and posts only to this site.
- A request body is at most :data:`MAX_BODY` bytes.
- The session cookie is ``__Host-``, ``Secure; HttpOnly; SameSite=Strict``
  and holds a random token only. No ``/compte`` action reaches the service
  without a live session and its CSRF token (:meth:`AccountFace._guard`);
  the sign-in form carries its own (double-submit: cookie and field).
- Every refusal has its status (400 naming the field in French, 401, 403,
  429, 503); none becomes a 500.
"""

from __future__ import annotations

import contextlib
import html
import json
from typing import TYPE_CHECKING, Final

from aiohttp import web

from directory.errors import InvalidFieldError
from directory.model import ConsentAction, ProxyScope
from relay.accounts import WeakPasswordError
from relay.enrolment import (
    CodeRefusedError,
    ThrottledError,
    new_cid,
)
from relay.selfservice import (
    CsrfError,
    FieldError,
    NoSessionError,
    SelfServiceError,
    SignInRefusedError,
    UnavailableError,
    new_token,
    tokens_match,
)
from relay.selfservice import ThrottledError as SignInThrottledError

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Awaitable, Callable
    from datetime import datetime, tzinfo

    from relay.config import Listener
    from relay.enrolment import Enrolment
    from relay.selfservice import Changed, MailboxState, SelfService, Session

# A login, a code and a password fit in far less; forms are tiny.
MAX_BODY: Final = 16 * 1024
R200_OK: Final = 200
R202_ACCEPTED: Final = 202
R400_BAD_REQUEST: Final = 400
R429_TOO_MANY_REQUESTS: Final = 429
RECOVER_ANSWER: Final = (
    "Si ce compte existe, un code de récupération a été envoyé au contact déclaré."
)
_HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    # RFC 6797: browsers keep to HTTPS for this site.
    "Strict-Transport-Security": "max-age=31536000",
}

_FORMS: Final = {
    "activate": (
        "Activer mon compte",
        ("login", "code", "password"),
        "Choisissez votre mot de passe avec le code d'activation reçu.",
    ),
    "recover": (
        "Mot de passe perdu",
        ("login",),
        "Un code de récupération sera envoyé à votre contact déclaré.",
    ),
    "reset": (
        "Nouveau mot de passe",
        ("login", "code", "password"),
        "Choisissez un nouveau mot de passe avec le code de récupération reçu.",
    ),
}
_LABELS: Final = {
    "login": ("Identifiant (adresse ou matricule INS)", "text", "username"),
    "code": ("Code à usage unique", "text", "one-time-code"),
    "password": ("Nouveau mot de passe", "password", "new-password"),
}


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="fr"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def _form(name: str, message: str = "") -> str:
    title, fields, hint = _FORMS[name]
    inputs = "".join(
        f'<p><label>{html.escape(_LABELS[f][0])}<br><input name="{f}"'
        f' type="{_LABELS[f][1]}" autocomplete="{_LABELS[f][2]}" required></label></p>\n'
        for f in fields
    )
    note = f"<p><strong>{html.escape(message)}</strong></p>\n" if message else ""
    return _page(
        title,
        f"{note}<p>{html.escape(hint)}</p>\n"
        f'<form method="post" action="/{name}">\n{inputs}'
        '<p><button type="submit">Envoyer</button></p>\n</form>',
    )


class _Request:
    """The fields of one POST, and how to answer it."""

    def __init__(self, fields: dict[str, str], as_json: bool) -> None:
        self.fields = fields
        self.as_json = as_json

    def need(self, name: str) -> str:
        value = self.fields.get(name, "")
        if not value.strip():
            raise _MissingFieldError(name)
        return value


class _MissingFieldError(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name}: missing")


async def _read(request: web.Request) -> _Request:
    wants_json = "application/json" in request.headers.get("Accept", "")
    if request.content_type == "application/json":
        try:
            data = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise _MissingFieldError("body (not a JSON object)") from None
        if not isinstance(data, dict):
            raise _MissingFieldError("body (not a JSON object)")
        return _Request({k: v for k, v in data.items() if isinstance(v, str)}, True)
    form = await request.post()
    return _Request({k: v for k, v in form.items() if isinstance(v, str)}, wants_json)


def _answer(
    name: str, as_json: bool, status: int, message: str, *, ok: bool
) -> web.Response:
    if as_json:
        key = "status" if ok else "error"
        return web.json_response(
            {key: message}, status=status, headers=_HEADERS, dumps=json.dumps
        )
    body = (
        _page(_FORMS[name][0], f"<p>{html.escape(message)}</p>")
        if ok
        else _form(name, message)
    )
    return web.Response(
        text=body, status=status, content_type="text/html", headers=_HEADERS
    )


class WebFace:
    """The handlers: parse, call the enrolment service, render."""

    def __init__(self, service: Enrolment, account: SelfService | None = None) -> None:
        self._service = service
        self._account = account

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/", self.index)
        if self._account is not None:
            AccountFace(self._account).add_routes(app)
        for name, handler in (
            ("activate", self.activate),
            ("recover", self.recover),
            ("reset", self.reset),
        ):
            app.router.add_get(f"/{name}", self._show(name))
            app.router.add_post(f"/{name}", self._guard(name, handler))
        return app

    async def index(self, request: web.Request) -> web.Response:
        del request
        links = "".join(
            f'<li><a href="/{name}">{html.escape(title)}</a></li>'
            for name, (title, _, _) in _FORMS.items()
        )
        if self._account is not None:
            links = f'<li><a href="{ACCOUNT_PATH}">Mon compte</a></li>' + links
        return web.Response(
            text=_page("Messagerie sécurisée de santé", f"<ul>{links}</ul>"),
            content_type="text/html",
            headers=_HEADERS,
        )

    def _show(self, name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def show(request: web.Request) -> web.Response:
            del request
            return web.Response(
                text=_form(name), content_type="text/html", headers=_HEADERS
            )

        return show

    def _guard(
        self,
        name: str,
        handler: Callable[[_Request, str, str], Awaitable[web.Response]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """One place that turns the service's refusals into answers."""

        async def guarded(request: web.Request) -> web.Response:
            as_json = request.content_type == "application/json"
            try:
                parsed = await _read(request)
                as_json = parsed.as_json
                return await handler(parsed, request.remote or "", new_cid())
            except _MissingFieldError as exc:
                return _answer(name, as_json, R400_BAD_REQUEST, str(exc), ok=False)
            except WeakPasswordError as exc:
                return _answer(name, as_json, R400_BAD_REQUEST, str(exc), ok=False)
            except CodeRefusedError:
                return _answer(
                    name,
                    as_json,
                    R400_BAD_REQUEST,
                    "code : erroné, expiré ou déjà utilisé (ou identifiant inconnu)",
                    ok=False,
                )
            except ThrottledError as exc:
                response = _answer(
                    name,
                    as_json,
                    R429_TOO_MANY_REQUESTS,
                    "trop de tentatives : réessayez plus tard",
                    ok=False,
                )
                response.headers["Retry-After"] = str(int(exc.retry_after))
                return response

        return guarded

    async def activate(self, r: _Request, peer: str, cid: str) -> web.Response:
        await self._service.activate(
            r.need("login"), r.need("code"), r.need("password"), peer=peer, cid=cid
        )
        return _answer(
            "activate",
            r.as_json,
            R200_OK,
            "Compte activé : connectez-vous avec votre nouveau mot de passe.",
            ok=True,
        )

    async def recover(self, r: _Request, peer: str, cid: str) -> web.Response:
        self._service.request_recovery(r.need("login"), peer=peer, cid=cid)
        return _answer("recover", r.as_json, R202_ACCEPTED, RECOVER_ANSWER, ok=True)

    async def reset(self, r: _Request, peer: str, cid: str) -> web.Response:
        await self._service.reset(
            r.need("login"), r.need("code"), r.need("password"), peer=peer, cid=cid
        )
        return _answer(
            "reset",
            r.as_json,
            R200_OK,
            "Mot de passe changé : connectez-vous avec le nouveau.",
            ok=True,
        )


# -- the patient's own account (/compte) ------------------------------------------

ACCOUNT_PATH: Final = "/compte"
# RFC 6265bis §4.1.3.2: a "__Host-" cookie is Secure, has Path=/ and no
# Domain, so no other host can set or overwrite it.
SESSION_COOKIE: Final = "__Host-mss-session"
SIGN_IN_COOKIE: Final = "__Host-mss-sign-in"  # the sign-in form's CSRF token
CSRF_FIELD: Final = "csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
R303_SEE_OTHER: Final = 303
R401_UNAUTHORIZED: Final = 401
R403_FORBIDDEN: Final = 403
R503_SERVICE_UNAVAILABLE: Final = 503
_FIELD_LABELS: Final = {
    "login": "identifiant",
    "password": "mot de passe",
    "party": "expéditeur",
    "account": "compte",
    "scope": "portée",
    "until": "fin",
    "email": "courriel",
    "phone": "téléphone",
    "doctor": "médecin traitant",
    "q": "recherche",
}
_ACTIONS_FR: Final = {
    ConsentAction.OPT_OUT: "messagerie fermée",
    ConsentAction.OPT_IN: "messagerie rouverte",
    ConsentAction.BLOCK: "expéditeur bloqué",
    ConsentAction.UNBLOCK: "blocage levé",
    ConsentAction.PROXY_GRANTED: "accès d'un aidant accordé",
    ConsentAction.PROXY_REVOKED: "accès d'un aidant retiré",
    ConsentAction.CONTACT_CHANGED: "contact modifié",
    ConsentAction.TREATING_DOCTOR_SET: "médecin traitant déclaré",
    ConsentAction.BREAK_GLASS_OPENED: "accès exceptionnel d'un administrateur",
}
_SCOPES_FR: Final = {
    ProxyScope.READ: "lecture",
    ProxyScope.READ_REPLY: "lecture et réponse",
}
# What a successful action says (HTML: after the redirect, by this key).
_DONE: Final = {
    "fermer": "Votre messagerie est fermée : les nouveaux messages sont refusés.",
    "rouvrir": "Votre messagerie est rouverte.",
    "bloquer": "Expéditeur bloqué.",
    "debloquer": "Blocage levé.",
    "aidant": "Accès accordé.",
    "aidant/retirer": "Accès retiré.",
    "contact": "Contact modifié.",
    "medecin-traitant": "Médecin traitant déclaré.",
    "releve": "Votre relevé d'activité du mois a été déposé dans votre boîte de réception.",
    "inchange": "Rien à changer.",
}

if TYPE_CHECKING:
    # An action: (session, request fields, peer, cid) -> (changed, message).
    _Action = Callable[[Session, _Request, str, str], Awaitable[tuple[bool, str]]]


def _wants_json(request: web.Request) -> bool:
    return request.content_type == "application/json" or (
        "application/json" in request.headers.get("Accept", "")
    )


def _json(data: dict[str, object], status: int = R200_OK) -> web.Response:
    return web.json_response(data, status=status, headers=_HEADERS, dumps=json.dumps)


def _html(title: str, body: str, status: int = R200_OK) -> web.Response:
    return web.Response(
        text=_page(title, body),
        status=status,
        content_type="text/html",
        headers=_HEADERS,
    )


def _set_cookie(response: web.StreamResponse, name: str, value: str) -> None:
    # A session cookie (no Max-Age): gone with the browser; the server's
    # idle and absolute limits hold whatever the browser keeps.
    response.set_cookie(
        name, value, path="/", secure=True, httponly=True, samesite="Strict"
    )


def _clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path="/", secure=True, httponly=True, samesite="Strict")


def _esc(value: object) -> str:
    return html.escape(str(value))


def _day(value: datetime | None, zone: tzinfo) -> str:
    return "sans fin" if value is None else value.astimezone(zone).strftime("%d/%m/%Y")


def _field_message(exc: InvalidFieldError) -> tuple[str, str]:
    """A directory validation error, named in French (never its value)."""
    name = exc.field.rsplit(".", 1)[-1].removeprefix("contact_")
    label = _FIELD_LABELS.get(name, name)
    return name, f"{label} : valeur refusée"


def _hidden(csrf: str) -> str:
    return f'<input type="hidden" name="{CSRF_FIELD}" value="{_esc(csrf)}">'


def _button(path: str, csrf: str, label: str, **fields: str) -> str:
    extra = "".join(
        f'<input type="hidden" name="{_esc(k)}" value="{_esc(v)}">'
        for k, v in fields.items()
    )
    return (
        f'<form method="post" action="{ACCOUNT_PATH}/{path}">{_hidden(csrf)}{extra}'
        f'<button type="submit">{_esc(label)}</button></form>'
    )


def _sign_in_page(csrf: str, message: str = "") -> str:
    note = f"<p><strong>{_esc(message)}</strong></p>\n" if message else ""
    return (
        f"{note}<p>Connectez-vous avec l'adresse de votre messagerie sécurisée"
        " et votre mot de passe.</p>\n"
        f'<form method="post" action="{ACCOUNT_PATH}/connexion">{_hidden(csrf)}\n'
        '<p><label>Adresse de messagerie<br><input name="login" type="text"'
        ' autocomplete="username" required></label></p>\n'
        '<p><label>Mot de passe<br><input name="password" type="password"'
        ' autocomplete="current-password" required></label></p>\n'
        '<p><button type="submit">Se connecter</button></p>\n</form>\n'
        '<p><a href="/recover">Mot de passe perdu</a></p>'
    )


def _state_json(state: MailboxState) -> dict[str, object]:
    doctor = state.treating_doctor
    return {
        "address": state.address,
        "ins": state.ins,
        "open": not state.opted_out,
        "blocked": [
            {"party": b.party, "kind": b.kind, "name": b.name} for b in state.blocked
        ],
        "proxies": [
            {
                "account": p.account,
                "scope": p.scope.value,
                "granted_at": p.granted_at.isoformat(),
                "until": p.expires.isoformat() if p.expires else None,
                "active": p.active,
            }
            for p in state.proxies
        ],
        "contact": {"email": state.contact_email, "phone": state.contact_phone},
        "treating_doctor": None
        if doctor is None
        else {"address": doctor.party, "name": doctor.name},
        "history": [
            {
                "sequence": h.sequence,
                "time": h.time.isoformat(),
                "by": "patient" if h.by_patient else "administration",
                "action": h.action.value,
                "detail": dict(h.detail),
            }
            for h in state.history
        ],
    }


def _dashboard(
    state: MailboxState, csrf: str, zone: tzinfo, *, note: str = "", error: str = ""
) -> str:
    parts: list[str] = []
    if error:
        parts.append(f'<p role="alert"><strong>{_esc(error)}</strong></p>')
    if note:
        parts.append(f'<p role="status">{_esc(note)}</p>')
    parts.append(f"<p>Messagerie : <code>{_esc(state.address)}</code></p>")
    # The mailbox, open or closed.
    if state.opted_out:
        parts.append(
            "<h2>État</h2><p>Votre messagerie est <strong>fermée</strong> : les"
            " nouveaux messages sont refusés.</p>"
            + _button("rouvrir", csrf, "Rouvrir ma messagerie")
        )
    else:
        parts.append(
            "<h2>État</h2><p>Votre messagerie est <strong>ouverte</strong>.</p>"
            + _button("fermer", csrf, "Fermer ma messagerie")
        )
    # Blocked parties.
    rows = "".join(
        f"<tr><td>{_esc(b.name or '—')}</td><td><code>{_esc(b.party)}</code></td>"
        f"<td>{_button('debloquer', csrf, 'Débloquer', party=b.party)}</td></tr>"
        for b in state.blocked
    )
    parts.append(
        "<h2>Expéditeurs bloqués</h2>"
        + (
            f"<table><tr><th>Nom</th><th>Identifiant</th><th></th></tr>{rows}</table>"
            if rows
            else "<p>Aucun.</p>"
        )
        + f'<form method="post" action="{ACCOUNT_PATH}/bloquer">{_hidden(csrf)}'
        "<p><label>Adresse de messagerie, identifiant national du professionnel"
        " (8 + RPPS) ou de la structure (1 + FINESS, 3 + SIRET)<br>"
        '<input name="party" type="text" required></label> '
        '<button type="submit">Bloquer</button></p></form>'
        f'<form method="get" action="{ACCOUNT_PATH}/recherche">'
        '<p><label>Chercher dans l\'annuaire par nom<br><input name="q"'
        ' type="search" minlength="3" required></label> '
        '<button type="submit">Chercher</button></p></form>'
    )
    # Proxies.
    rows = "".join(
        f"<tr><td><code>{_esc(p.account)}</code></td><td>{_SCOPES_FR[p.scope]}</td>"
        f"<td>{_day(p.expires, zone)}{'' if p.active else ' (terminé)'}</td>"
        f"<td>{_button('aidant/retirer', csrf, 'Retirer', account=p.account)}</td></tr>"
        for p in state.proxies
    )
    parts.append(
        "<h2>Aidants et représentants</h2>"
        + (
            "<table><tr><th>Compte</th><th>Accès</th><th>Jusqu'au</th><th></th></tr>"
            f"{rows}</table>"
            if rows
            else "<p>Aucun.</p>"
        )
        + f'<form method="post" action="{ACCOUNT_PATH}/aidant">{_hidden(csrf)}'
        '<p><label>Compte de l\'aidant<br><input name="account" type="text"'
        " required></label></p>"
        '<p><label>Accès<br><select name="scope">'
        f'<option value="{ProxyScope.READ.value}">lecture</option>'
        f'<option value="{ProxyScope.READ_REPLY.value}">lecture et réponse</option>'
        "</select></label></p>"
        '<p><label>Jusqu\'au (un an au plus)<br><input name="until" type="date"'
        ' required></label></p><p><button type="submit">Accorder</button></p></form>'
    )
    # Contact.
    parts.append(
        "<h2>Contact habituel</h2><p>Où vous prévenir d'un nouveau message"
        " (sans rien de son contenu) et recevoir un code de récupération.</p>"
        f'<form method="post" action="{ACCOUNT_PATH}/contact">{_hidden(csrf)}'
        '<p><label>Courriel<br><input name="email" type="email" autocomplete="email"'
        f' value="{_esc(state.contact_email)}"></label></p>'
        '<p><label>Téléphone mobile<br><input name="phone" type="tel" autocomplete="tel"'
        f' value="{_esc(state.contact_phone)}"></label></p>'
        '<p><button type="submit">Enregistrer</button></p></form>'
    )
    # Treating doctor.
    doctor = state.treating_doctor
    current = (
        "<p>Aucun déclaré.</p>"
        if doctor is None
        else f"<p>{_esc(doctor.name or '—')} <code>{_esc(doctor.party)}</code></p>"
    )
    parts.append(
        f"<h2>Médecin traitant</h2>{current}"
        f'<form method="post" action="{ACCOUNT_PATH}/medecin-traitant">{_hidden(csrf)}'
        '<p><label>Adresse de messagerie du médecin<br><input name="doctor"'
        ' type="email" required></label> <button type="submit">Déclarer</button></p>'
        "</form>"
    )
    # Activity report.
    parts.append(
        "<h2>Relevé d'activité</h2><p>Qui vous a écrit, qui a ouvert vos messages"
        " ce mois-ci : le relevé arrive dans votre boîte de réception.</p>"
        + _button("releve", csrf, "Recevoir le relevé du mois")
    )
    # History.
    rows = "".join(
        f"<tr><td>{_esc(h.time.astimezone(zone).strftime('%d/%m/%Y %H:%M'))}</td>"
        f"<td>{'vous' if h.by_patient else 'administration'}</td>"
        f"<td>{_esc(_ACTIONS_FR[h.action])}</td>"
        f"<td>{_esc(' '.join(v for _, v in h.detail if v))}</td></tr>"
        for h in reversed(state.history)
    )
    parts.append(
        "<h2>Historique</h2>"
        + (
            "<table><tr><th>Date</th><th>Par</th><th>Changement</th><th>Détail</th>"
            f"</tr>{rows}</table>"
            if rows
            else "<p>Aucun changement.</p>"
        )
    )
    parts.append(_button("deconnexion", csrf, "Se déconnecter"))
    return "\n".join(parts)


class AccountFace:
    """``/compte``: the patient's pages and actions over :class:`SelfService`.

    HTML for browsers (every change a POST form carrying the session's CSRF
    token, answered 303 to ``/compte``); JSON for apps (``Accept:
    application/json`` or a JSON body; the CSRF token in the ``csrf`` field
    or the ``X-CSRF-Token`` header).
    """

    def __init__(self, service: SelfService) -> None:
        self._service = service

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(ACCOUNT_PATH, self.home)
        app.router.add_post(f"{ACCOUNT_PATH}/connexion", self.sign_in)
        app.router.add_get(f"{ACCOUNT_PATH}/recherche", self.search)
        actions: dict[str, _Action] = {
            "deconnexion": self._sign_out,
            "fermer": self._close,
            "rouvrir": self._reopen,
            "bloquer": self._block,
            "debloquer": self._unblock,
            "aidant": self._grant,
            "aidant/retirer": self._revoke,
            "contact": self._contact,
            "medecin-traitant": self._doctor,
            "releve": self._report,
        }
        for name, action in actions.items():
            app.router.add_post(f"{ACCOUNT_PATH}/{name}", self._guard(name, action))

    # -- signed out ---------------------------------------------------------------

    def _signed_out(
        self, request: web.Request, status: int, message: str = ""
    ) -> web.Response:
        """The sign-in form (HTML) with a fresh sign-in CSRF cookie, or JSON."""
        if _wants_json(request):
            return _json({"error": message or "connectez-vous"}, status)
        # Kept while the browser has it: a second tab's form stays valid.
        token = request.cookies.get(SIGN_IN_COOKIE) or new_token()
        response = _html("Mon compte", _sign_in_page(token, message), status)
        _set_cookie(response, SIGN_IN_COOKIE, token)
        return response

    async def home(self, request: web.Request) -> web.Response:
        try:
            session = self._service.session(request.cookies.get(SESSION_COOKIE))
        except NoSessionError as exc:
            if _wants_json(request):
                return _json({"error": str(exc)}, R401_UNAUTHORIZED)
            return self._signed_out(request, R200_OK)
        try:
            state = await self._service.state(session)
        except NoSessionError as exc:
            return self._signed_out(request, R401_UNAUTHORIZED, str(exc))
        except UnavailableError as exc:
            return self._unavailable(request, str(exc))
        zone = self._service.zone
        if _wants_json(request):
            return _json({**_state_json(state), "csrf": session.csrf})
        note = _DONE.get(request.query.get("fait", ""), "")
        return _html("Mon compte", _dashboard(state, session.csrf, zone, note=note))

    async def sign_in(self, request: web.Request) -> web.Response:
        try:
            parsed = await _read(request)
        except _MissingFieldError as exc:
            return self._signed_out(request, R400_BAD_REQUEST, str(exc))
        # A form posted from another site cannot know the sign-in cookie; a
        # JSON body cannot be posted cross-site without a CORS preflight,
        # which this site never grants.
        if request.content_type != "application/json" and not tokens_match(
            parsed.fields.get(CSRF_FIELD, ""), request.cookies.get(SIGN_IN_COOKIE, "")
        ):
            return self._signed_out(
                request,
                R403_FORBIDDEN,
                "jeton de formulaire absent ou invalide : rechargez la page",
            )
        login = parsed.fields.get("login", "")
        password = parsed.fields.get("password", "")
        if not login.strip() or not password:
            missing = "login" if not login.strip() else "password"
            return self._signed_out(
                request, R400_BAD_REQUEST, f"{_FIELD_LABELS[missing]} : obligatoire"
            )
        try:
            signed = await self._service.sign_in(
                login, password, peer=request.remote or "", cid=new_cid()
            )
        except SignInRefusedError as exc:
            return self._signed_out(request, R401_UNAUTHORIZED, str(exc))
        except SignInThrottledError as exc:
            locked = self._signed_out(request, R429_TOO_MANY_REQUESTS, str(exc))
            locked.headers["Retry-After"] = str(max(1, int(exc.retry_after)))
            return locked
        except UnavailableError as exc:
            return self._unavailable(request, str(exc))
        response: web.Response
        if parsed.as_json:
            response = _json({"status": "connecté", "csrf": signed.session.csrf})
        else:
            response = web.Response(
                status=R303_SEE_OTHER,
                headers={**_HEADERS, "Location": ACCOUNT_PATH},
            )
        _set_cookie(response, SESSION_COOKIE, signed.token)
        _clear_cookie(response, SIGN_IN_COOKIE)
        return response

    def _unavailable(self, request: web.Request, message: str) -> web.Response:
        if _wants_json(request):
            return _json({"error": message}, R503_SERVICE_UNAVAILABLE)
        return _html("Mon compte", f"<p>{_esc(message)}</p>", R503_SERVICE_UNAVAILABLE)

    # -- signed in ------------------------------------------------------------------

    async def search(self, request: web.Request) -> web.Response:
        try:
            session = self._service.session(request.cookies.get(SESSION_COOKIE))
        except NoSessionError as exc:
            return self._signed_out(request, R401_UNAUTHORIZED, str(exc))
        try:
            found = await self._service.search(session, request.query.get("q", ""))
        except FieldError as exc:
            return await self._refused(request, session, R400_BAD_REQUEST, exc)
        except UnavailableError as exc:
            return self._unavailable(request, str(exc))
        if _wants_json(request):
            return _json(
                {
                    "results": [
                        {"party": f.party, "kind": f.kind, "name": f.name}
                        for f in found
                    ]
                }
            )
        rows = "".join(
            f"<tr><td>{_esc(f.name)}</td><td><code>{_esc(f.party)}</code></td>"
            f"<td>{_button('bloquer', session.csrf, 'Bloquer', party=f.party)}</td></tr>"
            for f in found
        )
        body = (
            f"<table><tr><th>Nom</th><th>Identifiant</th><th></th></tr>{rows}</table>"
            if rows
            else "<p>Aucun résultat.</p>"
        )
        return _html(
            "Recherche dans l'annuaire",
            f'{body}\n<p><a href="{ACCOUNT_PATH}">Retour</a></p>',
        )

    async def _refused(
        self,
        request: web.Request,
        session: Session,
        status: int,
        exc: SelfServiceError,
        field: str = "",
    ) -> web.Response:
        """An action refused: JSON names the field; HTML shows the page again
        with the message on top."""
        message = str(exc)
        if isinstance(exc, FieldError):
            field = exc.field
        if _wants_json(request):
            return _json(
                {"error": message, **({"field": field} if field else {})}, status
            )
        try:
            state = await self._service.state(session)
        except SelfServiceError:
            return _html("Mon compte", f"<p>{_esc(message)}</p>", status)
        page = _dashboard(state, session.csrf, self._service.zone, error=message)
        return _html("Mon compte", page, status)

    def _guard(
        self, name: str, action: _Action
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """One place that checks the session and the CSRF token and turns
        refusals into answers: an action never reaches the service without
        both, and nothing it raises becomes a 500."""

        async def guarded(request: web.Request) -> web.Response:
            try:
                session = self._service.session(request.cookies.get(SESSION_COOKIE))
            except NoSessionError as exc:
                return self._signed_out(request, R401_UNAUTHORIZED, str(exc))
            try:
                parsed = await _read(request)
                given = parsed.fields.get(CSRF_FIELD) or request.headers.get(
                    CSRF_HEADER
                )
                self._service.check_csrf(session, given or "")
                changed, message = await action(
                    session, parsed, request.remote or "", new_cid()
                )
            except _MissingFieldError as exc:
                error = FieldError("body", f"requête : {exc}")
                return await self._refused(request, session, R400_BAD_REQUEST, error)
            except CsrfError as exc:
                return await self._refused(request, session, R403_FORBIDDEN, exc)
            except FieldError as exc:
                return await self._refused(request, session, R400_BAD_REQUEST, exc)
            except InvalidFieldError as exc:
                field, text = _field_message(exc)
                return await self._refused(
                    request, session, R400_BAD_REQUEST, FieldError(field, text)
                )
            except SignInThrottledError as exc:
                response = await self._refused(
                    request, session, R429_TOO_MANY_REQUESTS, exc
                )
                response.headers["Retry-After"] = str(max(1, int(exc.retry_after)))
                return response
            except NoSessionError as exc:
                return self._signed_out(request, R401_UNAUTHORIZED, str(exc))
            except UnavailableError as exc:
                return self._unavailable(request, str(exc))
            if name == "deconnexion":
                self._service.sign_out(request.cookies.get(SESSION_COOKIE))
                response = (
                    _json({"status": message})
                    if _wants_json(request)
                    else web.Response(
                        status=R303_SEE_OTHER,
                        headers={**_HEADERS, "Location": ACCOUNT_PATH},
                    )
                )
                _clear_cookie(response, SESSION_COOKIE)
                return response
            if _wants_json(request):
                return _json({"status": message, "changed": changed})
            done = name if changed else "inchange"
            return web.Response(
                status=R303_SEE_OTHER,
                headers={**_HEADERS, "Location": f"{ACCOUNT_PATH}?fait={done}"},
            )

        return guarded

    # -- the actions: (changed, message) -----------------------------------------------

    async def _sign_out(
        self, s: Session, r: _Request, peer: str, cid: str
    ) -> tuple[bool, str]:
        del s, peer, cid
        return True, "déconnecté"

    async def _close(
        self, s: Session, r: _Request, peer: str, cid: str
    ) -> tuple[bool, str]:
        done = await self._service.close_mailbox(s, peer=peer, cid=cid)
        return _said(done, "fermer")

    async def _reopen(
        self, s: Session, r: _Request, peer: str, cid: str
    ) -> tuple[bool, str]:
        done = await self._service.reopen_mailbox(s, peer=peer, cid=cid)
        return _said(done, "rouvrir")

    async def _block(
        self, s: Session, r: _Request, peer: str, cid: str
    ) -> tuple[bool, str]:
        party = _need(r, "party")
        return _said(await self._service.block(s, party, peer=peer, cid=cid), "bloquer")

    async def _unblock(
        self, s: Session, r: _Request, peer: str, cid: str
    ) -> tuple[bool, str]:
        party = _need(r, "party")
        done = await self._service.unblock(s, party, peer=peer, cid=cid)
        return _said(done, "debloquer")

    async def _grant(
        self, s: Session, r: _Request, peer: str, cid: str
    ) -> tuple[bool, str]:
        done = await self._service.grant_proxy(
            s,
            _need(r, "account"),
            _need(r, "scope"),
            r.fields.get("until", ""),
            peer=peer,
            cid=cid,
        )
        return _said(done, "aidant")

    async def _revoke(
        self, s: Session, r: _Request, peer: str, cid: str
    ) -> tuple[bool, str]:
        account = _need(r, "account")
        done = await self._service.revoke_proxy(s, account, peer=peer, cid=cid)
        return _said(done, "aidant/retirer")

    async def _contact(
        self, s: Session, r: _Request, peer: str, cid: str
    ) -> tuple[bool, str]:
        # A field left out keeps its value; a field sent empty clears it.
        done = await self._service.set_contact(
            s, r.fields.get("email"), r.fields.get("phone"), peer=peer, cid=cid
        )
        return _said(done, "contact")

    async def _doctor(
        self, s: Session, r: _Request, peer: str, cid: str
    ) -> tuple[bool, str]:
        doctor = _need(r, "doctor")
        done = await self._service.set_treating_doctor(s, doctor, peer=peer, cid=cid)
        return _said(done, "medecin-traitant")

    async def _report(
        self, s: Session, r: _Request, peer: str, cid: str
    ) -> tuple[bool, str]:
        del r, peer, cid
        await self._service.request_report(s)
        return True, _DONE["releve"]


def _need(r: _Request, name: str) -> str:
    value = r.fields.get(name, "")
    if not value.strip():
        raise FieldError(name, f"{_FIELD_LABELS[name]} : obligatoire")
    return value


def _said(done: Changed, name: str) -> tuple[bool, str]:
    if done.record is None:
        return False, _DONE["inchange"]
    return True, _DONE[name]


class WebError(Exception):
    """The listener cannot start; names the key."""


@contextlib.asynccontextmanager
async def serve_web(
    listener: Listener,
    tls: ssl.SSLContext,
    service: Enrolment,
    account: SelfService | None = None,
) -> AsyncIterator[tuple[str, int]]:
    """Serve the forms on ``listener`` with ``tls`` (and the patient's
    ``/compte`` pages when ``account`` is given); yields the bound address."""
    runner = web.AppRunner(WebFace(service, account).app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            listener.host,
            listener.port,
            ssl_context=tls,
            reuse_address=True,
        )
        try:
            await site.start()
        except OSError as exc:
            raise WebError(
                f"web.port: cannot listen on {listener.host}:{listener.port}:"
                f" {exc.strerror}"
            ) from exc
        host, port = runner.addresses[0][:2]
        yield str(host), int(port)
    finally:
        await runner.cleanup()
        await service.close()
