"""The IMAP session state machine (RFC 3501 §3), in one table.

Rules:

- The session is in one :class:`State`. It changes only through
  :data:`TRANSITIONS`, keyed by ``(state, transition)``; a missing key is a
  bug on our side (:class:`LocalProtocolError`), never a silent no-op.
- Which commands a state accepts is :data:`COMMANDS_BY_STATE` (RFC 3501
  §6.1-§6.4 and the extensions we implement). A command outside its state's
  set is answered ``BAD`` by the core and never reaches the server code.

Theory of operation: the peer's commands do not move the state; our replies
do. The :class:`~mssante.proto.imap.Connection` remembers which command is
pending and, when we send its tagged ``OK``, looks up the transition that
command implies (LOGIN ``OK`` authenticates, SELECT ``OK`` selects, a failed
SELECT deselects, RFC 3501 §6.3.1). An untagged ``BYE`` from us moves to
``LOGOUT`` from anywhere; a protocol error moves to ``ERROR`` from anywhere.
``LOGOUT`` and ``ERROR`` accept no command.
"""

from __future__ import annotations

import enum
from typing import Final

from mssante.proto.imap._errors import LocalProtocolError

__all__ = [
    "ANY_STATE_COMMANDS",
    "AUTHENTICATED_COMMANDS",
    "COMMANDS_BY_STATE",
    "NOT_AUTHENTICATED_COMMANDS",
    "SELECTED_COMMANDS",
    "TRANSITIONS",
    "UID_COMMANDS",
    "State",
    "Transition",
    "next_state",
    "transition_for",
]


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"
    ERROR = "error"


class Transition(enum.Enum):
    LOGGED_IN = "logged in"  # LOGIN / AUTHENTICATE OK
    SELECTED = "selected"  # SELECT / EXAMINE OK
    SELECT_FAILED = "select failed"  # SELECT / EXAMINE NO
    UNSELECTED = "unselected"  # CLOSE / UNSELECT OK
    BYE = "bye"  # we sent * BYE
    PROTOCOL_ERROR = "protocol error"


# RFC 3501 §6.1: valid in any state.
ANY_STATE_COMMANDS: Final = frozenset(
    {"CAPABILITY", "NOOP", "LOGOUT", "ID"}  # ID: RFC 2971 §3.1, any state
)
# RFC 3501 §6.2.
NOT_AUTHENTICATED_COMMANDS: Final = ANY_STATE_COMMANDS | {
    "STARTTLS",
    "AUTHENTICATE",
    "LOGIN",
}
# RFC 3501 §6.3, plus NAMESPACE (RFC 2342 §5), ENABLE (RFC 5161 §3.1),
# IDLE (RFC 2177 §3).
AUTHENTICATED_COMMANDS: Final = ANY_STATE_COMMANDS | {
    "SELECT",
    "EXAMINE",
    "CREATE",
    "DELETE",
    "RENAME",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "LIST",
    "LSUB",
    "STATUS",
    "APPEND",
    "NAMESPACE",
    "ENABLE",
    "IDLE",
}
# RFC 3501 §6.4, plus MOVE (RFC 6851 §3.1), UNSELECT (RFC 3691 §2),
# UID EXPUNGE (RFC 4315 §2.1).
SELECTED_COMMANDS: Final = AUTHENTICATED_COMMANDS | {
    "CHECK",
    "CLOSE",
    "UNSELECT",
    "EXPUNGE",
    "SEARCH",
    "FETCH",
    "STORE",
    "COPY",
    "MOVE",
}
# RFC 3501 §6.4.8 (and RFC 4315 §2.1, RFC 6851 §3.2): what may follow UID.
UID_COMMANDS: Final = frozenset({"FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE"})

COMMANDS_BY_STATE: Final[dict[State, frozenset[str]]] = {
    State.NOT_AUTHENTICATED: NOT_AUTHENTICATED_COMMANDS,
    State.AUTHENTICATED: AUTHENTICATED_COMMANDS,
    State.SELECTED: SELECTED_COMMANDS,
    State.LOGOUT: frozenset(),
    State.ERROR: frozenset(),
}

_S = State
_T = Transition
TRANSITIONS: Final[dict[tuple[State, Transition], State]] = {
    (_S.NOT_AUTHENTICATED, _T.LOGGED_IN): _S.AUTHENTICATED,
    (_S.AUTHENTICATED, _T.SELECTED): _S.SELECTED,
    (_S.AUTHENTICATED, _T.SELECT_FAILED): _S.AUTHENTICATED,
    (_S.SELECTED, _T.SELECTED): _S.SELECTED,  # RFC 3501 §6.3.1: reselect
    # RFC 3501 §6.3.1: a failed SELECT leaves no folder selected.
    (_S.SELECTED, _T.SELECT_FAILED): _S.AUTHENTICATED,
    (_S.SELECTED, _T.UNSELECTED): _S.AUTHENTICATED,
    (_S.NOT_AUTHENTICATED, _T.BYE): _S.LOGOUT,
    (_S.AUTHENTICATED, _T.BYE): _S.LOGOUT,
    (_S.SELECTED, _T.BYE): _S.LOGOUT,
    (_S.LOGOUT, _T.BYE): _S.LOGOUT,
    (_S.ERROR, _T.BYE): _S.ERROR,  # a goodbye before closing changes nothing
    (_S.NOT_AUTHENTICATED, _T.PROTOCOL_ERROR): _S.ERROR,
    (_S.AUTHENTICATED, _T.PROTOCOL_ERROR): _S.ERROR,
    (_S.SELECTED, _T.PROTOCOL_ERROR): _S.ERROR,
    (_S.LOGOUT, _T.PROTOCOL_ERROR): _S.ERROR,
    (_S.ERROR, _T.PROTOCOL_ERROR): _S.ERROR,
}

# Which transition a tagged OK / NO to a command implies.
_ON_OK: Final = {
    "LOGIN": _T.LOGGED_IN,
    "AUTHENTICATE": _T.LOGGED_IN,
    "SELECT": _T.SELECTED,
    "EXAMINE": _T.SELECTED,
    "CLOSE": _T.UNSELECTED,
    "UNSELECT": _T.UNSELECTED,
}
_ON_NO: Final = {"SELECT": _T.SELECT_FAILED, "EXAMINE": _T.SELECT_FAILED}


def transition_for(command: str, ok: bool) -> Transition | None:
    """The transition a tagged reply to ``command`` implies, if any."""
    return (_ON_OK if ok else _ON_NO).get(command)


def next_state(state: State, transition: Transition) -> State:
    """Raises :class:`LocalProtocolError` for a transition the table lacks."""
    try:
        return TRANSITIONS[(state, transition)]
    except KeyError:
        raise LocalProtocolError(
            f"no transition {transition.value!r} from state {state.value!r}"
        ) from None
