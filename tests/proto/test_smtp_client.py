"""The sans-IO SMTP client core: replies whole and byte by byte, commands, framing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssante.proto.smtp import (
    Capabilities,
    RemoteProtocolError,
    Reply,
    ReplyReader,
    auth_plain,
    data_payload,
    ehlo,
    mail_from,
    rcpt_to,
    xtext,
)

EHLO_REPLY = (
    b"250-relay.example\r\n250-SIZE 26214400\r\n250-8BITMIME\r\n250-PIPELINING\r\n"
    b"250-DSN\r\n250-AUTH PLAIN LOGIN\r\n250 ENHANCEDSTATUSCODES\r\n"
)


def read_all(data: bytes, *, chunk: int) -> list[Reply]:
    reader = ReplyReader()
    replies = []
    for i in range(0, len(data), chunk):
        reader.feed(data[i : i + chunk])
        while (reply := reader.next_reply()) is not None:
            replies.append(reply)
    return replies


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_replies_whole_and_byte_by_byte(chunk: int) -> None:
    data = b"220 relay ready\r\n" + EHLO_REPLY + b"550 5.1.1 Unknown user\r\n354\r\n"
    replies = read_all(data, chunk=chunk)
    assert [r.code for r in replies] == [220, 250, 550, 354]
    assert replies[2].enhanced == "5.1.1"
    assert replies[2].text == "Unknown user"
    assert str(replies[2]) == "550 5.1.1 Unknown user"
    assert replies[3].lines == ("",)
    caps = Capabilities.from_reply(replies[1])
    assert caps.size == 26214400
    assert caps.auth == {"PLAIN", "LOGIN"}
    assert caps.has("pipelining")
    assert caps.has("DSN")
    assert not caps.has("SMTPUTF8")


def test_reply_classes() -> None:
    assert Reply(250, ("ok",)).positive
    assert Reply(451, ("4.4.3 later",)).transient
    assert not Reply(550, ("no",)).positive
    assert Reply(250, ("ok",)).enhanced is None


@pytest.mark.parametrize(
    "data",
    [
        b"hello\r\n",
        b"25\r\n",
        b"250x\r\n",
        b"700 bad\r\n",
        b"250-a\r\n251 b\r\n",
    ],
)
def test_malformed_replies_raise(data: bytes) -> None:
    reader = ReplyReader()
    reader.feed(data)
    with pytest.raises(RemoteProtocolError):
        reader.next_reply()
    with pytest.raises(RemoteProtocolError):
        reader.feed(b"250 ok\r\n")


def test_limits() -> None:
    reader = ReplyReader(max_line=10)
    with pytest.raises(RemoteProtocolError):
        reader.feed(b"250 " + b"x" * 20)
    reader = ReplyReader(max_line=10)
    reader.feed(b"250 " + b"x" * 20 + b"\r\n")
    with pytest.raises(RemoteProtocolError):
        reader.next_reply()
    reader = ReplyReader(max_lines=2)
    reader.feed(b"250-a\r\n250-b\r\n250-c\r\n")
    with pytest.raises(RemoteProtocolError):
        reader.next_reply()


def test_capabilities_without_limit() -> None:
    caps = Capabilities.from_reply(Reply(250, ("host", "SIZE 0", "SIZE")))
    assert caps.size is None


def test_commands() -> None:
    assert ehlo("client.example") == b"EHLO client.example\r\n"
    assert mail_from("a@b.example") == b"MAIL FROM:<a@b.example>\r\n"
    assert mail_from("") == b"MAIL FROM:<>\r\n"
    assert (
        mail_from(
            "a@b.example",
            size=10,
            body_8bit=True,
            smtputf8=True,
            ret="HDRS",
            envid="x+y=z",
        )
        == b"MAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x+2By+3Dz\r\n"
    )
    assert rcpt_to(
        "c@d.example", notify=("SUCCESS", "FAILURE"), orcpt="c@d.example"
    ) == (b"RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d.example\r\n")
    assert (
        rcpt_to("c@d.example", notify=("NEVER",))
        == b"RCPT TO:<c@d.example> NOTIFY=NEVER\r\n"
    )
    assert auth_plain("zoe", "pw") == b"AUTH PLAIN AHpvZQBwdw==\r\n"


@pytest.mark.parametrize(
    "call",
    [
        lambda: ehlo("a b"),
        lambda: mail_from("a@b\r\nRCPT TO:<x@y>"),
        lambda: mail_from("a@b.example", ret="ALL"),
        lambda: rcpt_to("c@d>"),
        lambda: rcpt_to("c@d.example", notify=("NEVER", "SUCCESS")),
    ],
)
def test_commands_refuse_injection_and_bad_values(call: object) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=":"):
        call()


def test_data_payload_stuffs_dots_and_normalises_line_ends() -> None:
    assert data_payload(b"a\n.b\r\n..c\rd") == b"a\r\n..b\r\n...c\r\nd\r\n.\r\n"
    assert data_payload(b"x\r\n") == b"x\r\n.\r\n"


@given(
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x2FF, codec="utf-8"))
)
def test_xtext_round_trip(value: str) -> None:
    from relay.smtp.server import xtext_decode

    encoded = xtext(value)
    assert all(33 <= ord(c) <= 126 and c != "=" for c in encoded)
    assert xtext_decode(encoded) == value


@given(st.binary(max_size=300))
def test_data_payload_never_ends_early(body: bytes) -> None:
    payload = data_payload(body)
    assert payload.endswith(b"\r\n.\r\n")
    assert b"\r\n.\r\n" not in payload[:-3]
    assert b"\n" not in payload.replace(b"\r\n", b"")


def test_oauthbearer_initial_response() -> None:
    import base64

    from mssante.proto.smtp import auth_oauthbearer

    line = auth_oauthbearer("abc.def.ghi", "a=b,c@d.example")
    assert line.startswith(b"AUTH OAUTHBEARER ")
    blob = base64.b64decode(line.split()[2])
    assert blob == b"n,a=a=3Db=2Cc@d.example,\x01auth=Bearer abc.def.ghi\x01\x01"
    assert base64.b64decode(auth_oauthbearer("t").split()[2]).startswith(b"n,,\x01")
    with pytest.raises(ValueError, match="token"):
        auth_oauthbearer("bad token")
