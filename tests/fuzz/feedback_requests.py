"""Requests to the feedback app for the fuzzer (test_feedback_http.py): a valid vote with up to three of
its parts broken, each part labelled with what the app must make of it; a valid vote with changes (for
``@example``); the bytes of a drawn request mangled. Host and port are placeholders (``OWN``,
``OTHER``) that :meth:`Request.raw` fills in, so that an ``@example`` can name a request before the
app has a port."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

from hypothesis import strategies as st

TOKEN = "fuzz-token"
UNKNOWN_PAIR = 10**9  # no run makes this many pairs
PAIRS = [1, 2, 3]  # the pairs the app's store starts with
OWN, OTHER = "{own}", "{other}"  # this app's host:port and another port of the same host, filled in at send
Outcome = Literal["stored", "refused", "unsure"]

JUNK_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
ANY_TEXT = st.text(max_size=40)
HEADER_NAME = st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True)


@dataclass
class Request:
    method: str = "POST"
    target: str = "/vote"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    framing: str = "exact"  # exact | chunked | none | short | long | bad | too-big
    half_close: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    voter: str | None = None  # a valid voter cookie sent, or None

    def raw(self, port: int) -> bytes:
        body, headers = self.body, list(self.headers)
        if self.framing == "exact" or self.framing == "too-big":
            headers.append(("Content-Length", str(len(body))))
        elif self.framing == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
            body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:7], body[7:]) if c) + b"0\r\n\r\n"
        elif self.framing == "short":
            headers.append(("Content-Length", str(len(body) + 5)))
        elif self.framing == "long":
            headers.append(("Content-Length", str(max(0, len(body) - 3))))
        elif self.framing.startswith("bad:"):
            headers.append(("Content-Length", self.framing[4:]))
        lines = [f"{self.method} {self.target} HTTP/1.1", "Connection: close"]
        fill = {OWN: f"127.0.0.1:{port}", OTHER: f"127.0.0.1:{port + 1}"}
        lines += [f"{k}: {v.replace(OWN, fill[OWN]).replace(OTHER, fill[OTHER])}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def vote_label(obj: Any) -> str:
    """What a vote body holding ``obj`` (decoded JSON) is: valid, a pair never shown, invalid."""
    if not isinstance(obj, dict):
        return "invalid"
    pair, choice, edited = obj.get("pair"), obj.get("choice"), obj.get("edited")
    if type(pair) is not int or not 1 <= pair < 2**63 or choice not in ("a", "b", "tie"):
        return "invalid"
    if edited is not None and not isinstance(edited, str):
        return "invalid"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in edited or ""):
        return "invalid"  # a lone surrogate is no Unicode text: the JSON parser refuses it
    return "valid" if pair in PAIRS else "unknown-pair"


JSON_LEAF = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**62, max_value=2**70)
    | st.floats() | ANY_TEXT | st.sampled_from(["a", "b", "tie", "A", " a", ""])
)  # fmt: skip
JSON_ANY = st.recursive(
    JSON_LEAF,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(ANY_TEXT, kids, max_size=4),
    max_leaves=12,
)
# Bodies whose bytes are not what json.dumps writes, with what they must be taken for.
ODD_BODIES = [
    (b'{"pair": 1e400, "choice": "a"}', "invalid"),
    (b'{"pair": NaN, "choice": "a"}', "invalid"),
    (b'{"pair": 1.0, "choice": "a"}', "invalid"),
    (b'{"pair": 9223372036854775808, "choice": "a"}', "invalid"),
    (b'{"pair": 1' + b"0" * 5000 + b', "choice": "a"}', "invalid"),
    (b"[" * 50_000, "invalid"),
    (b'{"pair": 1, "choice": "a"', "invalid"),
    (b'{"pair": 1, "choice": "a", "choice": "b"}', "unsure"),  # duplicate keys: the last one wins
    (b'\xef\xbb\xbf{"pair": 1, "choice": "a"}', "unsure"),  # a byte-order mark
    (b'{"pair": 1, "choice": "a", "edited": "\\ud800"}', "invalid"),
    (b"\xff\xfe\x00", "invalid"),
    (b"", "invalid"),
]


@st.composite
def vote_bodies(draw: st.DrawFn, broken: bool) -> tuple[bytes, str]:
    obj: Any
    if not broken:
        obj = {
            "pair": draw(st.sampled_from(PAIRS)),
            "choice": draw(st.sampled_from(["a", "b", "tie"])),
        }
        if draw(st.booleans()):
            obj["edited"] = draw(st.none() | st.text(st.characters(exclude_categories=["Cs"]), max_size=60))
        if draw(st.booleans()):
            obj[draw(ANY_TEXT.filter(lambda k: k not in ("pair", "choice", "edited")))] = draw(JSON_ANY)
        ensure_ascii = draw(st.booleans())
        return json.dumps(obj, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass"), "valid"
    kind = draw(st.sampled_from(["unknown-pair", "odd-values", "any-json", "odd-bytes", "random-bytes"]))
    if kind == "unknown-pair":
        return json.dumps({"pair": UNKNOWN_PAIR, "choice": "a"}).encode(), "unknown-pair"
    if kind == "odd-values":
        obj = {k: draw(JSON_ANY) for k in draw(st.sets(st.sampled_from(["pair", "choice", "edited"])))}
    elif kind == "any-json":
        obj = draw(JSON_ANY)
    elif kind == "odd-bytes":
        return draw(st.sampled_from(ODD_BODIES))
    else:
        raw = draw(st.binary(max_size=200))
        try:
            json.loads(raw)
        except ValueError:
            return raw, "invalid"
        return raw, "unsure"
    label = vote_label(obj)
    return json.dumps(obj).encode("utf-8", "surrogatepass"), label if label != "valid" else "unsure"


PARTS = ("method", "path", "query", "auth", "origin", "content-type", "framing", "body", "extra")


@st.composite
def requests(draw: st.DrawFn) -> Request:
    """A valid vote with up to three parts broken."""
    broken = draw(st.sets(st.sampled_from(PARTS), max_size=3))
    req, own = Request(), OWN
    labels = req.labels

    if "method" in broken:
        req.method = draw(
            st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "post", "POST2"])
        )
        labels["method"] = "invalid"
    if "path" in broken:
        path, labels["path"] = draw(st.sampled_from([
            ("/", "invalid"), ("/pair", "invalid"), ("/stats", "invalid"), ("/stats.json", "invalid"),
            ("/healthz", "invalid"), ("/vote/", "invalid"), ("/VOTE", "invalid"), ("/nope", "invalid"),
            ("/%76ote", "unsure"), ("//vote", "unsure"), ("/vote%00", "unsure"), ("/vote;x", "unsure"),
            ("/%zz", "invalid"), ("/\u00e9", "invalid"), ("*", "invalid"), ("http://evil.example/vote", "unsure"),
        ]))  # fmt: skip
    else:
        path = "/vote"
    query = ""
    if "query" in broken:
        kind = draw(st.sampled_from(["token-right", "token-wrong", "other", "junk"]))
        if kind.startswith("token"):
            value = TOKEN if kind == "token-right" else draw(ANY_TEXT)
            query = urlencode([("token", value), *draw(st.lists(st.tuples(ANY_TEXT, ANY_TEXT), max_size=2))])
            labels["query"] = "invalid"
        elif kind == "other":
            query = urlencode(
                draw(st.lists(st.tuples(ANY_TEXT.filter(lambda k: "token" not in k), ANY_TEXT), max_size=3))
            )
        else:
            query = draw(
                st.text(
                    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"), max_size=30
                )
            )
            labels["query"] = "unsure" if "token" in query else "valid"
    req.target = path + (f"?{query}" if query else "")

    # Credentials: the Bearer header, else the token cookie; plus a voter cookie and junk cookies.
    auth, token_cookie, cookie_junk = "right", None, None
    if "auth" in broken:
        auth = draw(
            st.sampled_from(["wrong", "missing", "cookie-right", "cookie-wrong", "cookie-junk", "not-bearer"])
        )
    if auth in ("right", "wrong"):
        req.headers.append(("Authorization", f"Bearer {TOKEN if auth == 'right' else draw(JUNK_TEXT)}"))
    elif auth == "not-bearer":
        req.headers.append(
            ("Authorization", draw(st.sampled_from([f"bearer {TOKEN}", f"Basic {TOKEN}", TOKEN, "Bearer"])))
        )
    if auth.startswith("cookie"):
        token_cookie = (
            TOKEN if auth in ("cookie-right", "cookie-junk") else draw(JUNK_TEXT.filter(lambda t: t != TOKEN))
        )
        if auth == "cookie-junk":
            cookie_junk = draw(JUNK_TEXT)
    how = "cookie" if auth.startswith("cookie") or auth in ("missing", "not-bearer") else "bearer"
    labels["auth"] = {"right": "valid", "cookie-right": "valid", "cookie-junk": "unsure"}.get(auth, "invalid")
    cookies = []
    if draw(st.booleans()):
        voter = draw(st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True) | JUNK_TEXT)
        cookies.append(f"llmfab_voter={voter}")
        if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", voter):
            req.voter = voter
    if token_cookie is not None:
        cookies.append(f"llmfab_feedback_token={token_cookie}")
    if cookie_junk is not None:
        cookies.insert(draw(st.integers(0, len(cookies))), cookie_junk)
    if cookies:
        req.headers.append(("Cookie", "; ".join(cookies)))
    if req.voter is not None and (cookie_junk is not None or '"' in "".join(cookies)):
        req.voter = None  # which voter id a junk cookie leaves is the cookie parser's business

    # Same origin: Origin against Host, the scheme from X-Forwarded-Proto.
    host: str | None = own
    origin: str | None = f"http://{own}"
    proto: str | None = None
    if how == "cookie" and "origin" not in broken:
        labels["origin"] = "valid"
    elif how == "bearer" and "origin" not in broken:
        origin = draw(st.sampled_from([origin, None]))
        labels["origin"] = "valid"
    else:
        kind = draw(st.sampled_from(["missing", "other-port", "https-no-proxy", "https-proxy", "other-host",
                                     "null", "junk", "host-missing", "host-other"]))  # fmt: skip
        origin = {"missing": None, "other-port": f"http://{OTHER}", "https-no-proxy": f"https://{own}",
                  "https-proxy": f"https://{own}", "other-host": "http://localhost", "null": "null",
                  "junk": draw(JUNK_TEXT.filter(lambda o: o != f"http://{own}")),
                  "host-missing": f"http://{own}", "host-other": f"http://{own}"}[kind]  # fmt: skip
        proto = "https" if kind == "https-proxy" else draw(st.sampled_from([None, "http", "junk"]))
        host = {"host-missing": None, "host-other": "localhost"}.get(kind, own)
        ok = kind == "https-proxy" or (kind == "missing" and how == "bearer")
        labels["origin"] = "valid" if ok else "invalid"
    if host is not None:
        req.headers.append(("Host", host))
    if origin is not None:
        req.headers.append(("Origin", origin))
    if proto is not None:
        req.headers.append(("X-Forwarded-Proto", proto))

    if "content-type" in broken:
        ctype = draw(st.sampled_from([None, "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                      "multipart/form-data; boundary=x", "application/jsonx", "json"]) | JUNK_TEXT.filter(
                                          lambda c: "json" not in c.lower()))  # fmt: skip
        labels["content-type"] = "invalid"
    else:
        ctype = draw(
            st.sampled_from(["application/json", "application/json; charset=utf-8", "Application/JSON"])
        )
    if ctype is not None:
        req.headers.append(("Content-Type", ctype))

    req.body, labels["body"] = draw(vote_bodies("body" in broken))
    if "framing" in broken:
        req.framing = draw(st.sampled_from(["none", "short", "long", "too-big", "bad:-1", "bad:abc", "bad:1e3",
                                            "bad: ", "bad:0x10", "bad:99999999999999999999", "half-close"]))  # fmt: skip
        if req.framing == "too-big":
            req.body = req.body + b" " * (64 * 1024)
        if req.framing == "half-close":
            req.framing, req.half_close = "short", True
        labels["framing"] = "unsure" if req.framing == "long" else "invalid"
    else:
        req.framing = draw(st.sampled_from(["exact", "chunked"]))
    if "extra" in broken:
        for name in draw(st.lists(HEADER_NAME, max_size=3)):
            value = draw(JUNK_TEXT | ANY_TEXT.filter(lambda v: "\r" not in v and "\n" not in v))
            req.headers.append((name, value))
            if any(not (0x20 <= ord(c) <= 0x7E or c == "\t") for c in value):
                labels["extra"] = "unsure"  # the parser may refuse the whole request for it
    if req.body and labels["body"] == "valid" and max_depth(req.body) > 100:
        labels["body"] = "unsure"
    return req


def max_depth(raw: bytes) -> int:
    depth = best = 0
    for byte in raw:
        depth += byte in b"[{"
        depth -= byte in b"]}"
        best = max(best, depth)
    return best


def expected(req: Request) -> Outcome:
    if req.half_close:
        return "unsure"
    labels = req.labels.values()
    if "invalid" in labels or "unknown-pair" in labels:
        return "refused"
    return "unsure" if "unsure" in labels else "stored"


def vote(body: bytes = b'{"pair": 1, "choice": "a"}', cookie: bool = False, **changes: Any) -> Request:
    """A valid vote (Bearer, or the page's cookie and Origin) with ``changes``: the @examples below."""
    auth = [("Cookie", f"llmfab_feedback_token={TOKEN}"), ("Origin", f"http://{OWN}")] if cookie else [
        ("Authorization", f"Bearer {TOKEN}")]  # fmt: skip
    headers = [*auth, ("Host", OWN), ("Content-Type", "application/json")]
    req = Request(headers=headers, body=body, labels={"auth": "valid", "body": vote_label(json.loads(body))})
    for name, value in changes.items():
        setattr(req, name, value)
    return req


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """The bytes of a drawn request with a few bytes inserted, deleted, replaced, or cut off."""
    raw = bytearray(draw(requests()).raw(0).replace(b"127.0.0.1:0", OWN.encode()))
    for _ in range(draw(st.integers(1, 4))):
        op, at = draw(st.sampled_from(["insert", "delete", "replace", "cut"])), draw(st.integers(0, len(raw)))
        if op == "insert":
            raw[at:at] = draw(
                st.binary(min_size=1, max_size=8) | st.sampled_from([b"\r\n", b"\n", b"\x00", b" ", b":"])
            )
        elif op == "delete":
            del raw[at : at + draw(st.integers(1, 8))]
        elif op == "replace" and at < len(raw):
            raw[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at:]
    return bytes(raw)
