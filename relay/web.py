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
"""

from __future__ import annotations

import contextlib
import html
import json
from typing import TYPE_CHECKING, Final

from aiohttp import web

from relay.accounts import WeakPasswordError
from relay.enrolment import (
    CodeRefusedError,
    ThrottledError,
    new_cid,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Awaitable, Callable

    from relay.config import Listener
    from relay.enrolment import Enrolment

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

    def __init__(self, service: Enrolment) -> None:
        self._service = service

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/", self.index)
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


class WebError(Exception):
    """The listener cannot start; names the key."""


@contextlib.asynccontextmanager
async def serve_web(
    listener: Listener, tls: ssl.SSLContext, service: Enrolment
) -> AsyncIterator[tuple[str, int]]:
    """Serve the forms on ``listener`` with ``tls``; yields the bound address."""
    runner = web.AppRunner(WebFace(service).app(), access_log=None)
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
