#!/usr/bin/env python3
"""Conformance checks for a Parley server, written from docs/protocol.md alone.

Usage: python3 tests/conformance/conformance.py --host 127.0.0.1 --port PORT

Connects to an already running server, runs every check, prints one line per check
(`ok   <name>` or `FAIL <name>: <what differed> (§section)`) and exits 0 if all passed,
1 if any failed, 2 on a usage error.  Python 3.11 standard library only.

Section numbers (§) refer to docs/protocol.md (Parley wire protocol, version 1).
"""

import argparse
import contextlib
import json
import os
import random
import select
import socket
import string
import struct
import sys
import threading
import time
import traceback

# ---------------------------------------------------------------------------------------------
# Constants from the document
# ---------------------------------------------------------------------------------------------

KIND_CONTROL, KIND_DATA, KIND_PING, KIND_PONG = 1, 2, 3, 4  # §2.1
PING = b"\x00\x00\x00\x01\x03"  # §2.1
PONG = b"\x00\x00\x00\x01\x04"  # §2.1
C2S_MAX_L = 65536  # §2.2
S2C_MAX_L = 16 * 1024 * 1024  # §2.2
MAX_TEXT = 4096  # §5.1, §11
MAX_ROOMS = 32  # §5.5, §11
HANDSHAKE_TIMEOUT = 10.0  # §4.5
U64_MAX = 18446744073709551615  # §3.1
REQUEST_TYPES = ("hello", "say", "msg", "join", "part", "rooms", "users", "quit", "list",
                 "download", "download_progress", "cancel", "upload", "finish", "history",
                 "search", "register", "passwd")  # §3.2

# Documented field order of everything the server writes (§3.1: "fields in the order shown").
ORDER_OK = ["type", "id", "result"]
ORDER_ERROR = ["type", "id", "code", "message"]
ORDER_WELCOME = ["version", "server", "name", "room", "online", "online_count", "roster_limit",
                 "keepalive_ms", "timeout_ms", "max_text"]
ORDER_JOINED = ["room", "members", "count"]
ORDER_SENT = ["id", "ts", "to"]
ORDER_EVENT = {
    "message": ["type", "id", "ts", "room", "from", "text"],
    "private": ["type", "id", "ts", "from", "to", "text"],
    "join": ["type", "room", "users"],
    "part": ["type", "room", "users", "reason"],
    "members": ["type", "room", "count"],
    "bye": ["type", "code", "message"],
}
ORDER_RESULT = {
    "hello": ORDER_WELCOME,
    "say": ORDER_SENT,
    "msg": ORDER_SENT,
    "join": ORDER_JOINED,
    "part": ["room"],
    "rooms": ["rooms"],
    "quit": [],
}

# Characters with the Unicode White_Space property (§5.1 "empty_text").
UNICODE_WHITE_SPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B))
                       + "\u2028\u2029\u202f\u205f\u3000")

# Timeouts (seconds).  Every socket operation is bounded by these.
IO_TIMEOUT = 3.0
REPLY_TIMEOUT = 3.0
EVENT_TIMEOUT = 3.0
EOF_TIMEOUT = 3.5  # the server allows 2 s to flush, then lingers at most 1 s (§12.2)
SETTLE = 0.3  # how long to keep reading when checking that something does NOT arrive
WATCHDOG = 55.0  # the whole run is killed after this


class CheckFail(Exception):
    pass


class Skip(Exception):
    pass


class Collect:
    """Runs the cases of one check and reports every case that failed, not only the first."""

    def __init__(self):
        self.errors = []

    @contextlib.contextmanager
    def case(self):
        try:
            yield
        except CheckFail as e:
            self.errors.append(str(e))

    def done(self):
        if self.errors:
            more = f" (+{len(self.errors) - 4} more)" if len(self.errors) > 4 else ""
            raise CheckFail("; ".join(self.errors[:4]) + more)


def fail(section, msg):
    raise CheckFail(f"{msg} (§{section})")


def expect(cond, section, msg):
    if not cond:
        fail(section, msg)


def short(obj, n=220):
    try:
        s = json.dumps(obj, ensure_ascii=False)
    except (TypeError, ValueError):
        s = repr(obj)
    return s if len(s) <= n else s[:n] + "..."


def is_u64(x):
    return type(x) is int and 0 <= x <= U64_MAX


def is_str_list(x):
    return isinstance(x, list) and all(isinstance(v, str) for v in x)


def is_count(x):
    return type(x) is int and x >= 0


def name_key(n):
    # §4.6: sorted by the ASCII-lower-cased name in byte order
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in n).encode("utf-8")


def is_sorted_names(lst):
    return lst == sorted(lst, key=name_key)


# ---------------------------------------------------------------------------------------------
# Framing (§2)
# ---------------------------------------------------------------------------------------------

def encode_frame(kind, payload=b""):
    return struct.pack(">IB", 1 + len(payload), kind) + payload


def encode_json(obj, ascii_only=False):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=ascii_only).encode("utf-8")


def control(obj, ascii_only=False):
    return encode_frame(KIND_CONTROL, encode_json(obj, ascii_only))


def raw_control(payload_bytes):
    return encode_frame(KIND_CONTROL, payload_bytes)


def header(length, kind=None):
    b = struct.pack(">I", length)
    if kind is not None:
        b += bytes([kind])
    return b


class DuplicateKey(ValueError):
    pass


def _pairs(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise DuplicateKey(k)
        d[k] = v
    return d


class FrameDecoder:
    """Incremental decoder for server-to-client frames (§2.1, §2.2, §14 item 2)."""

    def __init__(self):
        self.buf = bytearray()
        self.error = None

    def feed(self, data):
        self.buf += data

    def frames(self):
        out = []
        while self.error is None and len(self.buf) >= 4:
            (length,) = struct.unpack(">I", self.buf[:4])
            if length == 0 or length > S2C_MAX_L:
                self.error = f"server frame with invalid length L={length}"
                break
            if len(self.buf) < 4 + length:
                break
            kind = self.buf[4]
            payload = bytes(self.buf[5:4 + length])
            del self.buf[:4 + length]
            out.append((kind, payload))
        return out


# ---------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------

class Conn:
    """One connection to the server, implemented from the document."""

    def __init__(self, ctx, label="", rcvbuf=None):
        self.ctx = ctx
        self.label = label
        self.dec = FrameDecoder()
        self.replies = []  # every reply, in arrival order
        self.used = set()  # indices of replies already returned by wait_reply
        self.events = []  # every event, in arrival order
        self.log = []  # (monotonic time, class, object) for every frame received
        self.raw = []  # (payload bytes, object, request type or None) for control frames
        self.pings = []  # arrival times of server pings
        self.pongs = []  # arrival times of server pongs
        self.problems = []  # client-side protocol problems seen (bad JSON, bad kinds, ...)
        self.sent_types = {}  # request id -> type
        self.first_control = None
        self.bye = None
        self.frames_after_bye = []
        self.eof = False
        self.reset = False
        self.auto_pong = True
        self.send_error = None
        self.name = None
        self.welcome = None
        self.closed = False
        self.next_id = 1
        self.hello_id = None
        self.connect_time = None
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.settimeout(IO_TIMEOUT)
            s.connect((ctx.host, ctx.port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            raise CheckFail(f"cannot connect to {ctx.host}:{ctx.port}: {e}")
        self.connect_time = time.monotonic()
        self.last_sent = self.connect_time
        self.sock = s

    # --- sending -----------------------------------------------------------------------------

    def send_raw(self, data):
        if self.closed:
            return False
        try:
            self.sock.sendall(data)
            self.last_sent = time.monotonic()
            return True
        except OSError as e:
            self.send_error = e
            return False

    def new_id(self):
        while self.next_id in self.sent_types:  # never reuse an id chosen by hand
            self.next_id += 1
        i = self.next_id
        self.next_id += 1
        return i

    def frame_for(self, rtype, fields=None, rid=None, ascii_only=False):
        if rid is None:
            rid = self.new_id()
        obj = {"id": rid, "type": rtype}
        obj.update(fields or {})
        self.sent_types[rid] = rtype
        return rid, control(obj, ascii_only)

    def send_req(self, rtype, fields=None, rid=None, ascii_only=False):
        rid, frame = self.frame_for(rtype, fields, rid, ascii_only)
        self.send_raw(frame)
        return rid

    # --- receiving ---------------------------------------------------------------------------

    def _fill(self, deadline):
        """Read once. False on timeout; True if data arrived or the stream ended."""
        if self.eof or self.closed:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            r, _, _ = select.select([self.sock], [], [], remaining)
        except (OSError, ValueError):
            self.eof = True
            return True
        if not r:
            return False
        try:
            data = self.sock.recv(1 << 18)
        except socket.timeout:
            return False
        except OSError:
            self.eof = True
            self.reset = True
            return True
        if not data:
            self.eof = True
            return True
        self.dec.feed(data)
        for kind, payload in self.dec.frames():
            self._dispatch(kind, payload)
        if self.dec.error:
            self.problems.append(self.dec.error)
            self.eof = True  # §14: a client closes on an invalid frame
        return True

    def _dispatch(self, kind, payload):
        now = time.monotonic()
        if self.bye is not None:
            self.frames_after_bye.append((kind, payload[:100]))
        if kind == KIND_CONTROL:
            try:
                obj = json.loads(payload.decode("utf-8"), object_pairs_hook=_pairs)
            except (UnicodeDecodeError, ValueError) as e:
                self.problems.append(f"control frame that is not a JSON object ({e}): {payload[:80]!r}")
                return
            if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
                self.problems.append(f"control message without a string type: {short(obj)}")
                return
            if self.first_control is None:
                self.first_control = obj
            t = obj["type"]
            if t in ("ok", "error"):  # §3.2: classify by type alone
                self.replies.append(obj)
                self.log.append((now, "reply", obj))
                self.raw.append((payload, obj, self.sent_types.get(obj.get("id"))))
            else:
                self.events.append(obj)
                self.log.append((now, "event", obj))
                self.raw.append((payload, obj, None))
                if t == "bye" and self.bye is None:
                    self.bye = obj
        elif kind == KIND_PING:
            self.pings.append(now)
            self.log.append((now, "ping", None))
            if payload:
                self.problems.append("ping with a payload")
            if self.auto_pong:
                self.send_raw(PONG)
        elif kind == KIND_PONG:
            self.pongs.append(now)
            self.log.append((now, "pong", None))
        else:
            self.problems.append(f"frame of kind {kind} from the server")
            self.log.append((now, "bad", kind))
            self.eof = True

    def pump_until(self, pred, timeout):
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            if self.eof or self.closed:
                return pred()
            if not self._fill(deadline):
                return pred()

    def pump(self, seconds):
        self.pump_until(lambda: False, seconds)

    def bye_info(self):
        if self.bye is not None:
            return f"; got bye {short(self.bye)}"
        if self.eof:
            return "; connection closed" + (" (reset)" if self.reset else "")
        return ""

    def wait_reply(self, rid, timeout=REPLY_TIMEOUT, section="5.1"):
        def find():
            for i, r in enumerate(self.replies):
                if i not in self.used and r.get("id") == rid:
                    self.used.add(i)
                    return r
            return None
        r = self.pump_until(find, timeout)
        if r is None:
            what = self.sent_types.get(rid, "?")
            fail(section, f"[{self.label}] no reply to request id {rid} ({what}) within {timeout}s"
                 + self.bye_info())
        return r

    def wait_event(self, pred, timeout=EVENT_TIMEOUT, start=0):
        def find():
            for ev in self.events[start:]:
                if pred(ev):
                    return ev
            return None
        return self.pump_until(find, timeout)

    def wait_eof(self, timeout=EOF_TIMEOUT):
        return self.pump_until(lambda: self.eof, timeout)

    def call(self, rtype, fields=None, section="5.1", rid=None):
        rid = self.send_req(rtype, fields, rid)
        return self.wait_reply(rid, section=section)

    def ok(self, rtype, fields=None, section="5"):
        r = self.call(rtype, fields, section)
        if r.get("type") != "ok":
            fail(section, f"[{self.label}] {rtype} {short(fields)} was refused: {short(r)}")
        check_ok_shape(r, section)
        return r["result"]

    def err(self, rtype, fields, code, section, what=None):
        r = self.call(rtype, fields, section)
        check_error(r, code, section, what or f"{rtype} {short(fields, 90)}")
        return r

    def still_open(self, section, what):
        """A request still gets a reply: the connection stayed open."""
        rid = self.send_req("rooms")
        try:
            self.wait_reply(rid, section=section)
        except CheckFail:
            fail(section, f"connection did not stay open after {what}" + self.bye_info())

    def all_users(self, room=None, section="5.8"):
        """Every name online (or in `room`): `users`, then again `after` the last name while
        `more` is true (§5.8, §14 item 21)."""
        names, after = [], None
        while True:
            fields = {"room": room} if room is not None else {}
            if after is not None:
                fields["after"] = after
            res = self.ok("users", fields, section)
            check_users(res, self.welcome["roster_limit"], room, after, section)
            names += res["users"]
            if not res.get("more"):
                return names
            expect(res["users"], section, "users page with more but no names")
            after = res["users"][-1]

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass


def check_ok_shape(r, section):
    expect(set(r) == set(ORDER_OK), "6", f"ok reply has fields {list(r)}, expected {ORDER_OK}")
    expect(is_u64(r["id"]), "6", f"ok reply id is not a u64: {short(r)}")
    expect(isinstance(r["result"], dict), section, f"ok reply result is not an object: {short(r)}")


def check_error(r, code, section, what):
    expect(r.get("type") == "error", section, f"{what}: expected error {code}, got {short(r)}")
    expect(r.get("code") == code, section, f"{what}: expected error code {code}, got {r.get('code')!r}")
    expect(set(r) == set(ORDER_ERROR), "6", f"error reply has fields {list(r)}, expected {ORDER_ERROR}")
    expect(is_u64(r["id"]), "6", f"error reply id is not a u64: {short(r)}")
    expect(isinstance(r["message"], str) and r["message"] != "", "6",
           f"error reply message is not a non-empty string: {short(r)}")


def check_sent(res, to, section):
    expect(set(res) == set(ORDER_SENT), section, f"Sent result has fields {list(res)}, expected {ORDER_SENT}")
    expect(is_u64(res["id"]) and res["id"] >= 1, section, f"Sent id is not a u64 >= 1: {short(res)}")
    expect(is_u64(res["ts"]), section, f"Sent ts is not a u64: {short(res)}")
    now_ms = time.time() * 1000
    expect(abs(res["ts"] - now_ms) < 600000, section,
           f"Sent ts {res['ts']} is not ms since the Unix epoch (local clock {int(now_ms)})")
    expect(res["to"] == to, section, f"Sent to is {res['to']!r}, expected {to!r}")


def check_event_shape(ev, section):
    t = ev["type"]
    order = ORDER_EVENT.get(t)
    if order is None:
        return
    expect(set(ev) == set(order), section, f"{t} event has fields {list(ev)}, expected {order}")
    if t in ("message", "private"):
        expect(is_u64(ev["id"]) and is_u64(ev["ts"]), section, f"{t} event id/ts not u64: {short(ev)}")
        for k in ("from", "text") + (("room",) if t == "message" else ("to",)):
            expect(isinstance(ev[k], str), section, f"{t} event {k} not a string: {short(ev)}")
    elif t in ("join", "part"):
        expect(isinstance(ev["room"], str) and is_str_list(ev["users"]), section,
               f"{t} event room/users of the wrong type: {short(ev)}")
        if t == "part":
            expect(isinstance(ev["reason"], str), section, f"part reason not a string: {short(ev)}")
    elif t == "members":
        # §7.10: sent to the room's members, so the room holds at least the recipient
        expect(isinstance(ev["room"], str) and type(ev["count"]) is int and ev["count"] >= 1, "7.10",
               f"members event room/count of the wrong type: {short(ev)}")
    elif t == "bye":
        expect(isinstance(ev["code"], str) and isinstance(ev["message"], str), section,
               f"bye code/message not strings: {short(ev)}")


def check_welcome(r, name, rid, section="4.3"):
    expect(r.get("type") == "ok", section, f"hello as {name!r} refused: {short(r)}")
    check_ok_shape(r, section)
    expect(r["id"] == rid, "6", f"Welcome reply id {r['id']} != request id {rid}")
    w = r["result"]
    expect(set(w) == set(ORDER_WELCOME), section, f"Welcome has fields {list(w)}, expected {ORDER_WELCOME}")
    expect(type(w["version"]) is int and w["version"] == 1, section, f"Welcome version {w['version']!r} != 1")
    expect(isinstance(w["server"], str) and w["server"], section, f"Welcome server not a string: {w['server']!r}")
    expect(w["name"] == name, section, f"Welcome name {w['name']!r}, expected exactly {name!r}")
    expect(w["room"] == "lobby", section, f"Welcome room {w['room']!r}, expected 'lobby'")
    expect(is_str_list(w["online"]), section, f"Welcome online is not an array of strings: {short(w['online'])}")
    online, count, limit = w["online"], w["online_count"], w["roster_limit"]
    expect(type(limit) is int and limit >= 1, section, f"Welcome roster_limit is not an integer >= 1: {limit!r}")
    expect(type(count) is int and count >= max(1, len(online)), section,
           f"Welcome online_count {count!r} is not an integer >= 1 and >= the {len(online)} names of online")
    # §4.3, §4.6: the first roster_limit names of everyone online, so all of them when they fit
    expect(len(online) == min(count, limit), section,
           f"Welcome online holds {len(online)} names, online_count {count}, roster_limit {limit}")
    if count <= limit:
        expect(name in online, section, f"Welcome online does not include the new user {name!r}")
    expect(is_sorted_names(online), "4.6", f"Welcome online is not sorted: {short(online)}")
    for k in ("keepalive_ms", "timeout_ms", "max_text"):
        expect(type(w[k]) is int and w[k] > 0, section, f"Welcome {k} is not a positive integer: {w[k]!r}")
    expect(w["max_text"] == MAX_TEXT, section, f"Welcome max_text {w['max_text']} != 4096")
    return w


def check_joined(res, limit, section="5.5"):
    """A join result (§5.5): the first roster_limit members in sort order, and how many there are."""
    expect(set(res) == set(ORDER_JOINED), section, f"join result has fields {list(res)}, expected {ORDER_JOINED}")
    members, count = res["members"], res["count"]
    expect(isinstance(res["room"], str) and is_str_list(members), section, f"join result types {short(res)}")
    expect(type(count) is int and count >= max(1, len(members)), section,
           f"join result count {count!r} is not an integer >= 1 and >= the {len(members)} members listed")
    expect(len(members) == min(count, limit), section,
           f"join result lists {len(members)} members, count {count}, roster_limit {limit}")
    expect(is_sorted_names(members), "4.6", f"join members not sorted: {short(members)}")


def check_users(res, limit, room=None, after=None, section="5.8"):
    """A users result (§5.8): a page of at most roster_limit sorted names after `after`, the total,
    and `more` only when names follow."""
    want = ({"room"} if room is not None else set()) | {"users", "count"}
    expect(want <= set(res) <= want | {"more"}, section, f"users result has fields {list(res)}, expected "
           f"{sorted(want)} and perhaps more")
    users, count, more = res["users"], res["count"], res.get("more")
    expect(is_str_list(users), section, f"users is not an array of strings: {short(users)}")
    expect(is_count(count) and count >= len(users), section, f"users count {count!r} < the {len(users)} names listed")
    expect("more" not in res or more is True, section, f"users more is {more!r}: present only as true")
    expect(len(users) <= limit, section, f"users lists {len(users)} names, roster_limit {limit}")
    if more:
        expect(len(users) == limit, section, f"users page of {len(users)} names with more, roster_limit {limit}")
    elif after is None:
        expect(len(users) == count, section, f"users lists {len(users)} names without more, count {count}")
    expect(is_sorted_names(users), "4.6", f"users not sorted: {short(users)}")
    if after is not None:
        late = [u for u in users if not name_key(u) > name_key(after)]
        expect(not late, section, f"users after {after!r} lists {short(late)}")


# ---------------------------------------------------------------------------------------------
# Test context
# ---------------------------------------------------------------------------------------------

class Ctx:
    def __init__(self, host, port):
        self.host = host
        self.port = port
        self.suffix = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        self.counter = 0
        self.lock = threading.Lock()
        self.all_conns = []  # (conn, background?)

    def uniq(self):
        with self.lock:
            self.counter += 1
            n = self.counter
        digits = string.digits + string.ascii_lowercase
        s = ""
        while True:
            s = digits[n % 36] + s
            n //= 36
            if n == 0:
                break
        return self.suffix + s


class Scope:
    """The connections of one check; all closed when the check ends."""

    def __init__(self, ctx, background=False):
        self.ctx = ctx
        self.conns = []
        self.background = background

    def conn(self, label="", rcvbuf=None):
        c = Conn(self.ctx, label, rcvbuf)
        self.conns.append(c)
        with self.ctx.lock:
            self.ctx.all_conns.append((c, self.background))
        return c

    def name(self, prefix="u"):
        n = prefix + self.ctx.uniq()
        assert len(n) <= 32, n
        return n

    def room(self, prefix="r"):
        return (prefix + self.ctx.uniq()).lower()

    def hello(self, name, versions=(1,), client=None, label=None, extra=None):
        c = self.conn(label or name)
        fields = {"versions": list(versions), "name": name}
        if client is not None:
            fields["client"] = client
        fields.update(extra or {})
        rid = c.send_req("hello", fields)
        c.hello_id = rid
        return c, c.wait_reply(rid, section="4.2")

    def login(self, prefix="u", name=None, client=None, versions=(1,)):
        name = name or self.name(prefix)
        c, r = self.hello(name, versions, client)
        w = check_welcome(r, name, c.hello_id)
        c.name = name
        c.welcome = w
        return c

    def close(self):
        for c in self.conns:
            c.close()


def expect_closed_after_error(c, section, what):
    """§4.4: after a failed handshake request: the error reply, then end of stream, no bye."""
    if not c.wait_eof():
        fail(section, f"connection not closed within {EOF_TIMEOUT}s after the error reply to {what}")
    expect(c.bye is None, section, f"a bye followed the error reply to {what}: {short(c.bye)}")


def expect_bye(c, code, section, what, reply_mark=None):
    """A bye event with `code`, then end of stream, nothing after the bye (§7.5, §12.2).
    With reply_mark, stop waiting early once a reply beyond that count has arrived instead."""
    if reply_mark is None:
        c.pump_until(lambda: c.bye is not None or c.eof, EOF_TIMEOUT)
    else:
        c.pump_until(lambda: c.bye is not None or c.eof or len(c.replies) > reply_mark, EOF_TIMEOUT)
        if c.bye is None and not c.eof:
            c.pump_until(lambda: c.bye is not None or c.eof, SETTLE)
    if c.bye is None:
        got_reply = reply_mark is not None and len(c.replies) > reply_mark
        fail(section, f"{what}: expected bye {code}, " +
             ("the connection closed without a bye" if c.eof else
              "got a reply instead and the connection stayed open" if got_reply else
              f"got nothing within {EOF_TIMEOUT}s")
             + (f" (last reply: {short(c.replies[-1], 160)})" if c.replies else ""))
    check_event_shape(c.bye, "7.5")
    expect(c.bye["code"] == code, section, f"{what}: expected bye code {code}, got {short(c.bye)}")
    if not c.wait_eof():
        fail("12.2", f"{what}: connection not closed within {EOF_TIMEOUT}s after the bye")
    expect(not c.frames_after_bye, "7.5", f"{what}: frames followed the bye: {c.frames_after_bye[:3]}")


def settle(*conns, seconds=SETTLE):
    end = time.monotonic() + seconds
    for c in conns:
        c.pump(max(0.0, end - time.monotonic()))


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

CHECKS = []


def check(name, background=False):
    def deco(f):
        CHECKS.append((name, f, background))
        return f
    return deco


DOC_EXAMPLE_HEX = """
00 00 00 36 01 7b 22 69 64 22 3a 31 2c 22 74 79
70 65 22 3a 22 68 65 6c 6c 6f 22 2c 22 76 65 72
73 69 6f 6e 73 22 3a 5b 31 5d 2c 22 6e 61 6d 65
22 3a 22 61 6c 69 63 65 22 7d
"""


@check("framing.worked_example_bytes")
def c_worked_example(t):
    obj = {"id": 1, "type": "hello", "versions": [1], "name": "alice"}
    js = encode_json(obj)
    expect(js == b'{"id":1,"type":"hello","versions":[1],"name":"alice"}', "2.4", f"JSON encoding {js!r}")
    expect(len(js) == 53, "2.4", f"JSON is {len(js)} bytes, document says 53")
    doc = bytes.fromhex(" ".join(DOC_EXAMPLE_HEX.split()))
    expect(len(doc) == 58, "2.4", f"document dump is {len(doc)} bytes, document says 58")
    frame = control(obj)
    expect(frame == doc, "2.4", f"encoded frame {frame.hex()} differs from the document's {doc.hex()}")
    expect(frame[:4] == b"\x00\x00\x00\x36" and frame[4] == 1, "2.4", "length/kind bytes")
    expect(encode_frame(KIND_PING) == bytes.fromhex("0000000103"), "2.1", "ping encoding")
    expect(encode_frame(KIND_PONG) == bytes.fromhex("0000000104"), "2.1", "pong encoding")
    # decoding: byte by byte, and merged with a ping (TCP may split or merge frames, §2.1)
    d = FrameDecoder()
    got = []
    for b in doc + PING:
        d.feed(bytes([b]))
        got += d.frames()
    expect(got == [(1, js), (3, b"")], "2.1", f"decoder produced {got}")


@check("framing.worked_example_on_wire")
def c_worked_example_wire(t):
    # Send the document's frame verbatim. "alice" may be online on a shared server: then the
    # documented answer is name_taken, which also proves the frame was understood.
    c = t.conn("alice")
    c.send_raw(bytes.fromhex(" ".join(DOC_EXAMPLE_HEX.split())))
    c.sent_types[1] = "hello"
    r = c.wait_reply(1, section="2.4")
    if r.get("type") == "ok":
        check_welcome(r, "alice", 1)
        rid = c.send_req("quit")
        c.wait_reply(rid, section="5.9")
    else:
        check_error(r, "name_taken", "4.2", "the worked example hello")


@check("framing.split_and_merged_frames")
def c_split(t):
    c = t.conn()
    name = t.name("sp")
    rid, f = c.frame_for("hello", {"versions": [1], "name": name})
    for i in range(0, len(f), 3):  # TCP may split frames arbitrarily (§2.1)
        c.send_raw(f[i:i + 3])
        time.sleep(0.004)
    check_welcome(c.wait_reply(rid, section="2.1"), name, rid)
    r2, f2 = c.frame_for("rooms")
    r3, f3 = c.frame_for("users")
    data = f2 + PING + f3
    for cut in (2, len(f2) + 2, len(f2) + 5 + 3):
        c.send_raw(data[:cut])
        time.sleep(0.05)
        c.send_raw(data[cut:cut + 1])
        time.sleep(0.05)
        c.send_raw(data[cut + 1:])
        data = b""
    for r in (r2, r3):
        c.wait_reply(r, section="2.1")
    expect(c.pump_until(lambda: c.pongs, 2.0), "8", "no pong to a ping merged between two control frames")


@check("hello.welcome")
def c_welcome(t):
    name = t.name("WeL")
    c, r = t.hello(name, client="conformance/1.0")
    w = check_welcome(r, name, c.hello_id)
    expect(c.first_control is r, "4.3", f"first control message was not the Welcome: {short(c.first_control)}")
    # §8: values announced; the binary's table: keepalive N s, timeout 3N + 1 s, N in 1..3600
    ka, to = w["keepalive_ms"], w["timeout_ms"]
    expect(ka % 1000 == 0 and 1000 <= ka <= 3600000 and to == 3 * ka + 1000, "8",
           f"keepalive_ms {ka} / timeout_ms {to} do not match the binary's N s / (3N + 1) s")
    settle(c)
    own = [e for e in c.events if e["type"] == "join" and name in e.get("users", [])]
    expect(not own, "4.3", f"the new user received a join event about itself: {short(own)}")


@check("hello.lobby_join_event")
def c_lobby_join(t):
    a = t.login("la")
    mark = len(a.events)
    bname = t.name("LB")
    b = t.login(name=bname)
    ev = a.wait_event(lambda e: e["type"] == "join" and bname in e.get("users", []), start=mark)
    expect(ev is not None, "4.3", f"existing lobby member did not receive a join event for {bname}")
    check_event_shape(ev, "7.3")
    # Other checks sign in to the lobby meanwhile: one batched event may name them too (§7.10).
    expect(ev["room"] == "lobby" and ev["users"].count(bname) == 1 and set(ev) == {"type", "room", "users"},
           "4.3", f"join event {short(ev)}")
    on = b.welcome["online"]
    if b.welcome["online_count"] <= b.welcome["roster_limit"]:  # §4.3: else only the first names
        expect(a.name in on and bname in on, "4.3", f"Welcome online {short(on)} misses {a.name} or {bname}")
    settle(b)
    own = [e for e in b.events if e["type"] == "join"]
    own = [e for e in own if bname in e["users"]]
    expect(not own, "4.3", f"new user received a join event about itself: {short(own)}")


@check("hello.version_negotiation")
def c_versions(t):
    for vs in ([1], [3, 2, 1], [1, 65535, 0], [65535, 1], [1, 1], [0, 1]):
        c = t.login("v", versions=vs)
        expect(c.welcome["version"] == 1, "4.2", f"versions {vs}: chose {c.welcome['version']}")
        c.close()


@check("hello.unsupported_version")
def c_unsupported(t):
    col = Collect()
    for vs in ([2], [], [0], [2, 3, 65535]):
        with col.case():
            c, r = t.hello(t.name("uv"), versions=vs)
            check_error(r, "unsupported_version", "4.2", f"hello with versions {vs}")
            expect_closed_after_error(c, "4.4", f"hello with versions {vs}")
    col.done()


@check("hello.versions_malformed")
def c_versions_bad(t):
    cases = [("[65536]", [65536]), ("[1, 65536]", [1, 65536]), ("[-1]", [-1]), ('["1"]', ["1"]),
             ("[1.5]", [1.5]), ("1 (not an array)", 1), ("null", None), ("missing", "MISSING")]
    col = Collect()
    for label, vs in cases:
        with col.case():
            c = t.conn("vb")
            fields = {"name": t.name("vb")}
            if vs != "MISSING":
                fields["versions"] = vs
            r = c.call("hello", fields, section="3.4")
            check_error(r, "bad_request", "3.4", f"hello with versions {label}")
            expect_closed_after_error(c, "4.4", f"hello with versions {label}")
    col.done()


@check("hello.name_length_32_33")
def c_name_len(t):
    base = t.name("N")
    n32 = (base + "x" * 32)[:32]
    n33 = (base + "y" * 33)[:33]
    c = t.login(name=n32)
    expect(c.welcome["name"] == n32, "4.6", "32-character name")
    c2, r = t.hello(n33)
    check_error(r, "invalid_name", "4.6", "hello with a 33-character name")
    expect_closed_after_error(c2, "4.4", "hello with a 33-character name")


@check("hello.name_charset")
def c_name_charset(t):
    s = t.ctx.uniq()
    for good in ("A.b-C_9" + s, "." + s, "-" + s, "_" + s, "9" + s):
        c = t.login(name=good)
        c.close()
    bad = ["", "a b" + s, "a#b" + s, "#a" + s, "\u00e9" + s, "a/b" + s, "a@b" + s, "a:b" + s,
           "a\nb" + s, "a\u0000" + s, "\uff41" + s, "a+b" + s, " a" + s]
    col = Collect()
    for b in bad:
        with col.case():
            c, r = t.hello(b)
            check_error(r, "invalid_name", "4.6", f"hello with name {b!r}")
            expect_closed_after_error(c, "4.4", f"hello with name {b!r}")
    for label, v in (("a number", 5), ("null", None), ("missing", "MISSING")):
        with col.case():
            c = t.conn()
            fields = {"versions": [1]}
            if v != "MISSING":
                fields["name"] = v
            r = c.call("hello", fields, section="3.4")
            check_error(r, "bad_request", "3.4", f"hello with name {label}")
            expect_closed_after_error(c, "4.4", f"hello with name {label}")
    col.done()


@check("hello.name_taken_case_insensitive")
def c_name_taken(t):
    a = t.login(name=t.name("CaSe"))
    obs = t.login("ob")
    for variant in (a.name, a.name.upper(), a.name.lower(), a.name.swapcase()):
        c, r = t.hello(variant)
        check_error(r, "name_taken", "4.2", f"hello as {variant!r} while {a.name!r} is online")
        expect_closed_after_error(c, "4.4", f"hello as {variant!r}")
    # once a has left, the name is free again, and the new spelling is kept
    mark = len(obs.events)
    rid = a.send_req("quit")
    a.wait_reply(rid, section="5.9")
    a.wait_eof()
    ev = obs.wait_event(lambda e: e["type"] == "part" and a.name in e["users"], start=mark)
    expect(ev is not None, "5.9", "no part event after quit")
    c = t.login(name=a.name.upper())
    expect(c.welcome["name"] == a.name.upper(), "4.3", "name spelled as given")


@check("hello.check_order")
def c_hello_order(t):
    long_client = "a" * 129
    c, r = t.hello(t.name("o"), versions=[2], client=long_client)
    check_error(r, "bad_request", "4.2", "hello with a 129-byte client and versions [2] (client is checked first)")
    expect_closed_after_error(c, "4.4", "hello with a 129-byte client")
    c, r = t.hello("bad name", versions=[2])
    check_error(r, "unsupported_version", "4.2", "hello with versions [2] and an invalid name (versions checked first)")
    expect_closed_after_error(c, "4.4", "hello with versions [2]")
    # client description limit, 128 bytes of UTF-8
    for cl in ("a" * 128, "\u00e9" * 64, None):
        c = t.login("cl", client=cl)
        c.close()
    c = t.conn()
    r = c.call("hello", {"versions": [1], "name": t.name("cn"), "client": None}, section="4.2")
    expect(r.get("type") == "ok", "4.2", f"hello with client null refused: {short(r)}")
    c.close()
    c, r = t.hello(t.name("cl"), client=5)
    check_error(r, "bad_request", "3.4", "hello with client 5 (not a string)")
    expect_closed_after_error(c, "4.4", "hello with a numeric client")
    for cl in ("a" * 129, "\u00e9" * 64 + "a"):
        c, r = t.hello(t.name("cl"), client=cl)
        check_error(r, "bad_request", "4.2", f"hello with a {len(cl.encode())}-byte client")
        expect_closed_after_error(c, "4.4", "hello with an over-long client")


@check("hello.failed_hello_discards_pipelined")
def c_failed_pipelined(t):
    c = t.conn()
    r1, f1 = c.frame_for("hello", {"versions": [2], "name": t.name("fp")})
    r2, f2 = c.frame_for("rooms")
    c.send_raw(f1 + f2)
    r = c.wait_reply(r1, section="4.4")
    check_error(r, "unsupported_version", "4.2", "hello with versions [2]")
    expect_closed_after_error(c, "4.4", "failed hello")
    expect(len(c.replies) == 1, "4.4", f"a request pipelined behind a failed hello was answered: {short(c.replies)}")


@check("hello.pipelined_requests_after_hello")
def c_pipelined(t):
    c = t.conn()
    name = t.name("pp")
    r1, f1 = c.frame_for("hello", {"versions": [1], "name": name})
    r2, f2 = c.frame_for("rooms")
    r3, f3 = c.frame_for("users")
    c.send_raw(f1 + f2 + f3)
    check_welcome(c.wait_reply(r1, section="4.1"), name, r1)
    c.wait_reply(r2, section="4.1")
    c.wait_reply(r3, section="4.1")
    expect([r["id"] for r in c.replies[:3]] == [r1, r2, r3], "5.1", f"reply order {[r['id'] for r in c.replies]}")
    expect(c.first_control is c.replies[0], "4.3", "Welcome was not the first control message")


@check("handshake.request_before_hello")
def c_before_hello(t):
    col = Collect()
    for rtype, fields in (("rooms", None), ("say", {"room": "lobby", "text": "hi"}), ("users", None),
                          ("quit", None), ("join", {"room": "x"}), ("msg", {"to": "x", "text": "y"}),
                          ("part", {"room": "lobby"})):
        with col.case():
            c = t.conn()
            r = c.call(rtype, fields, section="4.2")
            check_error(r, "handshake_required", "4.2", f"{rtype} before hello")
            expect_closed_after_error(c, "4.4", f"{rtype} before hello")
    col.done()


@check("handshake.bad_request_before_hello")
def c_bad_before_hello(t):
    cases = [(b'{"id":4,"type":"dance"}', "unknown_request", "an unknown type"),
             (b'{"id":4,"type":7}', "bad_request", "a numeric type"),
             (b'{"id":4}', "bad_request", "no type"),
             (b'{"id":4,"type":"hello","versions":[1]}', "bad_request", "hello without name")]
    col = Collect()
    for payload, code, label in cases:
        with col.case():
            c = t.conn()
            c.sent_types[4] = "?"
            c.send_raw(raw_control(payload))
            r = c.wait_reply(4, section="3.4")
            check_error(r, code, "3.4", f"{label} before sign-in")
            expect_closed_after_error(c, "4.4", f"{label} before sign-in")
    col.done()


@check("handshake.second_hello")
def c_second_hello(t):
    a = t.login("sh")
    other = t.name("sh")
    a.err("hello", {"versions": [1], "name": a.name}, "already_signed_in", "4.4", "second hello, same name")
    a.err("hello", {"versions": [1], "name": other}, "already_signed_in", "4.4", "second hello, other name")
    a.err("hello", {"versions": [2], "name": other}, "already_signed_in", "4.4",
          "second hello with versions [2] (well-formed)")
    a.err("hello", {"versions": [65536], "name": other}, "bad_request", "4.4", "malformed second hello")
    a.err("hello", {"versions": [1]}, "bad_request", "4.4", "second hello without name")
    a.still_open("4.4", "a second hello")
    users = a.all_users()
    expect(a.name in users and other not in users, "4.4", f"second hello changed the user list: {short(users)}")


@check("say.ok_and_event")
def c_say(t):
    room = t.room("s")
    a, b, c, d = t.login("sa"), t.login("sb"), t.login("sc"), t.login("sd")
    for x in (a, b, c):
        x.ok("join", {"room": room}, "5.5")
    mb, mc, md = len(b.events), len(c.events), len(d.events)
    res = a.ok("say", {"room": "#" + room.upper(), "text": "hi there"}, "5.3")
    check_sent(res, room, "5.3")
    for x, m in ((b, mb), (c, mc)):
        ev = x.wait_event(lambda e: e["type"] == "message" and e.get("room") == room, start=m)
        expect(ev is not None, "5.3", f"{x.name} did not receive the message event")
        check_event_shape(ev, "7.1")
        want = {"type": "message", "id": res["id"], "ts": res["ts"], "room": room, "from": a.name,
                "text": "hi there"}
        expect(ev == want, "5.3", f"message event {short(ev)}, expected {short(want)}")
    settle(d)
    leak = [e for e in d.events[md:] if e.get("room") == room]
    expect(not leak, "5.3", f"a non-member received an event of the room: {short(leak)}")
    # lobby too
    mb = len(b.events)
    res = a.ok("say", {"room": "#LoBBy", "text": "lobby hi"}, "5.3")
    check_sent(res, "lobby", "5.3")
    ev = b.wait_event(lambda e: e["type"] == "message" and e.get("id") == res["id"], start=mb)
    expect(ev is not None and ev["room"] == "lobby" and ev["text"] == "lobby hi", "5.3",
           f"lobby message event {short(ev)}")


@check("say.no_echo_to_sender")
def c_no_echo(t):
    room = t.room("e")
    a, b = t.login("ea"), t.login("eb")
    a.ok("join", {"room": room}, "5.5")
    b.ok("join", {"room": room}, "5.5")
    res = a.ok("say", {"room": room, "text": "echo?"}, "5.3")
    # sync: a private to oneself gets a higher message id, and events arrive in id order (§7.1)
    a.ok("msg", {"to": a.name, "text": "sync"}, "5.4")
    echo = [e for e in a.events if e["type"] == "message" and (e.get("room") == room or e.get("from") == a.name)]
    expect(not echo, "5.3", f"the sender received its own message: {short(echo)}")
    syncs = [e for e in a.events if e["type"] == "private" and e.get("text") == "sync"]
    expect(syncs and syncs[0]["id"] > res["id"], "7.1", "sync private missing or with a lower id")


@check("say.errors")
def c_say_errors(t):
    a, b = t.login("se"), t.login("sf")
    other = t.room("so")
    b.ok("join", {"room": other}, "5.5")
    nonexist = t.room("sn")
    a.err("say", {"room": other, "text": "x"}, "not_in_room", "5.3", "say in a room the sender is not in")
    a.err("say", {"room": nonexist, "text": "x"}, "not_in_room", "5.3", "say in a room that does not exist")
    for bad in ("#", "##a", "", "a b", "x" * 33, "\u00e9t\u00e9", "a#b"):
        a.err("say", {"room": bad, "text": "x"}, "invalid_room", "5.3", f"say in room {bad!r}")
    for empty in ("", " ", "\t\n\r ", UNICODE_WHITE_SPACE, " " * 5000):
        a.err("say", {"room": "lobby", "text": empty}, "empty_text", "5.1", f"say with text {empty!r}")
    for long_text in ("a" * 4097, "\u00e9" * 2048 + "a", "\u20ac" * 1366):
        a.err("say", {"room": "lobby", "text": long_text}, "text_too_long", "5.1",
              f"say with {len(long_text.encode())} bytes of text")
    for ok_text in ("a" * 4096, "\u00e9" * 2048, "\u20ac" * 1365 + "a"):
        res = a.ok("say", {"room": "lobby", "text": ok_text}, "5.1")
        check_sent(res, "lobby", "5.3")
    # order: empty_text, text_too_long, invalid_room, not_in_room
    a.err("say", {"room": "#", "text": ""}, "empty_text", "5.3", "say '' in an invalid room")
    a.err("say", {"room": nonexist, "text": " "}, "empty_text", "5.3", "say ' ' in a room one is not in")
    a.err("say", {"room": "#", "text": "a" * 4097}, "text_too_long", "5.3", "say too long in an invalid room")
    a.err("say", {"room": other, "text": "a" * 4097}, "text_too_long", "5.3", "say too long in a room one is not in")
    a.still_open("10", "say errors")


@check("say.text_delivered_exactly")
def c_say_exact(t):
    room = t.room("x")
    a, b = t.login("xa"), t.login("xb")
    a.ok("join", {"room": room}, "5.5")
    b.ok("join", {"room": room}, "5.5")
    texts = ["  leading and trailing  ", "line1\nline2\r\n\ttab", "ctrl\x01\x1b[31m", "\x1c",
             "\u200b", "\u00fcn\u00efc\u00f6d\u00e9 \u5b57 \U0001F600", "\u00a0x\u3000", "a" * 4096]
    for i, text in enumerate(texts):
        m = len(b.events)
        rid = a.send_req("say", {"room": room, "text": text}, ascii_only=(i % 2 == 1))
        r = a.wait_reply(rid, section="5.1")
        expect(r.get("type") == "ok", "5.1", f"say {text[:40]!r} refused: {short(r)}")
        ev = b.wait_event(lambda e: e["type"] == "message" and e.get("id") == r["result"]["id"], start=m)
        expect(ev is not None, "5.3", f"no message event for {text[:40]!r}")
        expect(ev["text"] == text, "5.1", f"text {text[:40]!r} delivered as {ev['text'][:40]!r}")


@check("say.refused_uses_no_message_id")
def c_refused_no_id(t):
    # Other users of a shared server may use ids in between; a server that burned an id on
    # every refusal would never give consecutive ids, so one clean attempt out of 5 suffices.
    # Each attempt is pipelined in one write, so the window for other traffic is tiny.
    a = t.login("ri")
    attempts = []
    for _ in range(10):
        reqs = [("say", {"room": "lobby", "text": "one"}), ("say", {"room": "lobby", "text": " "}),
                ("say", {"room": "#", "text": "x"}), ("msg", {"to": t.name("zz"), "text": "x"}),
                ("say", {"room": "lobby", "text": "a" * 4097}), ("say", {"room": "lobby", "text": "two"})]
        frames = [a.frame_for(rt, f) for rt, f in reqs]
        a.send_raw(b"".join(f for _, f in frames))
        reps = [a.wait_reply(rid, section="5.3") for rid, _ in frames]
        codes = [r.get("code", r["type"]) for r in reps]
        expect(codes == ["ok", "empty_text", "invalid_room", "not_found", "text_too_long", "ok"], "5.3",
               f"unexpected replies {codes}")
        i1, i2 = reps[0]["result"]["id"], reps[-1]["result"]["id"]
        attempts.append((i1, i2))
        if i2 == i1 + 1:
            return
        time.sleep(0.05)
    fail("5.3", f"refused say/msg between two accepted says always used message ids: {attempts}")


@check("msg.private")
def c_msg(t):
    a, b, c = t.login("ma"), t.login("MbB"), t.login("mc")
    mb, mc = len(b.events), len(c.events)
    res = a.ok("msg", {"to": b.name.upper(), "text": "psst"}, "5.4")
    check_sent(res, b.name, "5.4")
    ev = b.wait_event(lambda e: e["type"] == "private", start=mb)
    expect(ev is not None, "5.4", "recipient did not receive the private event")
    check_event_shape(ev, "7.2")
    want = {"type": "private", "id": res["id"], "ts": res["ts"], "from": a.name, "to": b.name, "text": "psst"}
    expect(ev == want, "5.4", f"private event {short(ev)}, expected {short(want)}")
    sync = a.ok("msg", {"to": c.name, "text": "sync"}, "5.4")
    ev = c.wait_event(lambda e: e["type"] == "private", start=mc)
    expect(ev is not None and ev["id"] == sync["id"], "5.4",
           f"third party received a private event not meant for it: {short(ev)}")
    expect(not [e for e in a.events if e["type"] == "private"], "5.4", "the sender received a private event")
    res = a.ok("msg", {"to": b.name.lower(), "text": "again"}, "5.4")
    expect(res["to"] == b.name, "5.4", f"Sent to {res['to']!r}, expected the server's spelling {b.name!r}")


@check("msg.errors")
def c_msg_errors(t):
    a, b = t.login("me"), t.login("mf")
    ghost = t.name("gh")
    a.err("msg", {"to": ghost, "text": "x"}, "not_found", "5.4", "msg to nobody")
    a.err("msg", {"to": "bad name!", "text": "x"}, "not_found", "5.4", "msg to an invalid name")
    a.err("msg", {"to": "", "text": "x"}, "not_found", "5.4", "msg to ''")
    a.err("msg", {"to": ghost, "text": ""}, "empty_text", "5.4", "msg '' to nobody (empty_text first)")
    a.err("msg", {"to": ghost, "text": "a" * 4097}, "text_too_long", "5.4", "long msg to nobody")
    a.err("msg", {"to": b.name, "text": " \n\u3000"}, "empty_text", "5.1", "whitespace msg")
    a.err("msg", {"to": b.name, "text": "\u00e9" * 2048 + "a"}, "text_too_long", "5.1", "4097-byte msg")
    res = a.ok("msg", {"to": b.name, "text": "\u00e9" * 2048}, "5.1")
    check_sent(res, b.name, "5.4")
    a.still_open("10", "msg errors")


@check("msg.to_self_event_before_reply")
def c_msg_self(t):
    a = t.login("Ms")
    rid = a.send_req("msg", {"to": a.name.lower(), "text": "me"})
    r = a.wait_reply(rid, section="5.4")
    expect(r.get("type") == "ok", "5.4", f"msg to oneself refused: {short(r)}")
    check_sent(r["result"], a.name, "5.4")
    idx_reply = next(i for i, (_, k, o) in enumerate(a.log) if k == "reply" and o is r)
    evs = [(i, o) for i, (_, k, o) in enumerate(a.log) if k == "event" and o["type"] == "private"]
    expect(evs, "5.4", "no private event for a msg to oneself")
    i, ev = evs[0]
    expect(i < idx_reply, "7.6", "the private event to oneself arrived after the ok reply")
    want = {"type": "private", "id": r["result"]["id"], "ts": r["result"]["ts"], "from": a.name,
            "to": a.name, "text": "me"}
    expect(ev == want, "5.4", f"private event {short(ev)}, expected {short(want)}")


@check("room.join_part_events")
def c_join_part(t):
    room = t.room("j")
    a, b = t.login("ja"), t.login("jb")
    res = a.ok("join", {"room": "#" + room.upper()}, "5.5")
    check_joined(res, a.welcome["roster_limit"])
    expect(res == {"room": room, "members": [a.name], "count": 1}, "5.5", f"join result {short(res)}")
    ma = len(a.events)
    res = b.ok("join", {"room": room}, "5.5")
    check_joined(res, b.welcome["roster_limit"])
    expect(res == {"room": room, "members": sorted([a.name, b.name], key=name_key), "count": 2}, "5.5",
           f"join result {short(res)}")
    ev = a.wait_event(lambda e: e["type"] == "join" and e.get("room") == room, start=ma)
    expect(ev == {"type": "join", "room": room, "users": [b.name]}, "5.5", f"join event {short(ev)}")
    # rejoin: success, same members, no event
    ma = len(a.events)
    res2 = b.ok("join", {"room": "#" + room}, "5.5")
    expect(res2 == res, "5.5", f"rejoin result {short(res2)}, expected {short(res)}")
    settle(a, b)
    extra = [e for e in a.events[ma:] if e["type"] in ("join", "part") and e.get("room") == room]
    expect(not extra, "5.5", f"rejoining caused events: {short(extra)}")
    own = [e for e in b.events if e["type"] == "join" and e.get("room") == room]
    expect(not own, "5.5", f"the joiner received a join event about itself: {short(own)}")
    # part
    ma, mb = len(a.events), len(b.events)
    res = b.ok("part", {"room": "#" + room.upper()}, "5.6")
    expect(res == {"room": room}, "5.6", f"part result {short(res)}")
    ev = a.wait_event(lambda e: e["type"] == "part" and e.get("room") == room, start=ma)
    expect(ev == {"type": "part", "room": room, "users": [b.name], "reason": "part"}, "5.6", f"part event {short(ev)}")
    settle(b)
    own = [e for e in b.events[mb:] if e["type"] == "part" and e.get("room") == room]
    expect(not own, "5.6", f"the leaver received a part event: {short(own)}")
    b.err("part", {"room": room}, "not_in_room", "5.6", "part of a room one has left")
    users = a.ok("users", {"room": room}, "5.8")
    expect(users == {"room": room, "users": [a.name], "count": 1}, "5.8", f"users result {short(users)}")


@check("room.name_rules")
def c_room_names(t):
    a, b = t.login("rn"), t.login("rm")
    for bad in ("#", "##a", "", "x" * 33, "#" + "x" * 33, "a b", "\u00e9", "a/b", "#a#"):
        a.err("join", {"room": bad}, "invalid_room", "4.6", f"join {bad!r}")
        a.err("part", {"room": bad}, "invalid_room", "5.6", f"part {bad!r}")
        a.err("users", {"room": bad}, "invalid_room", "5.8", f"users {bad!r}")
    r32 = (t.room("L") + "q" * 32)[:32]
    res = a.ok("join", {"room": "#" + r32.upper()}, "4.6")
    expect(res["room"] == r32, "4.6", f"'#'+32 chars canonical {res['room']!r}, expected {r32!r}")
    res = a.ok("join", {"room": "a.B-c_" + t.ctx.uniq().upper()}, "4.6")
    expect(res["room"] == res["room"].lower() and res["room"].startswith("a.b-c_"), "4.6", f"canonical {res['room']!r}")
    nonexist = t.room("nx")
    a.err("part", {"room": nonexist}, "not_in_room", "5.6", "part of a room that does not exist")
    a.err("users", {"room": nonexist}, "invalid_room", "5.8", "users of a room that does not exist")
    broom = t.room("bx")
    b.ok("join", {"room": broom}, "5.5")
    a.err("part", {"room": broom}, "not_in_room", "5.6", "part of a room one is not in")
    a.still_open("10", "room errors")


@check("room.rooms_list")
def c_rooms(t):
    r1, r2 = t.room("ra"), t.room("rb")
    a, b = t.login("ra"), t.login("rb")
    a.ok("join", {"room": r1}, "5.5")
    b.ok("join", {"room": r1}, "5.5")
    b.ok("join", {"room": r2}, "5.5")
    res = a.ok("rooms", None, "5.7")
    expect(set(res) == {"rooms"}, "5.7", f"rooms result fields {list(res)}")
    rooms = res["rooms"]
    expect(isinstance(rooms, list), "5.7", "rooms is not an array")
    for e in rooms:
        expect(isinstance(e, dict) and set(e) == {"name", "members", "joined"}, "5.7", f"rooms entry {short(e)}")
        expect(isinstance(e["name"], str) and type(e["members"]) is int and e["members"] >= 0
               and type(e["joined"]) is bool, "5.7", f"rooms entry types {short(e)}")
    names = [e["name"] for e in rooms]
    expect(names == sorted(names, key=lambda n: n.encode()), "4.6", f"rooms not sorted by name: {names[:10]}")
    expect(len(set(names)) == len(names), "5.7", "a room is listed twice")
    by = {e["name"]: e for e in rooms}
    expect("lobby" in by and by["lobby"]["joined"] is True, "5.7", f"lobby entry {short(by.get('lobby'))}")
    expect(by.get(r1) == {"name": r1, "members": 2, "joined": True}, "5.7", f"entry {short(by.get(r1))}")
    expect(by.get(r2) == {"name": r2, "members": 1, "joined": False}, "5.7", f"entry {short(by.get(r2))}")
    res = b.ok("rooms", None, "5.7")
    by = {e["name"]: e for e in res["rooms"]}
    expect(by.get(r2) == {"name": r2, "members": 1, "joined": True}, "5.7", f"entry {short(by.get(r2))}")


@check("room.users_list")
def c_users(t):
    room = t.room("u")
    a, b = t.login("UA"), t.login("ub")
    b.ok("join", {"room": room}, "5.5")
    limit = a.welcome["roster_limit"]
    res = a.ok("users", None, "5.8")
    check_users(res, limit)
    everyone = a.all_users()
    expect(a.name in everyone and b.name in everyone, "5.8", f"users {short(everyone)} misses {a.name} or {b.name}")
    expect(len(set(everyone)) == len(everyone), "5.8", "paging through users listed a name twice")
    res2 = a.ok("users", {"room": None}, "5.8")
    check_users(res2, limit)
    res3 = a.ok("users", {"room": None, "after": None}, "5.8")
    check_users(res3, limit)
    res = a.ok("users", {"room": "#" + room.upper()}, "5.8")
    expect(res == {"room": room, "users": [b.name], "count": 1}, "5.8", f"users of a room one is not in: {short(res)}")


@check("room.users_paging")
def c_users_paging(t):
    # A room of its own, so that nobody else's arrival changes count between pages (§5.8).
    s = t.ctx.uniq()
    room = t.room("pg")
    names = ["pa" + s, "PB" + s, "pc" + s]
    conns = [t.login(name=n) for n in names]
    for c in conns:
        c.ok("join", {"room": room}, "5.5")
    a = conns[0]
    limit = a.welcome["roster_limit"]
    col = Collect()
    with col.case():
        res = a.ok("users", {"room": room}, "5.8")
        check_users(res, limit, room)
        expect(res == {"room": room, "users": names, "count": 3}, "5.8", f"users of the room {short(res)}")
    # after: the names that sort after it, compared ASCII-lower-cased; count is unchanged
    for after, rest in ((names[0], names[1:]), (names[0].upper(), names[1:]), ("pb", names[1:]),
                        (names[1].lower(), names[2:]), (names[2], []), ("~", []), ("", names)):
        with col.case():
            res = a.ok("users", {"room": room, "after": after}, "5.8")
            check_users(res, limit, room, after)
            expect(res == {"room": room, "users": rest, "count": 3}, "5.8",
                   f"users after {after!r}: {short(res)}, expected the names {rest} and count 3")
    with col.case():
        res = a.ok("users", {"room": room, "after": None}, "5.8")
        expect(res == {"room": room, "users": names, "count": 3}, "5.8", f"users after null: {short(res)}")
    with col.case():
        expect(a.all_users(room) == names, "5.8", "paging through the room did not list its members")
    with col.case():
        # everyone online, from after the first name: count is everyone, the page starts later
        res = a.ok("users", {"after": names[0]}, "5.8")
        check_users(res, limit, None, names[0])
        expect(names[0] not in res["users"] and res["count"] >= len(names), "5.8", f"users after {names[0]!r}: {short(res)}")
        if not res.get("more"):
            expect(names[1] in res["users"] and names[2] in res["users"], "5.8",
                   f"users after {names[0]!r} misses {names[1]} or {names[2]}: {short(res)}")
    col.done()


@check("room.lobby_persists_and_part_all")
def c_lobby(t):
    a, b = t.login("lp"), t.login("lq")
    mb = len(b.events)
    res = a.ok("part", {"room": "lobby"}, "5.6")
    expect(res == {"room": "lobby"}, "5.6", f"part lobby result {short(res)}")
    ev = b.wait_event(lambda e: e["type"] == "part" and a.name in e.get("users", []), start=mb)
    expect(ev == {"type": "part", "room": "lobby", "users": [a.name], "reason": "part"}, "5.6", f"part event {short(ev)}")
    by = {e["name"]: e for e in a.ok("rooms", None, "5.7")["rooms"]}
    expect("lobby" in by and by["lobby"]["joined"] is False, "4.7", f"lobby after parting it: {short(by.get('lobby'))}")
    # a user in no room stays online and can use msg, rooms, users, join (§5.6)
    users = a.all_users()
    expect(a.name in users, "5.6", "a user who parted every room is not listed as online")
    a.err("say", {"room": "lobby", "text": "x"}, "not_in_room", "5.3", "say in lobby after parting it")
    mb = len(b.events)
    a.ok("msg", {"to": b.name, "text": "still here"}, "5.6")
    expect(b.wait_event(lambda e: e["type"] == "private" and e["from"] == a.name, start=mb) is not None,
           "5.6", "msg from a user in no room not delivered")
    ma, mb = len(a.events), len(b.events)
    newcomer = t.login("lr")
    ev = b.wait_event(lambda e: e["type"] == "join" and newcomer.name in e.get("users", []), start=mb)
    expect(ev is not None, "4.3", "lobby member did not see a sign-in")
    settle(a)
    leak = [e for e in a.events[ma:] if e["type"] == "join"]
    expect(not leak, "7.3", f"a user not in lobby received the lobby join event: {short(leak)}")
    mb = len(b.events)
    res = a.ok("join", {"room": "lobby"}, "4.7")
    check_joined(res, a.welcome["roster_limit"])
    expect(res["room"] == "lobby", "5.5", f"{short(res)}")
    if res["count"] <= a.welcome["roster_limit"]:  # §5.5: else only the first names
        expect(a.name in res["members"] and b.name in res["members"], "5.5", f"{short(res)}")
    ev = b.wait_event(lambda e: e["type"] == "join" and a.name in e.get("users", []), start=mb)
    # Other checks sign in to the lobby meanwhile: one batched event may name them too (§7.10).
    expect(ev is not None and ev["room"] == "lobby" and ev["users"].count(a.name) == 1
           and set(ev) == {"type", "room", "users"}, "5.5", f"join event {short(ev)}")


@check("room.emptied_room_disappears")
def c_room_gone(t):
    room = t.room("g")
    a, b = t.login("ga"), t.login("gb")
    a.ok("join", {"room": room}, "5.5")
    b.ok("join", {"room": room}, "5.5")
    a.ok("part", {"room": room}, "5.6")
    names = [e["name"] for e in a.ok("rooms", None, "5.7")["rooms"]]
    expect(room in names, "4.7", "room with one member left is gone")
    b.ok("part", {"room": room}, "5.6")
    names = [e["name"] for e in a.ok("rooms", None, "5.7")["rooms"]]
    expect(room not in names, "4.7", f"room {room} still listed after its last member left")
    a.err("users", {"room": room}, "invalid_room", "5.8", "users of an emptied room")
    res = a.ok("join", {"room": room}, "5.5")
    expect(res == {"room": room, "members": [a.name], "count": 1}, "5.5", f"re-created room {short(res)}")


@check("room.sorting")
def c_sorting(t):
    s = t.ctx.uniq()
    room = t.room("so")
    names = ["-x" + s, "9" + s, "_u" + s, "alice" + s, "Bob" + s, "Zed" + s]
    conns = []
    for n in reversed(names):
        c = t.login(name=n)
        c.ok("join", {"room": room}, "5.5")
        conns.append(c)
    res = conns[-1].ok("users", {"room": room}, "5.8")
    expect(res["users"] == names, "4.6", f"members sorted as {res['users']}, expected {names}")
    all_users = conns[0].all_users()
    expect([u for u in all_users if u in names] == names, "4.6", "users (all) not sorted by lower-cased name")
    rooms = ["-a" + s, "9a" + s, "_a" + s, "za" + s]
    for r in reversed(rooms):
        conns[0].ok("join", {"room": r}, "5.5")
    listed = [e["name"] for e in conns[0].ok("rooms", None, "5.7")["rooms"] if e["name"] in rooms]
    expect(listed == rooms, "4.6", f"rooms sorted as {listed}, expected {rooms}")


@check("room.too_many_rooms")
def c_too_many(t):
    a = t.login("tm")
    rooms = [t.room("t") for _ in range(MAX_ROOMS - 1)]
    for r in rooms:  # lobby + 31 = 32
        a.ok("join", {"room": r}, "5.5")
    extra = t.room("t")
    a.err("join", {"room": extra}, "too_many_rooms", "5.5", "join of a 33rd room")
    a.err("join", {"room": "#"}, "invalid_room", "5.5", "invalid room at the limit (invalid_room first)")
    a.ok("join", {"room": rooms[0]}, "5.5")  # already a member: succeeds
    a.ok("join", {"room": "lobby"}, "5.5")
    a.ok("part", {"room": "lobby"}, "5.6")
    a.ok("join", {"room": extra}, "5.5")
    a.err("join", {"room": t.room("t")}, "too_many_rooms", "5.5", "join of a 33rd room after swapping lobby")
    joined = [e for e in a.ok("rooms", None, "5.7")["rooms"] if e["joined"]]
    expect(len(joined) == MAX_ROOMS, "5.5", f"user is in {len(joined)} rooms, expected 32")


@check("quit.clean")
def c_quit(t):
    room = t.room("q")
    a, b = t.login("qa"), t.login("qb")
    a.ok("join", {"room": room}, "5.5")
    b.ok("join", {"room": room}, "5.5")
    ma = len(a.events)
    r1, f1 = b.frame_for("quit")
    r2, f2 = b.frame_for("rooms")
    b.send_raw(f1 + f2)
    r = b.wait_reply(r1, section="5.9")
    expect(r == {"type": "ok", "id": r1, "result": {}}, "5.9", f"quit reply {short(r)}")
    if not b.wait_eof():
        fail("5.9", "connection not closed after the quit reply")
    expect(b.bye is None, "5.9", f"a bye was sent after quit: {short(b.bye)}")
    after = [x for x in b.replies if x.get("id") == r2]
    expect(not after, "5.9", f"a request sent after quit was answered: {short(after)}")
    for rm in ("lobby", room):
        ev = a.wait_event(lambda e: e["type"] == "part" and e.get("room") == rm and b.name in e.get("users", []), start=ma)
        expect(ev == {"type": "part", "room": rm, "users": [b.name], "reason": "quit"}, "5.9",
               f"part event in {rm}: {short(ev)}")


@check("close.lost")
def c_lost(t):
    room = t.room("l")
    a, b, d = t.login("la"), t.login("lb"), t.login("ld")
    d.ok("part", {"room": "lobby"}, "5.6")
    a.ok("join", {"room": room}, "5.5")
    b.ok("join", {"room": room}, "5.5")
    ma, md = len(a.events), len(d.events)
    b.send_req("say", {"room": room, "text": "last words"})
    b.close()
    ev = a.wait_event(lambda e: e["type"] == "message" and e.get("text") == "last words", start=ma)
    expect(ev is not None, "12.1", "a request received before the client closed was not processed")
    for rm in ("lobby", room):
        ev = a.wait_event(lambda e: e["type"] == "part" and e.get("room") == rm and b.name in e.get("users", []), start=ma)
        expect(ev == {"type": "part", "room": rm, "users": [b.name], "reason": "lost"}, "7.4",
               f"part event in {rm}: {short(ev)}")
    settle(a)
    parts = [e for e in a.events[ma:] if e["type"] == "part" and b.name in e.get("users", [])]
    expect(len(parts) == 2, "7.4", f"expected one part event per room, got {short(parts)}")
    settle(d)
    leak = [e for e in d.events[md:] if b.name in e.get("users", [])]
    expect(not leak, "7.4", f"a user sharing no room with the leaver was told: {short(leak)}")


# --- invalid frames (§2.3, §3.4) ----------------------------------------------------------------

def bad_frame_pre(t, data, code, section, what):
    c = t.conn()
    c.send_raw(data)
    expect_bye(c, code, section, what + " (before sign-in)", reply_mark=0)
    expect(not c.replies, section, f"{what}: got a reply: {short(c.replies)}")
    return c


def bad_frame_signed_in(t, obs, data, code, section, what):
    c = t.login("bf")
    m = len(obs.events)
    c.send_raw(data)
    expect_bye(c, code, section, what + " (signed in)", reply_mark=len(c.replies))
    ev = obs.wait_event(lambda e: e["type"] == "part" and c.name in e.get("users", []), start=m)
    expect(ev == {"type": "part", "room": "lobby", "users": [c.name], "reason": "protocol_error"}, "7.4",
           f"{what}: lobby member saw {short(ev)}, expected part with reason protocol_error")
    return c


@check("frame.zero_length")
def c_zero(t):
    obs = t.login("ob")
    bad_frame_pre(t, header(0), "bad_frame", "2.3", "L = 0")
    bad_frame_signed_in(t, obs, header(0), "bad_frame", "2.3", "L = 0")


@check("frame.unknown_kind")
def c_unknown_kind(t):
    obs = t.login("ob")
    col = Collect()
    for data, label in ((header(1, 0), "kind 0"), (header(1, 5), "kind 5"), (header(1, 255), "kind 255"),
                        (header(10, 9), "kind 9 with L=10, header only")):
        with col.case():
            bad_frame_pre(t, data, "bad_frame", "2.3", label)
    with col.case():
        bad_frame_signed_in(t, obs, header(1, 0), "bad_frame", "2.3", "kind 0")
    col.done()


@check("frame.ping_pong_with_payload")
def c_ping_payload(t):
    obs = t.login("ob")
    col = Collect()
    for data, label in ((header(2, 3), "ping with L=2, header only"), (header(2, 3) + b"x", "ping with a payload"),
                        (header(2, 4), "pong with L=2, header only"), (header(3, 4) + b"ab", "pong with a payload")):
        with col.case():
            bad_frame_pre(t, data, "bad_frame", "2.3", label)
    with col.case():
        bad_frame_signed_in(t, obs, header(2, 3) + b"x", "bad_frame", "2.3", "ping with a payload")
    col.done()


@check("frame.data_frame")
def c_data(t):
    # Data frames carry upload bytes (section 5.13). Before sign-in any is a violation; a data
    # frame too short for its transfer id is malformed; signed in, data for no upload in
    # progress is discarded and the connection stays usable.
    obs = t.login("ob")
    col = Collect()
    for data, label in ((header(9, 2) + b"\0\0\0\1abcde", "data frame before sign-in"),
                        (header(1, 2), "data frame L=1")):
        with col.case():
            bad_frame_pre(t, data, "bad_frame", "2.1", label)
    with col.case():
        bad_frame_pre(t, header(262150, 2), "frame_too_large", "2.3", "data frame L=262150")
    with col.case():
        bad_frame_signed_in(t, obs, header(3, 2) + b"\0\0", "bad_frame", "2.1", "data frame without a whole transfer id")
    with col.case():
        c = t.login("dd")
        c.send_raw(header(9, 2) + b"\0\0\0\x2aabcd")
        expect(c.name in c.all_users(section="5.12"), "5.12", "the connection did not stay usable after stray data")
        expect(c.bye is None, "5.12", f"stray data for no upload got a bye: {short(c.bye)}")
    col.done()


@check("frame.oversized_length")
def c_oversized(t):
    obs = t.login("ob")
    col = Collect()
    # Larger than any frame: refused from the length bytes alone.
    for n in (262150, 16777216, 0xFFFFFFFF):
        with col.case():
            bad_frame_pre(t, header(n), "frame_too_large", "2.3", f"L = {n}, length bytes only")
    # A control frame over its own limit: refused once the kind byte is in, naming the limit.
    with col.case():
        c = bad_frame_pre(t, header(65537, 1), "frame_too_large", "2.3", "control frame with L = 65537")
        msg = c.bye["message"].replace(",", "").replace("_", "").replace(" ", "")
        expect("65536" in msg, "2.3", f"frame_too_large bye message does not name the limit 65,536: {c.bye['message']!r}")
    for kind, label in ((3, "ping"), (7, "unknown kind")):
        # Before sign-in the largest frame is a control frame: any L over 65,536 is too large.
        with col.case():
            bad_frame_pre(t, header(65537, kind), "frame_too_large", "2.3", f"{label} with L = 65537")
        # Signed in, data frames make the largest 262,149, so the kind byte decides.
        with col.case():
            bad_frame_signed_in(t, obs, header(65537, kind), "bad_frame", "2.3", f"{label} with L = 65537")
    with col.case():
        bad_frame_signed_in(t, obs, header(65537, 1), "frame_too_large", "2.3", "control frame L = 65537")
    col.done()


@check("frame.control_at_size_limit")
def c_at_limit(t):
    def padded(obj, size):
        base = encode_json(dict(obj, pad=""))
        obj = dict(obj, pad="p" * (size - len(base)))
        p = encode_json(obj)
        assert len(p) == size
        return p
    # before sign-in: a hello of exactly 65,535 JSON bytes (L = 65,536) is accepted
    c = t.conn()
    name = t.name("big")
    c.sent_types[1] = "hello"
    c.send_raw(raw_control(padded({"id": 1, "type": "hello", "versions": [1], "name": name}, 65535)))
    check_welcome(c.wait_reply(1, section="2.2"), name, 1)
    c.sent_types[2] = "rooms"
    c.send_raw(raw_control(padded({"id": 2, "type": "rooms"}, 65535)))
    r = c.wait_reply(2, section="2.2")
    expect(r.get("type") == "ok", "2.2", f"rooms in a 65,536-byte frame: {short(r)}")
    c.sent_types[3] = "rooms"
    c.send_raw(raw_control(b'{"id":3,"type":"rooms"}' + b" " * (65535 - 23)))
    r = c.wait_reply(3, section="2.2")
    expect(r.get("type") == "ok", "3.1", f"rooms padded with whitespace to 65,535 bytes: {short(r)}")


@check("control.not_json")
def c_not_json(t):
    obs = t.login("ob")
    cases = [(b"", "an empty payload"), (b"hello", "plain text"), (b'{"id":1,"type":"rooms"', "truncated JSON"),
             (b"[1,2]", "an array"), (b'[1,"rooms"]', 'the array [1,"rooms"]'), (b"[]", "an empty array"),
             (b'"str"', "a string"), (b"42", "a number"), (b"null", "null"),
             (b'{"id":1,"type":"rooms"} x', "trailing garbage"),
             (b'{"id":1,"type":"rooms"}{"id":2,"type":"rooms"}', "two objects"),
             (b"{'id':1}", "single quotes")]
    col = Collect()
    for payload, label in cases:
        with col.case():
            bad_frame_pre(t, raw_control(payload), "bad_frame", "3.4", f"control frame with {label}")
    for payload, label in ((b"not json", "non-JSON"), (b"[1,2]", "an array"), (b'[3,"rooms"]', 'the array [3,"rooms"]')):
        with col.case():
            bad_frame_signed_in(t, obs, raw_control(payload), "bad_frame", "3.4", f"control frame with {label}")
    col.done()


@check("control.request_without_readable_id")
def c_no_id(t):
    obs = t.login("ob")
    cases = [(b'{"type":"rooms"}', "no id"), (b'{"id":null,"type":"rooms"}', "id null"),
             (b'{"id":-1,"type":"rooms"}', "id -1"), (b'{"id":1.5,"type":"rooms"}', "id 1.5"),
             (b'{"id":"1","type":"rooms"}', "id a string"), (b'{"id":18446744073709551616,"type":"rooms"}', "id 2^64"),
             (b'{"id":true,"type":"rooms"}', "id true"), (b'{"id":[1],"type":"rooms"}', "id an array"),
             (b'{"id":1,"id":2,"type":"rooms"}', "a duplicated id"),
             (b'{"id":1,"type":"rooms","type":"users"}', "a duplicated type"), (b"{}", "an empty object")]
    col = Collect()
    for payload, label in cases:
        with col.case():
            c = t.login("ni")
            m = len(obs.events)
            c.send_raw(raw_control(payload))
            expect_bye(c, "bad_frame", "3.4", f"request with {label}", reply_mark=len(c.replies))
            expect(not [r for r in c.replies[1:]], "3.4", f"request with {label} got a reply: {short(c.replies[1:])}")
            ev = obs.wait_event(lambda e: e["type"] == "part" and c.name in e.get("users", []), start=m)
            expect(ev is not None and ev["reason"] == "protocol_error", "3.4",
                   f"request with {label}: lobby saw {short(ev)}, expected part protocol_error")
    with col.case():
        bad_frame_pre(t, raw_control(b'{"type":"hello","versions":[1],"name":"x"}'), "bad_frame", "3.4", "hello without id")
    col.done()


@check("control.id_range_echoed")
def c_id_range(t):
    a = t.login("id")
    for rid in (0, U64_MAX, 2 ** 53 + 1, 7):
        r = a.call("rooms", None, "5.1", rid=rid)
        expect(r.get("type") == "ok" and r["id"] == rid, "6", f"reply to id {rid}: {short(r)}")
    # the server does not check that ids are unique (§5.1)
    a.send_req("rooms", rid=42)
    a.send_req("users", rid=42)
    r1 = a.wait_reply(42, section="5.1")
    r2 = a.wait_reply(42, section="5.1")
    expect("rooms" in r1["result"] and "users" in r2["result"], "5.1", "duplicate ids: replies out of order")


@check("control.type_not_a_string")
def c_type_not_string(t):
    col = Collect()
    for payload, label in ((b'{"id":2,"type":7}', "a number"), (b'{"id":2,"type":null}', "null"),
                           (b'{"id":2,"type":["say"]}', "an array"), (b'{"id":2,"type":{}}', "an object"),
                           (b'{"id":2,"type":true}', "a boolean"), (b'{"id":2}', "missing"),
                           (b'{"id":2,"room":"lobby"}', "missing (with other fields)")):
        with col.case():
            a = t.login("ty")
            a.sent_types[2] = "?"
            a.send_raw(raw_control(payload))
            r = a.wait_reply(2, section="3.4")
            check_error(r, "bad_request", "3.4", f"type {label}")
            a.still_open("3.4", f"type {label}")
    col.done()


@check("control.unknown_type")
def c_unknown_type(t):
    col = Collect()
    a = t.login("ut")
    for ty in ("dance", "SAY", "Rooms", "", "ok", "message", "bye", "ping"):
        with col.case():
            r = a.call(ty, {"room": "lobby", "text": "x"}, "3.4")
            check_error(r, "unknown_request", "3.4", f"type {ty!r}")
            a.still_open("3.4", f"type {ty!r}")
    col.done()


@check("control.malformed_fields")
def c_malformed(t):
    a = t.login("mf")
    cases = [("say", {"room": "lobby"}), ("say", {"text": "x"}), ("say", {"room": "lobby", "text": 5}),
             ("say", {"room": 5, "text": "x"}), ("say", {"room": None, "text": "x"}),
             ("msg", {"text": "x"}), ("msg", {"to": a.name}), ("msg", {"to": 5, "text": "x"}),
             ("join", {}), ("join", {"room": ["lobby"]}), ("part", {}), ("part", {"room": 1}),
             ("users", {"room": 5}), ("users", {"room": ["lobby"]}), ("users", {"after": 5}),
             ("users", {"room": "lobby", "after": ["x"]}),
             ("hello", {"versions": "1", "name": a.name})]
    col = Collect()
    for rtype, fields in cases:
        with col.case():
            a.err(rtype, fields, "bad_request", "3.4", f"{rtype} {short(fields)}")
            a.still_open("3.4", f"malformed {rtype}")
    col.done()


@check("control.unknown_fields_and_whitespace_accepted")
def c_unknown_fields(t):
    a, b = t.login("uf"), t.login("ug")
    res = a.ok("rooms", {"extra": {"nested": [1, 2]}, "zzz": None}, "3.3")
    expect("rooms" in res, "3.3", "rooms with unknown fields")
    mb = len(b.events)
    res = a.ok("say", {"room": "lobby", "text": "x-fields", "colour": "red"}, "3.3")
    ev = b.wait_event(lambda e: e["type"] == "message" and e.get("id") == res["id"], start=mb)
    expect(ev is not None and ev["text"] == "x-fields", "3.3", "say with unknown fields not delivered")
    for i, payload in enumerate((b'{"id":900,"type":"rooms"}  \n\t\r', b' \n{ "id" : 901 , "type" : "rooms" }')):
        rid = 900 + i
        a.sent_types[rid] = "rooms"
        a.send_raw(raw_control(payload))
        r = a.wait_reply(rid, section="3.1")
        expect(r.get("type") == "ok", "3.1", f"request with JSON whitespace {payload!r} refused: {short(r)}")


@check("control.invalid_strings")
def c_invalid_strings(t):
    # §3.1 forbids these; §3.4: either a bye bad_frame or an error bad_request is acceptable.
    for payload, label in ((b'{"id":5,"type":"say","room":"lobby","text":"\\ud800"}', "a lone surrogate escape"),
                           (b'{"id":5,"type":"say","room":"lobby","text":"\xff\xfe"}', "invalid UTF-8"),
                           (b'{"id":5,"type":"say","room":"lobby","text":"a\x01b"}', "an unescaped control character")):
        a = t.login("is")
        a.sent_types[5] = "say"
        a.send_raw(raw_control(payload))
        a.pump_until(lambda: a.bye is not None or a.eof or any(r.get("id") == 5 for r in a.replies), REPLY_TIMEOUT)
        if a.bye is not None or a.eof:
            expect_bye(a, "bad_frame", "3.4", f"say with {label}")
        else:
            r = a.wait_reply(5, section="3.4")
            check_error(r, "bad_request", "3.4", f"say with {label} (the only alternative to bye bad_frame)")
            a.still_open("3.4", f"say with {label}")


# --- keepalive (§8) ---------------------------------------------------------------------------

@check("keepalive.server_answers_ping")
def c_answer_ping(t):
    c = t.conn()
    c.send_raw(PING)
    expect(c.pump_until(lambda: c.pongs, 2.0), "8", "no pong to a ping sent before sign-in")
    name = t.name("pg")
    rid = c.send_req("hello", {"versions": [1], "name": name})
    check_welcome(c.wait_reply(rid, section="4.2"), name, rid)
    n = len(c.pongs)
    c.send_raw(PING)
    expect(c.pump_until(lambda: len(c.pongs) > n, 2.0), "8", "no pong to a ping sent after sign-in")
    c.send_raw(PONG)  # a pong that answers nothing is ignored
    c.still_open("8", "an unsolicited pong")


@check("keepalive.ping_and_pong_keeps_connection", background=True)
def c_keepalive(t):
    k = t.login("ka")
    ka, to = k.welcome["keepalive_ms"] / 1000, k.welcome["timeout_ms"] / 1000
    if to > 20:
        raise Skip(f"timeout_ms {to * 1000:.0f} is too long for this run")
    hello_sent = k.last_sent
    k.pump_until(lambda: k.pings, ka + 2.0)
    expect(k.pings, "8", f"no ping within {ka + 2.0:.1f}s of silence (keepalive_ms {ka * 1000:.0f})")
    first = k.pings[0] - hello_sent
    expect(first >= ka - 0.15, "8", f"first ping after {first:.2f}s of silence, before keepalive_ms")
    expect(first <= ka + 1.5, "8", f"first ping after {first:.2f}s of silence (keepalive_ms {ka * 1000:.0f})")
    # keep answering (auto_pong) until well past timeout_ms since the last request
    end = hello_sent + to + 1.5
    k.pump_until(lambda: k.bye is not None or k.eof, max(0.0, end - time.monotonic()))
    expect(k.bye is None and not k.eof, "8", f"connection closed although pings were answered{k.bye_info()}")
    expect(len(k.pings) >= 2, "8", f"only {len(k.pings)} ping(s) in {to + 1.5:.1f}s of silence")
    expect(k.name in k.all_users(section="8"), "8", "user no longer online after answering pings")


@check("keepalive.active_client_not_pinged", background=True)
def c_no_ping_active(t):
    r = t.login("kr")
    p = t.login("kp")
    ka = r.welcome["keepalive_ms"] / 1000
    if ka > 5:
        raise Skip("keepalive_ms too long for this run")
    step = ka / 3  # well inside the keepalive interval
    end = time.monotonic() + ka + 2.5
    while time.monotonic() < end:
        r.send_req("rooms")
        p.send_raw(PING)
        r.pump(step / 2)
        p.pump(step / 2)
    expect(not r.pings, "8", f"a client sending a request every {step:.1f}s was pinged")
    expect(not p.pings, "8", f"a client sending a ping every {step:.1f}s was pinged (any frame counts)")
    expect(p.pongs, "8", "no pongs to pings")


@check("keepalive.silent_client_dropped", background=True)
def c_timeout(t):
    room = t.room("to")
    o = t.login("ko")
    k = t.login("kt")
    ka, to = k.welcome["keepalive_ms"] / 1000, k.welcome["timeout_ms"] / 1000
    if to > 20:
        raise Skip(f"timeout_ms {to * 1000:.0f} is too long for this run")
    o.ok("join", {"room": room}, "5.5")
    k.ok("join", {"room": room}, "5.5")
    k.auto_pong = False
    last = k.last_sent
    mo = len(o.events)
    deadline = last + to + 3.0
    while time.monotonic() < deadline and not (k.eof or k.bye):
        k.pump(0.2)
        o.pump(0.05)
    expect(k.pings, "8", "the silent client was never pinged")
    expect(k.bye is not None, "8", f"no bye {to + 3:.0f}s after the last frame from the client{k.bye_info()}")
    when = k.log[next(i for i, (_, kind, ob) in enumerate(k.log) if ob is k.bye)][0] - last
    check_event_shape(k.bye, "7.5")
    expect(k.bye["code"] == "timeout", "8", f"bye {short(k.bye)}, expected code timeout")
    expect(to - 0.15 <= when <= to + 2.0, "8", f"bye timeout after {when:.2f}s of silence, timeout_ms {to * 1000:.0f}")
    expect(k.wait_eof(), "12.2", "connection not closed after bye timeout")
    ev = o.wait_event(lambda e: e["type"] == "part" and e.get("room") == room, start=mo)
    expect(ev == {"type": "part", "room": room, "users": [k.name], "reason": "timeout"}, "8", f"part event {short(ev)}")


@check("handshake.timeout_not_extended_by_ping", background=True)
def c_handshake_timeout(t):
    c = t.conn()
    start = c.connect_time
    c.pump(4.0)
    c.send_raw(PING)
    c.pump_until(lambda: c.bye is not None or c.eof, HANDSHAKE_TIMEOUT + 3.0 - (time.monotonic() - start))
    expect(c.pongs, "8", "no pong to a ping before sign-in")
    expect(not c.pings, "8", "the server pinged a connection before sign-in")
    expect(c.bye is not None, "4.5", f"no bye within {HANDSHAKE_TIMEOUT + 3:.0f}s of accept without hello{c.bye_info()}")
    when = c.log[next(i for i, (_, kind, ob) in enumerate(c.log) if ob is c.bye)][0] - start
    expect(c.bye["code"] == "handshake_timeout", "4.5", f"bye {short(c.bye)}")
    check_event_shape(c.bye, "7.5")
    expect(HANDSHAKE_TIMEOUT - 0.2 <= when <= HANDSHAKE_TIMEOUT + 2.0, "4.5",
           f"handshake_timeout after {when:.2f}s, expected 10 s from accept")
    expect(c.wait_eof(), "12.2", "connection not closed after handshake_timeout")


# --- ordering and message ids (§5.1, §7.1, §7.6) ----------------------------------------------

@check("order.replies_in_request_order")
def c_reply_order(t):
    a = t.login("ro")
    room = t.room("ro")
    ids = random.sample(range(1, 10 ** 6), 14)
    reqs = [("rooms", None), ("say", {"room": t.room("zz"), "text": "x"}), ("join", {"room": room}),
            ("users", None), ("dance", None), ("say", {"room": room, "text": "y"}),
            ("msg", {"to": a.name, "text": "self"}), ("part", {"room": room}), ("users", {"room": "lobby"}),
            ("hello", {"versions": [1], "name": a.name}), ("say", {"room": "lobby", "text": ""}),
            ("join", {"room": "#"}), ("msg", {"to": t.name("no"), "text": "x"}), ("rooms", None)]
    data = b"".join(a.frame_for(rt, f, rid)[1] for (rt, f), rid in zip(reqs, ids))
    a.send_raw(data)
    a.pump_until(lambda: len(a.replies) >= 1 + len(ids), REPLY_TIMEOUT)
    got = [r["id"] for r in a.replies[1:]]
    expect(got == ids, "5.1", f"replies in order {got}, requests in order {ids}")


@check("order.message_ids_burst")
def c_ids_burst(t):
    room = t.room("ib")
    a, b = t.login("ia"), t.login("ib")
    a.ok("join", {"room": room}, "5.5")
    b.ok("join", {"room": room}, "5.5")
    mb = len(b.events)
    rids = []
    data = b""
    for i in range(25):
        rid, f = a.frame_for("say", {"room": room, "text": f"m{i}"})
        rids.append(rid)
        data += f
    a.send_raw(data)
    sents = [a.wait_reply(r, section="5.3")["result"] for r in rids]
    mids = [s["id"] for s in sents]
    expect(all(x < y for x, y in zip(mids, mids[1:])), "7.1", f"Sent ids not increasing: {mids}")
    tss = [s["ts"] for s in sents]
    expect(all(x <= y for x, y in zip(tss, tss[1:])), "7.1", "Sent ts decreased")
    b.pump_until(lambda: len([e for e in b.events[mb:] if e["type"] == "message" and e.get("room") == room]) >= 25, EVENT_TIMEOUT)
    evs = [e for e in b.events[mb:] if e["type"] == "message" and e.get("room") == room]
    expect([(e["id"], e["ts"], e["text"]) for e in evs] == [(s["id"], s["ts"], f"m{i}") for i, s in enumerate(sents)],
           "7.1", "message events do not match the Sent results in order")


@check("order.join_reply_before_room_events")
def c_join_first(t):
    room = t.room("jf")
    s, b = t.login("js"), t.login("jb")
    s.ok("join", {"room": room}, "5.5")
    rids = []
    for batch in range(4):
        data = b""
        for i in range(40):
            rid, f = s.frame_for("say", {"room": room, "text": f"b{batch}-{i}"})
            rids.append(rid)
            data += f
        s.send_raw(data)
        if batch == 1:
            jid = b.send_req("join", {"room": room})
    jr = b.wait_reply(jid, section="5.5")
    for r in rids:
        s.wait_reply(r, section="5.3")
    settle(b)
    idx = next(i for i, (_, k, o) in enumerate(b.log) if o is jr)
    early = [o for (_, k, o) in b.log[:idx] if k == "event" and o.get("room") == room]
    expect(not early, "7.6", f"{len(early)} event(s) of the room arrived before the join reply: {short(early[:2])}")
    # Live messages only: a backlog event (history, section 7.9) may come too.
    got = [o for (_, k, o) in b.log[idx:]
           if k == "event" and o.get("type") == "message" and o.get("room") == room]
    texts = [e["text"] for e in got]
    expect(texts == [f"b{x}-{i}" for x in range(4) for i in range(40)][160 - len(texts):], "7.6",
           "after joining, the member did not receive a contiguous tail of the room's messages")


@check("order.no_room_events_after_part_reply")
def c_part_last(t):
    room = t.room("pl")
    s, b = t.login("ps"), t.login("pb")
    s.ok("join", {"room": room}, "5.5")
    b.ok("join", {"room": room}, "5.5")
    rids = []
    for batch in range(4):
        data = b""
        for i in range(40):
            rid, f = s.frame_for("say", {"room": room, "text": f"p{batch}-{i}"})
            rids.append(rid)
            data += f
        s.send_raw(data)
        if batch == 1:
            pid = b.send_req("part", {"room": room})
    pr = b.wait_reply(pid, section="5.6")
    for r in rids:
        s.wait_reply(r, section="5.3")
    settle(b)
    idx = next(i for i, (_, k, o) in enumerate(b.log) if o is pr)
    late = [o for (_, k, o) in b.log[idx:] if k == "event" and o.get("room") == room]
    expect(not late, "7.6", f"{len(late)} event(s) of the room arrived after the part reply: {short(late[:2])}")


@check("order.same_room_order_for_all")
def c_same_order(t):
    room = t.room("so")
    s1, s2, o1, o2, x = t.login("s1"), t.login("s2"), t.login("o1"), t.login("o2"), t.login("ox")
    for c in (s1, s2, o1, o2):
        c.ok("join", {"room": room}, "5.5")
    m1, m2 = len(o1.events), len(o2.events)
    r1, r2 = [], []
    d1 = b"".join(s1.frame_for("say", {"room": room, "text": f"a{i}"})[1] for i in range(40))
    d2 = b"".join(s2.frame_for("say", {"room": room, "text": f"b{i}"})[1] for i in range(40))
    s1.send_raw(d1[: len(d1) // 2])
    s2.send_raw(d2[: len(d2) // 2])
    xj = x.send_req("join", {"room": room})
    s1.send_raw(d1[len(d1) // 2:])
    xp = x.send_req("part", {"room": room})
    s2.send_raw(d2[len(d2) // 2:])
    x.wait_reply(xj, section="5.5")
    x.wait_reply(xp, section="5.6")
    for s in (s1, s2):
        s.pump_until(lambda: len(s.replies) >= 1 + 1 + 40, REPLY_TIMEOUT)

    # x's join and part are kept by who they name, x: a batched join also names whoever arrived
    # with x, and an arrival of the same batch (o2, possibly) is told only of those after it
    # (section 7.10), so the other names may differ between observers; the order may not.
    def seq(o, m):
        return [(e["type"], e.get("id")) for e in o.events[m:]
                if e.get("room") == room and (e["type"] == "message" or x.name in e.get("users", ()))]
    for o, m in ((o1, m1), (o2, m2)):
        o.pump_until(lambda: len(seq(o, m)) >= 82, EVENT_TIMEOUT)
    q1, q2 = seq(o1, m1), seq(o2, m2)
    expect(len(q1) == 82 and len(q2) == 82, "7.6", f"observers saw {len(q1)} and {len(q2)} room events, expected 82")
    expect(q1 == q2, "7.6", "two members saw the room's events in different orders")


@check("order.welcome_first_under_load")
def c_welcome_load(t):
    s = t.login("wl")
    data = b"".join(s.frame_for("say", {"room": "lobby", "text": f"w{i}"})[1] for i in range(60))
    s.send_raw(data)
    conns = []
    for _ in range(5):
        c = t.conn()
        name = t.name("wf")
        rid = c.send_req("hello", {"versions": [1], "name": name})
        conns.append((c, rid, name))
    for c, rid, name in conns:
        r = c.wait_reply(rid, section="4.3")
        check_welcome(r, name, rid)
        expect(c.first_control is r, "4.3", f"an event preceded the Welcome: {short(c.first_control)}")
    s.pump_until(lambda: len(s.replies) >= 61, REPLY_TIMEOUT)


@check("flow.too_slow")
def c_too_slow(t):
    room = t.room("fs")
    w = t.conn("slow", rcvbuf=4096)
    wname = t.name("fw")
    rid = w.send_req("hello", {"versions": [1], "name": wname})
    check_welcome(w.wait_reply(rid, section="4.2"), wname, rid)
    w.ok("join", {"room": room}, "5.5")
    s = t.login("fs")
    s.ok("join", {"room": room}, "5.5")
    ms = len(s.events)
    text = "x" * 4000
    start = time.monotonic()
    sent = 0

    def found():
        return next((e for e in s.events[ms:] if e["type"] == "part" and e.get("room") == room), None)
    while not found() and time.monotonic() - start < 10 and sent < 12000:
        data = b"".join(s.frame_for("say", {"room": room, "text": text})[1] for _ in range(50))
        sent += 50
        if not s.send_raw(data):
            fail("9", f"sender could not write: {s.send_error}")
        s.pump(0.002)
    ev = found()
    expect(ev is not None, "9", f"no part event after {sent} messages of 4,000 bytes to a client that does not read")
    expect(ev == {"type": "part", "room": room, "users": [wname], "reason": "too_slow"}, "9", f"part event {short(ev)}")
    ev = s.wait_event(lambda e: e["type"] == "part" and e.get("room") == "lobby" and wname in e.get("users", []), start=ms)
    expect(ev is not None and ev["reason"] == "too_slow", "9", f"lobby part event {short(ev)}")
    w.pump_until(lambda: w.eof, 5.0)
    expect(not w.problems, "9", f"the slow client saw broken framing: {w.problems[:2]}")
    expect(w.bye is not None, "9", "the slow client (reading at once) got no bye" + w.bye_info())
    expect(w.bye["code"] == "too_slow", "9", f"bye {short(w.bye)}")
    expect(w.eof, "12.2", "connection not closed after bye too_slow")
    expect(not w.frames_after_bye, "7.5", "frames followed the bye")
    s.pump_until(lambda: len(s.replies) >= 3 + sent, 5.0)


# --- whole-run checks, over every connection of the main thread ---------------------------------

def final_checks(ctx):
    results = []
    conns = [c for c, bg in ctx.all_conns if not bg]

    # message ids strictly increase per client (§7.1)
    err = None
    for c in conns:
        ids = [(e["id"], e["ts"]) for e in c.events if e["type"] in ("message", "private") and is_u64(e.get("id"))]
        for (i1, t1), (i2, t2) in zip(ids, ids[1:]):
            if not i2 > i1:
                err = f"[{c.label}] message id {i2} after {i1}"
            elif t2 < t1 and err is None:
                err = f"[{c.label}] ts {t2} after {t1} (ids {i1}, {i2}; clock set back?)"
        if err:
            break
    results.append(("order.message_ids_increasing_everywhere", err and f"{err} (§7.1)"))

    # the Welcome is the first control message on every signed-in connection (§4.3)
    err = None
    for c in conns:
        if c.hello_id is not None and c.welcome is not None and c.first_control is not None:
            fc = c.first_control
            if not (fc.get("type") == "ok" and fc.get("id") == c.hello_id):
                err = f"[{c.label}] first control message {short(fc)}"
                break
    results.append(("hello.welcome_first_everywhere", err and f"{err} (§4.3)"))

    # every control message is well formed; events have their documented fields (§3, §7)
    err = None
    for c in conns:
        if c.problems:
            err = f"[{c.label}] {c.problems[0]}"
            break
        for e in c.events:
            try:
                check_event_shape(e, "7")
            except CheckFail as ex:
                err = f"[{c.label}] {ex}"
                break
        if err:
            break
    results.append(("events.well_formed_everywhere", err and (err if "§" in err else err + " (§3)")))

    # compact JSON, fields in the documented order (§3.1)
    err = None
    for c in conns:
        for payload, obj, rtype in c.raw:
            order = None
            t = obj.get("type")
            if t == "ok":
                order = ORDER_OK
            elif t == "error":
                order = ORDER_ERROR
            elif t in ORDER_EVENT:
                order = ORDER_EVENT[t]
            if order and list(obj) != order:
                err = f"[{c.label}] fields {list(obj)}, documented order {order}: {short(obj)}"
                break
            if t == "ok" and isinstance(obj.get("result"), dict):
                res = obj["result"]
                rorder = ORDER_RESULT.get(rtype)
                if rtype == "users":  # §5.8: room only when asked, more only when true
                    rorder = ((["room"] if "room" in res else []) + ["users", "count"]
                              + (["more"] if "more" in res else []))
                if rorder is not None and set(res) == set(rorder) and list(res) != rorder:
                    err = f"[{c.label}] {rtype} result fields {list(res)}, documented order {rorder}"
                    break
                if rtype == "rooms":
                    for ent in res.get("rooms", []):
                        if isinstance(ent, dict) and list(ent) != ["name", "members", "joined"]:
                            err = f"[{c.label}] rooms entry fields {list(ent)}"
                            break
            try:
                ascii_plain = payload.decode("ascii")
            except UnicodeDecodeError:
                ascii_plain = None
            if ascii_plain is not None and "\\" not in ascii_plain:
                if encode_json(obj) != payload:
                    err = f"[{c.label}] not compact JSON: {payload[:120]!r}"
                    break
        if err:
            break
    results.append(("json.compact_documented_field_order", err and f"{err} (§3.1)"))
    return results


# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------

class Runner:
    def __init__(self, ctx, only=None):
        self.ctx = ctx
        self.lock = threading.Lock()
        self.failures = 0
        self.done = set()
        self.only = only

    def report(self, name, error, skip=None):
        with self.lock:
            self.done.add(name)
            if skip:
                print(f"skip {name}: {skip}", flush=True)
            elif error:
                self.failures += 1
                print(f"FAIL {name}: {error}", flush=True)
            else:
                print(f"ok   {name}", flush=True)

    def run_one(self, name, func, background):
        scope = Scope(self.ctx, background)
        error = skip = None
        try:
            func(scope)
        except CheckFail as e:
            error = str(e)
        except Skip as e:
            skip = str(e)
        except Exception as e:  # a crash in a check is a failure of that check
            error = f"unexpected {type(e).__name__}: {e} ({traceback.format_exc(limit=3).splitlines()[-3].strip()})"
        finally:
            scope.close()
        self.report(name, error, skip)


def main():
    ap = argparse.ArgumentParser(description="Parley protocol v1 conformance checks (docs/protocol.md)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--only", help="run only checks whose name contains this text")
    args = ap.parse_args()
    if not 1 <= args.port <= 65535:
        ap.error("--port must be 1 to 65535")

    ctx = Ctx(args.host, args.port)
    try:
        socket.create_connection((args.host, args.port), timeout=IO_TIMEOUT).close()
    except OSError as e:
        print(f"FAIL connect: cannot connect to {args.host}:{args.port}: {e}", flush=True)
        sys.exit(1)
    runner = Runner(ctx)
    checks = [c for c in CHECKS if not args.only or args.only in c[0]]

    def watchdog():
        with runner.lock:
            for name, _, _ in checks:
                if name not in runner.done:
                    print(f"FAIL {name}: did not finish within {WATCHDOG:.0f}s (whole-run limit)", flush=True)
        os._exit(1)
    wd = threading.Timer(WATCHDOG, watchdog)
    wd.daemon = True
    wd.start()

    threads = []
    for name, func, bg in checks:
        if bg:
            th = threading.Thread(target=runner.run_one, args=(name, func, True), daemon=True)
            th.start()
            threads.append(th)
    for name, func, bg in checks:
        if not bg:
            runner.run_one(name, func, False)
    if not args.only:
        for name, error in final_checks(ctx):
            runner.report(name, error)
    for th in threads:
        th.join(timeout=max(0.1, WATCHDOG - 5 - (time.monotonic() - START)))
    wd.cancel()
    for c, _ in ctx.all_conns:
        c.close()
    with runner.lock:
        missing = [n for n, _, _ in checks if n not in runner.done]
    for n in missing:
        runner.report(n, "did not finish in time")
    print(f"{'FAILED' if runner.failures else 'PASSED'}: {runner.failures} failure(s), "
          f"{len(runner.done) - runner.failures} other check(s)", flush=True)
    sys.exit(1 if runner.failures else 0)


START = time.monotonic()

if __name__ == "__main__":
    main()
