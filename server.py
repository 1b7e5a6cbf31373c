#!/usr/bin/env python3
"""server.py: an asyncio HTTP/1.1 server, a small web framework, and the site it serves.

One file, the Python standard library only (3.10 to 3.14).

Run the site::

    python3 server.py                     # http://127.0.0.1:8000, data in ./data
    python3 server.py --help              # every option
    python3 server.py messages [--csv]    # the contact messages, newest first
    python3 server.py --version           # which one this is

Use it as a framework::

    import server
    app = server.App()

    @app.route('/hello/<name>')
    def hello(request, name):
        return f'Hello, {server.escape(name)}!'

    app.run(port=8000)

The file reads top to bottom; ``grep -n '^# ===' server.py`` is its table of contents.
"""

import signal

if __name__ == '__main__':
    # Ctrl+C while the server starts ends it at once and quietly, as a signal ends any
    # program, instead of a KeyboardInterrupt traceback from whichever import or startup step
    # it lands in. serve() takes SIGINT over once it listens; nothing started is left behind
    # (the data folder's lock goes with the process, SQLite rolls back what it did not commit).
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import argparse
import ast
import asyncio
import base64
import binascii
import collections
import collections.abc
import concurrent.futures
import contextlib
import contextvars
import csv
import datetime
import decimal
import email.headerregistry
import email.message
import email.utils
import enum
import errno
import functools
import getpass
import gzip
import hashlib
import hmac
import html
import http
import inspect
import ipaddress
import itertools
import json
import logging
import mimetypes
import os
import queue
import re
import secrets
import select
import shutil
import smtplib
import socket
import sqlite3
import ssl
import stringprep
import struct
import subprocess
import sys
import threading
import time
import types
import unicodedata
import urllib.parse
import weakref

try:
    import fcntl
except ImportError:      # Windows: no flock, so one server per data folder is the owner's care
    fcntl = None

__version__ = '0.1.0'
__all__ = [
    'App', 'Request', 'Response', 'HTTPError', 'BadRequestKeyError', 'Headers', 'UploadedFile', 'Database',
    'abort', 'redirect', 'render', 'url_for', 'escape', 'Config', 'main',
]

log = logging.getLogger('server')
access_log = logging.getLogger('server.access')

# === 1. Limits, config and logging ===
# Every limit maps to exactly one status. Precedents: nginx, aiohttp, h11.

#: The data folder and its uploads: messages, e-mail and IP addresses, for the server's user only.
DATA_DIR_MODE = 0o700
#: The database files (app.db, -wal, -shm) and the data folder's lock: the server's user's alone.
DATA_FILE_MODE = 0o600
#: Longest request line; longer -> 414 (nginx large_client_header_buffers 8k, aiohttp 8190).
MAX_REQUEST_LINE_BYTES = 8192
#: Largest header section, request line included; larger -> 431.
MAX_HEADER_BYTES = 64 * 1024
#: Most header fields in one request; more -> 431 (aiohttp allows 128, Apache 100).
MAX_HEADER_COUNT = 100
# A buffer up to this size is searched for a whole head by one regular expression; a
# larger one (pipelined requests, a body) is searched for the blank line first.
QUICK_HEAD_BYTES = 4096
PIPELINE_ROUNDS = 16                 # pipelined requests of one connection answered in one turn
CORK_BYTES = 16 * 1024               # writes up to this size are gathered for pipelined answers
#: Default body limit for forms and JSON; larger -> 413 (Django's DATA_UPLOAD_MAX_MEMORY_SIZE is 2.5 MB).
MAX_BODY_BYTES = 1024 * 1024
#: Body limit of upload routes; larger -> 413. nginx.conf's client_max_body_size matches it.
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
#: Longest line of a chunked body (a chunk size with its extensions, a trailer field), its
#: CR included; longer -> 400.
MAX_CHUNK_LINE_BYTES = 4096
#: Most parts in one multipart body; more -> 413.
MAX_MULTIPART_PARTS = 100
#: Largest non-file multipart field; larger -> 413.
MAX_FIELD_BYTES = 64 * 1024
#: Largest header block of one multipart part; larger -> 413.
MAX_PART_HEADER_BYTES = 8 * 1024
#: Largest urlencoded form parsed on the event loop; a larger one is parsed in a thread, so
#: decoding a big form never holds up other clients' requests.
FORM_ON_LOOP_BYTES = 16 * 1024
#: A body the handler left unread is discarded up to this size to keep the connection; past it we close.
MAX_DRAIN_BYTES = 256 * 1024
#: Bytes buffered ahead of the application (pipelined requests or body) before we stop reading.
READ_HIGH_WATER_BYTES = 256 * 1024
#: The request head must arrive within this many seconds of its first byte (slowloris) -> 408.
HEADER_TIMEOUT_S = 10.0
#: A request body may stall at most this long between two reads -> 408.
BODY_TIMEOUT_S = 30.0
#: A body must also arrive at this average rate, after BODY_RATE_GRACE_S, or it is cut off
#: with a 408: one byte just before each stall deadline would otherwise hold a connection
#: for as long as the body is long (Apache mod_reqtimeout's MinRate=500; nginx bounds only
#: the gap between two reads).
MIN_BODY_RATE_BYTES_S = 500
#: The time a body gets before MIN_BODY_RATE_BYTES_S counts (mod_reqtimeout's body=20).
BODY_RATE_GRACE_S = 30.0
#: An idle keep-alive connection is closed after this long (nginx keepalive_timeout is 75 s, 5 s is Apache's).
KEEPALIVE_TIMEOUT_S = 5.0
#: A client that reads none of its response for this long is cut off.
WRITE_TIMEOUT_S = 30.0
#: A large file goes out in sendfile steps (1 MiB, up to 4 MiB for a fast client); a step may
#: take as long as this rate allows, between WRITE_TIMEOUT_S and four times that.
SENDFILE_MIN_RATE = 8 * 1024
#: How often the reaper checks every connection's deadline.
REAPER_INTERVAL_S = 1.0
#: On SIGTERM, requests in flight get this long to finish.
SHUTDOWN_GRACE_S = 10.0
#: Files up to this size are served from memory, revalidated with stat() at most once a second.
STATIC_CACHE_FILE_BYTES = 256 * 1024
#: Total bytes of the in-memory static cache.
STATIC_CACHE_BYTES = 32 * 1024 * 1024
#: Files larger than this are sent with sendfile or in chunks read in a thread.
STATIC_CHUNK_BYTES = 256 * 1024
#: Sessions expire after this many idle seconds (sliding).
SESSION_LIFETIME_S = 14 * 24 * 3600
#: The session cookie of a visitor who has only looked at a form (an id for its CSRF token,
#: no row) lasts this long, renewed each time a form is shown again.
ANON_SESSION_LIFETIME_S = 2 * 3600
#: SQLite waits this long for a lock held by another process before giving up -> 503.
DB_BUSY_TIMEOUT_MS = 5000
#: Seconds to reach and sign in to PostgreSQL (libpq's connect_timeout; the URL may set it).
PG_CONNECT_TIMEOUT_S = 5.0
#: Longest a statement may run on PostgreSQL (its statement_timeout); longer -> 503.
PG_STATEMENT_TIMEOUT_MS = 30000
#: Connections to PostgreSQL each process keeps, one per database thread.
PG_POOL_SIZE = 4
#: Statements each PostgreSQL connection prepares once and keeps (its server parses and plans
#: them once); any others are parsed each time they run.
PG_STATEMENTS_KEPT = 200
#: While PostgreSQL cannot be reached, requests get 503 with this Retry-After.
PG_RETRY_AFTER_S = 2


_HERE = os.path.dirname(os.path.abspath(__file__))


class Config:
    """Settings from defaults <- environment (SERVER_*) <- command line; see ``--help``."""

    FIELDS = {
        # name: (default, type, help)
        'host': ('127.0.0.1', str, 'address to listen on'),
        'port': (8000, int, 'TCP port to listen on (0 picks a free one)'),
        # Beside server.py, so `python3 /srv/site/server.py` works from any folder.
        'root': (os.path.join(_HERE, 'www'), str, 'web root: static files and templates/'),
        'data': (os.path.join(_HERE, 'data'), str, 'data folder: app.db and uploads/'),
        'workers': (1, int, 'worker processes sharing the port (SO_REUSEPORT)'),
        'certfile': ('', str, 'TLS certificate (PEM): serve HTTPS'),
        'keyfile': ('', str, 'TLS private key (PEM)'),
        'trusted_proxy': ('127.0.0.1,::1', str, 'comma-separated proxy addresses whose X-Forwarded-* headers are believed'),
        'log_level': ('info', str, 'debug, info, warning or error'),
        'access_log': (True, bool, 'write the access log'),
        'reload': (False, bool, 'restart when server.py or a template changes (development)'),
        'upload_days': (30, int, 'days an upload is kept before the site removes it (0: for ever)'),
        'database': ('sqlite:', str, 'sqlite: (app.db in the data folder) or postgresql://user:password@host:port/dbname'),
    }

    def __init__(self, **values):
        for name, (default, _, _) in self.FIELDS.items():
            setattr(self, name, values.pop(name, default))
        if values:
            raise TypeError(f'unknown settings: {", ".join(values)}')

    @classmethod
    def from_env(cls, environ=None, **defaults):
        """The given defaults (else FIELDS') overridden by SERVER_HOST, SERVER_PORT, ...
        (booleans: 1/0, true/false)."""
        environ = os.environ if environ is None else environ
        values = dict(defaults)
        for name, (default, kind, _) in cls.FIELDS.items():
            raw = environ.get('SERVER_' + name.upper())
            if raw is None or raw == '':
                continue
            if kind is bool:
                if raw.lower() not in ('1', '0', 'true', 'false', 'yes', 'no', 'on', 'off'):
                    raise ValueError(f'SERVER_{name.upper()}: expected 1 or 0, got {raw!r}')
                values[name] = raw.lower() in ('1', 'true', 'yes', 'on')
            elif kind is int:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise ValueError(f'SERVER_{name.upper()}: expected a number, got {raw!r}') from None
            else:
                values[name] = raw
        return cls(**values)


class StartupError(Exception):
    """Why the server cannot start, as one line naming the culprit and the fix: the input
    that is wrong (a file, a folder, a port) or the world that is (a port in use). Every
    startup check raises it; main() prints it and exits ``exit_status``."""

    exit_status = 1


class ConfigError(StartupError):
    """A flag's value that cannot work on any machine (a bad flag); main() prints it on one
    line and exits 2."""

    exit_status = 2


_CONTROL_CHARS_RE = re.compile(r'[^\x20-\x7e]|["\\]')


def log_escape(text):
    """Escape controls, quotes and backslashes as nginx does (\\xHH), so a log line stays one line."""
    text = str(text)
    if text.isascii() and text.isprintable() and '"' not in text and '\\' not in text:
        return text            # the common case, without a regex pass
    return _CONTROL_CHARS_RE.sub(_hex_escape, text)



def _hex_escape(m):
    code = ord(m.group())
    return f'\\x{code:02X}' if code < 256 else m.group().encode('unicode_escape').decode('ascii')


def configure_logging(level='info'):
    """Errors and notices to stderr with a timestamp; the access log to stdout, one line each."""
    numeric = getattr(logging, str(level).upper(), None)
    if not isinstance(numeric, int):
        raise ConfigError(f'unknown log level {level!r}: use debug, info, warning or error')
    root = logging.getLogger()
    if not any(getattr(h, '_server_py', False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
        handler._server_py = True
        root.addHandler(handler)
        access = logging.StreamHandler(sys.stdout)
        access.setFormatter(logging.Formatter('%(message)s'))
        access._server_py = True
        access_log.addHandler(access)
        access_log.propagate = False
    root.setLevel(numeric)


# === 2. HTTP errors ===

class HTTPError(Exception):
    """An error that is also a response: ``raise HTTPError(404, 'no such page')``.

    ``close=True`` makes the connection close after the answer (framing errors).
    """

    def __init__(self, status, detail='', headers=None, close=False):
        super().__init__(status, detail)
        self.status = int(status)
        self.detail = detail
        self.headers = dict(headers or {})
        self.close = close

    @property
    def reason(self):
        return reason_phrase(self.status)

    def __str__(self):
        return f'{self.status} {self.reason}' + (f': {self.detail}' if self.detail else '')


class BadRequestKeyError(HTTPError, KeyError):
    """A field the client did not send (``request.form['x']``, ``.files``, ``.query``): a 400.

    Still a KeyError, so ``except KeyError`` around such a lookup works as with any dict;
    ``args[0]`` is the key. The body names the key, which is the app's own text, escaped.
    """

    def __init__(self, key):
        super().__init__(400, f'missing field "{log_escape(key)}"')
        self.args = (key,)
        self.key = key


class ClientDisconnected(ConnectionError):
    """The client went away while its request was read or answered (nothing to answer)."""


def reason_phrase(status):
    return _REASONS.get(status, 'Unknown')


_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


def _too_large(limit):
    size = f'{limit // (1024 * 1024)} MB' if limit >= 1024 * 1024 else f'{limit // 1024} KB'
    return f'The request is larger than the {size} limit.'


def abort(status, detail=''):
    """Stop handling the request with an error status: ``abort(403, 'not yours')``."""
    raise HTTPError(status, detail)


# === 3. HTTP/1.1 parsing (pure: bytes in, values out, no I/O) ===
# RFC 9112 section 2-7 and RFC 9110. Strictness defends against request smuggling:
# ambiguity is refused, never guessed at.

# The grammar, written once from the RFCs' ABNF as regular-expression text and composed
# below into every expression the parser uses: over bytes for one line at a time, and over
# a whole head decoded as latin-1 (one character a byte, so obs-text stays one character).
# RFC 9110 5.6.2: token = 1*tchar
TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9112 3.2: request-target. Any run of visible ASCII (VCHAR) here; which of the four
# forms it is, is decided after (frame_request).
REQUEST_TARGET = r'[\x21-\x7e]+'
# RFC 9112 2.3: HTTP-version = HTTP-name "/" DIGIT "." DIGIT. A longer number is still
# recognisably a version (505, not 400).
HTTP_VERSION = r'HTTP/[0-9]\.[0-9]'
ANY_HTTP_VERSION = r'HTTP/[0-9]+\.[0-9]+'
# RFC 9110 5.5: field-vchar = VCHAR / obs-text; field-content adds SP and HTAB between
# them. Everything else, CR, LF and NUL among them, is refused (RFC 9110 5.5, 9112 5).
FIELD_VCHAR = r'[^\x00-\x20\x7f]'
FIELD_CHAR = r'[^\x00-\x08\x0a-\x1f\x7f]'
# RFC 9110 5.6.3: OWS = *( SP / HTAB ). The value may not start with either, so the
# whitespace before it is unambiguous and a failing match backtracks in linear time.
OWS = r'[ \t]*'
FIELD_VALUE = '(?:' + FIELD_VCHAR + FIELD_CHAR + '*)?'
# RFC 9112 2.2: lines end in CRLF; a bare LF is accepted in the head, never a bare CR.
EOL = r'\r?\n'
# RFC 9112 7.1: chunk-size = 1*HEXDIG; extensions follow a ';' and are ignored, but may
# hold no control characters, as a field value may not.
CHUNK_SIZE = '[0-9A-Fa-f]+'


def _bytes_re(text):
    return re.compile(text.encode('latin-1'))


# RFC 9112 3: request-line = method SP request-target SP HTTP-version
_REQUEST_LINE_RE = _bytes_re(f'({TOKEN}) ({REQUEST_TARGET}) ({HTTP_VERSION})')
_VERSION_RE = _bytes_re(ANY_HTTP_VERSION)
_TARGET_RE = _bytes_re(REQUEST_TARGET)
_TOKEN_RE = _bytes_re(TOKEN)
_CONTENT_LENGTH_RE = _bytes_re('[0-9]+')        # RFC 9110 8.6: 1*DIGIT
# RFC 9112 5: field-line = field-name ":" OWS field-value OWS (an optional CR before the
# LF it was split at; trailing OWS is taken off after).
_FIELD_LINE_RE = _bytes_re(rf'({TOKEN}):{OWS}({FIELD_VALUE})\r?')
# RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name ... ): whitespace after the
# size only ever comes before a ';'. '3 ' alone is refused, as strict parsers do.
_CHUNK_SIZE_RE = _bytes_re(f'({CHUNK_SIZE})({OWS};{FIELD_CHAR}*)?')
# RFC 9112 2.1: HTTP-message = start-line CRLF *( field-line CRLF ) CRLF, for the two
# versions we speak. Only the field block is captured: OWS and the value merge into one
# repeat of FIELD_CHAR (the same strings, in one loop), and every repeat is delimited by a
# character the one before it cannot contain, so a failing match is linear too.
_HEAD_RE = re.compile(rf'({TOKEN}) ({REQUEST_TARGET}) HTTP/1\.([01]){EOL}'
                      rf'((?:{TOKEN}:{FIELD_CHAR}*{EOL})*){EOL}')
_COLONS = itertools.repeat(':')      # str.partition's second argument, for map()
_OWS = ' \t'                          # RFC 9110 5.6.3: optional whitespace
_HTTP_11, _HTTP_10 = (1, 1), (1, 0)
_HTTP_VERSIONS = {_HTTP_11: 'HTTP/1.1', _HTTP_10: 'HTTP/1.0'}   # as the access log writes them
_METHODS_WITH_BODY_SEMANTICS = frozenset({'POST', 'PUT', 'PATCH', 'DELETE'})


class Headers:
    """Case-insensitive, multi-valued header fields in arrival order.

    ``headers['host']`` is the first value (KeyError if none), ``headers.get_all('cookie')``
    every one of them. The per-request code of this module looks a lowercase name up in
    ``_index`` itself, without a method call per lookup.
    """

    __slots__ = ('_items', '_index', '_block', '_shared')

    def __init__(self, items=(), _index=None):
        self._block = None     # the fields encoded for the wire, kept until they change
        self._shared = False   # the list and index belong to a cached original (_view)
        if _index is None:
            self._items = list(items.items() if isinstance(items, dict) else items)
        else:               # the parser's own list and index, used as they are
            self._items = items
            self._index = _index

    def __getattr__(self, name):
        # The index is built on first use: a response's fields are usually only written out.
        if name != '_index':
            raise AttributeError(name)
        index = self._index = _index_fields(self._items)
        return index

    def _view(self):
        """A copy that shares these fields, their index and their encoding until it changes.

        For a cache's originals (a static file's fields), which never change themselves: a
        response gets them at no cost, and a hook that adds a field copies them first.
        """
        view = Headers.__new__(Headers)
        view._items, view._index, view._block = self._items, self._index, self._block
        view._shared = True
        return view

    def _unshare(self):
        self._items = list(self._items)
        self._index = {key: list(values) for key, values in self._index.items()}
        self._shared = False

    def add(self, name, value):
        if self._shared:
            self._unshare()
        index = self._index           # built from the fields so far, before this one joins
        self._block = None
        self._items.append((name, value))
        index.setdefault(name.lower(), []).append(value)

    def __setitem__(self, name, value):
        """Replace every field called ``name`` with one."""
        if self._shared:
            self._unshare()
        key = name.lower()
        if key in self._index:
            self._items = [(n, v) for n, v in self._items if n.lower() != key]
            del self._index[key]
        self.add(name, value)

    def __delitem__(self, name):
        if self._shared:
            self._unshare()
        key = name.lower()
        self._block = None
        self._items = [(n, v) for n, v in self._items if n.lower() != key]
        self._index.pop(key, None)

    def setdefault(self, name, value):
        values = self._index.get(name.lower())
        if values:
            return values[0]
        self.add(name, value)
        return value

    def get(self, name, default=None):
        values = self._index.get(name.lower())
        return values[0] if values else default

    def get_all(self, name):
        return list(self._index.get(name.lower(), ()))

    def __getitem__(self, name):
        values = self._index.get(name.lower())
        if not values:
            raise KeyError(name)
        return values[0]

    def __contains__(self, name):
        return name.lower() in self._index

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def keys(self):
        return [name for name, _ in self._items]

    def items(self):
        return list(self._items)

    def __repr__(self):
        return f'Headers({self._items!r})'


def _index_fields(pairs):
    """(name, value) pairs -> {lowercase name: [values in order]}."""
    index = {}
    for name, value in pairs:
        key = name.lower()
        values = index.get(key)
        if values is None:
            index[key] = [value]
        else:
            values.append(value)
    return index


class RequestHead:
    """What the request line and header section said, and how the body is framed (frame_request)."""

    __slots__ = ('method', 'target', 'version', 'headers', 'path', 'query_string',
                 'keep_alive', 'body_length', 'chunked', 'expect_continue')

    def __init__(self, method, target, version, headers):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers


def find_head_end(buf, start=0):
    """Index just past the blank line ending the head in ``buf``, or -1.

    RFC 9112 2.2 lets a recipient accept a bare LF as a line terminator, so both
    CRLF CRLF and LF LF (and mixtures) end the head; bare CR is refused later.
    """
    i = buf.find(b'\r\n\r\n', start)
    if i != -1 and buf.count(b'\n', start, i) == buf.count(b'\r\n', start, i):
        return i + 4        # every line before it ends in CRLF: the usual head, found in C
    i = buf.find(b'\n', start)
    while i != -1:
        nxt = buf[i + 1:i + 2]
        if nxt == b'\n':
            return i + 2
        if nxt == b'\r' and buf[i + 2:i + 3] == b'\n':
            return i + 3
        if not nxt or (nxt == b'\r' and len(buf) == i + 2):
            return -1
        i = buf.find(b'\n', i + 1)
    return -1


def check_head_size(buf):
    """Raise 414/431 while an incomplete head in ``buf`` has already grown too large."""
    nl = buf.find(b'\n')
    if nl == -1 and len(buf) > MAX_REQUEST_LINE_BYTES:
        raise HTTPError(414, 'request line too long', close=True)
    if nl > MAX_REQUEST_LINE_BYTES:
        raise HTTPError(414, 'request line too long', close=True)
    if len(buf) > MAX_HEADER_BYTES:
        raise HTTPError(431, 'header section too large', close=True)


def parse_request_line(line):
    """``b'GET /a?b HTTP/1.1'`` -> ('GET', '/a?b', (1, 1)); 400, 414 or 505 otherwise."""
    if len(line) > MAX_REQUEST_LINE_BYTES:
        raise HTTPError(414, 'request line too long', close=True)
    m = _REQUEST_LINE_RE.fullmatch(line)
    if m is None:
        parts = line.split(b' ')
        if (len(parts) == 3 and _TOKEN_RE.fullmatch(parts[0]) and _TARGET_RE.fullmatch(parts[1])
                and _VERSION_RE.fullmatch(parts[2])):
            raise HTTPError(505, 'only HTTP/1.0 and HTTP/1.1 are supported', close=True)
        raise HTTPError(400, 'malformed request line', close=True)
    method, target, version = m.groups()
    if version == b'HTTP/1.1':
        ver = (1, 1)
    elif version == b'HTTP/1.0':
        ver = (1, 0)
    else:
        raise HTTPError(505, 'only HTTP/1.0 and HTTP/1.1 are supported', close=True)
    return method.decode('ascii'), target.decode('ascii'), ver


def parse_header_lines(lines):
    """Header field lines (bytes, without LF) -> Headers; 400 or 431 on anything odd.

    One regular expression per line (RFC 9110 5.1, 5.5; RFC 9112 5): a token name, the
    colon right after it (no whitespace before it, so no obs-fold either), then a value of
    visible characters, spaces, tabs and obs-text; an optional CR ends the line. A bare CR,
    NUL or any other control character leaves the line unmatched.
    """
    if len(lines) > MAX_HEADER_COUNT:
        raise HTTPError(431, f'more than {MAX_HEADER_COUNT} header fields', close=True)
    pairs = []
    match = _FIELD_LINE_RE.fullmatch
    for line in lines:
        m = match(line)
        if m is None:
            raise HTTPError(400, 'malformed header field', close=True)
        name, value = m.groups()
        pairs.append((name.decode('ascii'), value.rstrip(b' \t').decode('latin-1')))
    return Headers(pairs)


def parse_head(head):
    """The bytes of a complete head, its blank line included -> RequestHead.

    Raises HTTPError (400, 414, 431, 501, 505) for anything RFC 9112 does not allow.
    """
    if len(head) > MAX_HEADER_BYTES:
        raise HTTPError(431, 'header section too large', close=True)
    m = _HEAD_RE.fullmatch(head.decode('latin-1'))
    if m is not None:
        req = head_from_match(m)
        if req is not None:
            return req
    # Something is off (or too long): the line-by-line way says exactly what.
    lines = bytes(head).split(b'\n')
    # The head ends with an empty line, so the split leaves two (near) empty items at the end.
    del lines[-2:]
    line = lines[0] if lines else b''
    if line[-1:] == b'\r':
        line = line[:-1]
    req = RequestHead(*parse_request_line(line), parse_header_lines(lines[1:]))
    frame_request(req)
    return req


def head_from_match(m):
    """The RequestHead of a _HEAD_RE match, or None if it is too large for the quick way.

    _HEAD_RE checked the request line and every field line at once, so the field block is
    known good: each line is a token, a colon and a value with no CR but the one that may
    end it, so splitting it at LF and each line at its first colon picks the fields out
    without a second regular expression.
    """
    if m.end() > MAX_HEADER_BYTES or m.end(3) > MAX_REQUEST_LINE_BYTES:
        return None
    block = m.group(4)
    # Each strip takes the optional whitespace around a value and the line's end.
    if block.count('\n') > 1:
        fields = [(name, value.strip(' \t\r')) for name, _, value
                  in map(str.partition, block[:-1].split('\n'), _COLONS)]
        if len(fields) > MAX_HEADER_COUNT:
            return None
        # Most heads name each field once: the index in one comprehension, else field by field.
        index = {name.lower(): [value] for name, value in fields}
        if len(index) != len(fields):
            index = _index_fields(fields)
    elif block:
        # Host alone, as load generators and health checks send it: no comprehension at
        # all (making one costs more than the whole field).
        name, _, value = block.partition(':')
        value = value.strip(' \t\r\n')
        fields = [(name, value)]
        index = {name.lower(): [value]}
    else:
        fields, index = [], {}
    method, target, minor, _ = m.groups()
    req = RequestHead(method, target, _HTTP_11 if minor == '1' else _HTTP_10, Headers(fields, index))
    frame_request(req)
    return req


def frame_request(req):
    """Decide keep-alive, body framing and the target's path and query from the parsed
    head (RFC 9112 3, 6, 9.3); HTTPError for anything ambiguous or unsupported.

    List elements are trimmed of OWS (space and tab) only: str.strip() would also take
    latin-1's NBSP and NEL, so 'Content-Length: 5\xa0' would read as 5 here where a proxy
    in front may refuse it or read it otherwise (request smuggling).
    """
    if req.method == 'CONNECT':
        # RFC 9110 9.3.6: CONNECT asks a proxy for a tunnel, and whatever follows its head
        # is the tunnel's bytes, not a request. 501 rather than 405: no resource here
        # supports it (405 would need an Allow of methods that would), the answer the
        # router gives a method it does not know. Closing keeps those bytes unread.
        raise HTTPError(501, 'CONNECT is not supported: this is not a proxy', close=True)
    index = req.headers._index
    _frame_connection(req, index)
    _frame_body(req, index)
    expect = index.get('expect')
    req.expect_continue = False
    if expect is not None:
        if len(expect) > 1 or expect[0].strip(_OWS).lower() != '100-continue':
            raise HTTPError(417, 'only Expect: 100-continue is supported')
        # RFC 9110 10.1.1: ignore 100-continue from HTTP/1.0 clients.
        req.expect_continue = req.version == (1, 1)
    req.path, req.query_string = split_target(req.method, req.target)


def _frame_connection(req, index):
    """Keep-alive (RFC 9112 9.3) and the one Host an HTTP/1.1 request must have (RFC 9112 3.2)."""
    connection = index.get('connection')
    if connection is None:
        conn_tokens = ()
    elif len(connection) == 1 and ',' not in connection[0]:
        conn_tokens = (connection[0].strip(_OWS).lower(),)     # the usual one option
    else:
        conn_tokens = {t.strip(_OWS).lower() for v in connection for t in v.split(',')}
    hosts = index.get('host', ())
    if req.version == (1, 1):
        req.keep_alive = 'close' not in conn_tokens
        if len(hosts) != 1:
            raise HTTPError(400, 'HTTP/1.1 requires exactly one Host header', close=True)
    else:
        req.keep_alive = 'keep-alive' in conn_tokens and 'close' not in conn_tokens
        if len(hosts) > 1:
            raise HTTPError(400, 'more than one Host header', close=True)


def _frame_body(req, index):
    """The body's length from Transfer-Encoding or Content-Length (RFC 9112 6.1-6.3)."""
    te_values = index.get('transfer-encoding')
    cl_values = index.get('content-length')
    req.chunked = False
    req.body_length = 0
    if te_values:
        if cl_values:
            # RFC 9112 6.3 (3): a classic smuggling vector; refuse rather than pick one.
            raise HTTPError(400, 'both Transfer-Encoding and Content-Length', close=True)
        if req.version == (1, 0):
            # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty.
            raise HTTPError(400, 'Transfer-Encoding in an HTTP/1.0 request', close=True)
        codings = [c.strip(_OWS).lower() for v in te_values for c in v.split(',')]
        if codings[-1] != 'chunked':
            # RFC 9112 6.3 (4): without chunked last the length cannot be known: 400, close.
            raise HTTPError(400, 'Transfer-Encoding must end with chunked', close=True)
        if len(codings) > 1:
            if 'chunked' in codings[:-1]:
                raise HTTPError(400, 'chunked applied more than once', close=True)
            # RFC 9110 and 9112 6.1: a coding we do not implement.
            raise HTTPError(501, f'unsupported transfer coding {codings[0]!r}', close=True)
        req.chunked = True
        req.body_length = None
    elif cl_values:
        lengths = {v.strip(_OWS) for value in cl_values for v in value.split(',')}
        if len(lengths) != 1:
            raise HTTPError(400, 'conflicting Content-Length values', close=True)
        raw = lengths.pop()
        if not _CONTENT_LENGTH_RE.fullmatch(raw.encode('latin-1')):
            raise HTTPError(400, 'Content-Length must be digits', close=True)
        if len(raw) > 18:
            raise HTTPError(413, 'Content-Length beyond any limit', close=True)
        req.body_length = int(raw)


def split_target(method, target):
    """A request-target's (path, query) by its form (RFC 9112 3.2): origin-form, asterisk-form
    (OPTIONS only) or absolute-form; authority-form is a proxy's, refused."""
    if target.startswith('/'):
        path, _, query = target.partition('?')
    elif target == '*':
        if method != 'OPTIONS':
            raise HTTPError(400, "'*' is only valid with OPTIONS")
        path, query = '*', ''
    elif target.lower().startswith(('http://', 'https://')):
        # RFC 9112 3.2.2: absolute-form; the host in the target wins over Host.
        try:
            parts = urllib.parse.urlsplit(target)
        except ValueError:
            raise HTTPError(400, 'malformed absolute-form target', close=True) from None
        if not parts.netloc:
            raise HTTPError(400, 'absolute-form target without a host')
        path, query = parts.path or '/', parts.query
    else:
        raise HTTPError(400, 'unsupported request target')
    if '#' in path or '#' in query:
        raise HTTPError(400, 'fragment in request target')
    return path, query


class ChunkedDecoder:
    """Incremental decoder of a chunked body (RFC 9112 7.1).

    ``feed(data)`` returns the decoded bytes it could produce; ``done`` turns true after
    the last chunk and trailers, and ``leftover`` then holds the bytes that followed
    (the next pipelined request). Trailers are checked and dropped. Errors raise 400.
    """

    __slots__ = ('_buf', '_state', '_remaining', 'done', 'leftover', '_trailer_bytes', '_chunks',
                 '_decoded')

    def __init__(self):
        self._chunks = 0
        self._decoded = 0
        self._buf = b''
        self._state = 'size'
        self._remaining = 0
        self.done = False
        self.leftover = b''
        self._trailer_bytes = 0

    def feed(self, data):
        buf = self._buf + data if self._buf else data
        out = []
        pos = 0
        n = len(buf)
        while pos < n and not self.done:
            state = self._state
            if state == 'data':
                take = min(self._remaining, n - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = 'data_end'
                continue
            if state == 'data_end':
                # RFC 9112 7.1: the data is followed by CRLF, exactly; a lone LF or CR here
                # ends the chunk for us and not for a front end that counts otherwise.
                end = buf[pos:pos + 2]
                if end != b'\r\n':
                    if end == b'\r' and pos + 1 == n:
                        break             # its LF is still on the way
                    raise HTTPError(400, 'chunk data not followed by CRLF', close=True)
                pos += 2
                self._state = 'size'
                continue
            nl = buf.find(b'\n', pos)
            # The line limit holds however TCP splits the line: checked before its LF
            # arrives and after.
            if nl == -1:
                if n - pos > MAX_CHUNK_LINE_BYTES:
                    raise HTTPError(400, 'chunk line too long', close=True)
                break
            if nl - pos > MAX_CHUNK_LINE_BYTES:
                raise HTTPError(400, 'chunk line too long', close=True)
            # Unlike the head's lines (RFC 9112 2.2), every line of a chunked body ends in
            # CRLF: a front end that does not re-frame bodies may read a bare LF otherwise
            # (one-byte-terminator smuggling).
            if nl == pos or buf[nl - 1] != 13:
                raise HTTPError(400, 'chunk line not ended by CRLF', close=True)
            line = buf[pos:nl - 1]
            pos = nl + 1
            if b'\r' in line:
                raise HTTPError(400, 'bare CR in chunked body', close=True)
            if state == 'size':
                m = _CHUNK_SIZE_RE.fullmatch(line)
                if m is None or len(m.group(1)) > 16:
                    raise HTTPError(400, 'malformed chunk size', close=True)
                size = int(m.group(1), 16)
                self._chunks += 1
                if self._chunks > 1024 and self._decoded < self._chunks * 256:
                    # Thousands of tiny chunks cost far more to decode than their bytes.
                    raise HTTPError(400, 'too many tiny chunks', close=True)
                self._decoded += size
                if size == 0:
                    self._state = 'trailer'
                else:
                    self._remaining = size
                    self._state = 'data'
            else:  # trailer section: field lines until an empty one
                if not line:
                    self.done = True
                else:
                    # The head's grammar (no obs-fold, no controls): a request line or any
                    # other stray text here is not a trailer a front end would agree on.
                    if _FIELD_LINE_RE.fullmatch(line) is None:
                        raise HTTPError(400, 'malformed trailer field', close=True)
                    self._trailer_bytes += len(line)
                    if self._trailer_bytes > MAX_HEADER_BYTES:
                        raise HTTPError(431, 'trailer section too large', close=True)
        if self.done:
            self.leftover = buf[pos:]
            self._buf = b''
        else:
            self._buf = buf[pos:]
        return b''.join(out)


# A '%' not followed by two hex digits is kept as it is, as urllib.parse.unquote keeps it.
_LONE_PERCENT_RE = re.compile(rb'%(?![0-9A-Fa-f]{2})')
# Each byte as '%', 'h' (hex digit) or '.': a lone '%' is then found by counting, with no
# per-escape work (browsers send every non-ASCII byte as an escape).
_PERCENT_CLASSES = bytes(b if b == 0x25 else 0x68 if b in b'0123456789ABCDEFabcdef' else 0x2E
                         for b in range(256))
_PERCENT_AS_EQUALS = bytes.maketrans(b'%', b'=')
#: Bytes of one form field percent-decoded in one step: a thread decoding a large form
#: gives the GIL back to the event loop between steps.
FORM_DECODE_STEP_BYTES = 64 * 1024


def _percent_decode(raw):
    """``urllib.parse.unquote_to_bytes(raw)``, in C calls whatever the number of escapes."""
    classes = raw.translate(_PERCENT_CLASSES)
    if classes.count(b'%') != classes.count(b'%hh'):
        raw = _LONE_PERCENT_RE.sub(b'%25', raw)
    # Quoted-printable (RFC 2045 6.7) writes a byte as '=HH': with the form's own '=' written
    # so too, every '=' starts an escape and none of that format's soft line breaks can occur.
    return binascii.a2b_qp(raw.replace(b'=', b'=3D').translate(_PERCENT_AS_EQUALS))


def _unquote_utf8(text):
    """``urllib.parse.unquote(text, errors='strict')``; not UTF-8 -> UnicodeDecodeError."""
    raw = text.encode('utf-8')
    pieces, start, size = [], 0, len(raw)
    while start < size:
        end = start + FORM_DECODE_STEP_BYTES
        if end < size:
            lone = raw.find(b'%', end - 2, end)      # a step never cuts an escape
            if lone != -1:
                end = lone
        pieces.append(_percent_decode(raw[start:end]))
        start = end
    return b''.join(pieces).decode('utf-8')


def parse_query(query, max_fields=1000):
    """Decode ``a=1&a=2&b`` into a MultiDict (UTF-8, '+' is space). Bad UTF-8 -> 400.

    What ``urllib.parse.parse_qsl(keep_blank_values=True, errors='strict')`` gives: most
    queries and forms have nothing to unquote, a part is unquoted only when it has a '%',
    and its escapes are decoded in C calls however many there are (_unquote_utf8), so a
    large form parsed in a thread never holds the GIL for long.
    """
    if query and query.count('&') >= max_fields:
        raise HTTPError(413, 'too many fields')
    coded = '%' in query
    if '+' in query:
        query = query.replace('+', ' ')
    pairs = []
    for field in query.split('&'):
        if field:
            name, _, value = field.partition('=')
            if coded:
                try:
                    if '%' in name:
                        name = _unquote_utf8(name)
                    if '%' in value:
                        value = _unquote_utf8(value)
                except UnicodeDecodeError:
                    raise HTTPError(400, 'query or form is not valid UTF-8') from None
            pairs.append((name, value))
    return MultiDict(pairs)


class MultiDict(dict):
    """A dict of first values that also keeps every value: ``form['a']``, ``form.getlist('a')``.

    A missing key raises BadRequestKeyError (a KeyError that answers 400); ``get`` gives None.
    """

    def __init__(self, pairs=()):
        super().__init__()
        lists = self._lists = {}
        for key, value in pairs:
            values = lists.get(key)
            if values is None:
                lists[key] = [value]
                dict.__setitem__(self, key, value)
            else:
                values.append(value)

    def add(self, key, value):
        self._lists.setdefault(key, []).append(value)
        if key not in self:
            dict.__setitem__(self, key, value)

    def __missing__(self, key):
        # dict.__getitem__ calls it only for a missing key: lookups that hit cost nothing more.
        raise BadRequestKeyError(key)

    def getlist(self, key):
        return list(self._lists.get(key, ()))

    def __setitem__(self, key, value):
        self._lists[key] = [value]
        dict.__setitem__(self, key, value)

    def __delitem__(self, key):
        del self._lists[key]
        dict.__delitem__(self, key)

    def allitems(self):
        return [(k, v) for k, values in self._lists.items() for v in values]


def parse_cookies(header_values):
    """Cookie header values -> dict (RFC 6265 5.4); malformed pairs are skipped, first wins."""
    cookies = {}
    for header in header_values:
        for pair in header.split(';'):
            name, eq, value = pair.partition('=')
            name = name.strip()
            if not eq or not name:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            cookies.setdefault(name, value)
    return cookies


# RFC 9110 5.6.6: parameters are ';' name '=' (token or quoted-string). One pass of one
# regex, linear in the input (quoted strings may hold ';').
_PARAM_RE = re.compile(r';\s*([^=;\s]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))')
_QUOTED_PAIR_RE = re.compile(r'\\(.)')


def parse_content_type(value):
    """``'text/html; charset="utf-8"'`` -> ('text/html', {'charset': 'utf-8'})."""
    if not value:
        return '', {}
    mime, semi, rest = value.partition(';')
    params = {}
    for m in _PARAM_RE.finditer(semi + rest):
        quoted = m.group(2)
        params[m.group(1).lower()] = (_QUOTED_PAIR_RE.sub(r'\1', quoted) if quoted is not None
                                      else m.group(3).strip())
    return mime.strip().lower(), params


def parse_range(header, size):
    """One ``bytes=`` range against a resource of ``size`` bytes (RFC 9110 14.2).

    Returns (start, end_inclusive), None when the header should be ignored (malformed, not
    bytes, or several ranges: we answer those with the whole resource, which RFC 9110
    allows), or raises HTTPError 416 when it cannot be satisfied.
    """
    unit, eq, spec = header.partition('=')
    if not eq or unit.strip().lower() != 'bytes' or ',' in spec:
        return None
    first, dash, last = spec.strip().partition('-')
    if not dash or not (first.isdigit() or first == '') or not (last.isdigit() or last == ''):
        return None
    if not first.isascii() or not last.isascii() or len(first) > 18 or len(last) > 18:
        return None
    if first == '':
        if last == '':
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise HTTPError(416, headers={'Content-Range': f'bytes */{size}'})
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise HTTPError(416, headers={'Content-Range': f'bytes */{size}'})
    return start, min(end, size - 1)


def http_date(timestamp):
    """A timestamp as an IMF-fixdate (RFC 9110 5.6.7)."""
    return email.utils.formatdate(timestamp, usegmt=True)


def parse_http_date(value):
    """An HTTP date (any of the three RFC 9110 forms) -> timestamp, or None."""
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    return parsed.timestamp()


def etag_matches(header, etag, weak=True):
    """Does an If-None-Match / If-Match list match ``etag``? (RFC 9110 13.1)."""
    header = header.strip()
    if header == '*':
        return True
    bare = etag[2:] if etag.startswith('W/') else etag
    for candidate in header.split(','):
        candidate = candidate.strip()
        if weak and candidate.startswith('W/'):
            candidate = candidate[2:]
        if candidate == bare and (weak or not etag.startswith('W/')):
            return True
    return False


# -- The response side: head bytes and the keep-alive decision (RFC 9112 6, 9.3) --

class _Clock:
    """The Date header and the access-log time, formatted at most once a second."""

    def __init__(self):
        self._next = 0.0       # when the current second ends
        self.date_line = b''
        self.log_time = ''

    def tick(self):
        now = time.time()
        if now >= self._next or now < self._next - 1.0:    # a new second, or the clock went back
            second = int(now)
            self._next = second + 1.0
            self.date_line = f'Date: {http_date(second)}\r\n'.encode('ascii')
            self.log_time = time.strftime('%d/%b/%Y:%H:%M:%S +0000', time.gmtime(second))
        return self.date_line


CLOCK = _Clock()
_NO_BODY_STATUSES = frozenset({204, 304})
_FRAMING_HEADERS = frozenset({'content-length', 'transfer-encoding', 'connection'})
_LENGTH_LINES = {}   # body length -> its Content-Length line: formatting bytes costs more
_STATUS_LINES = {}


def _status_line(status):
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f'HTTP/1.1 {status} {reason_phrase(status)}\r\n'.encode()
    return line


def field_block(headers):
    """An app's header fields as 'Name: value\\r\\n' bytes, or None if one would inject.

    Framing is ours alone: an app's Content-Length, Transfer-Encoding or Connection could
    desynchronise the client, so they are dropped. Each line has exactly one CR and one LF;
    more means a value carried its own (header injection). The block is kept on the
    Headers until they change, so shared fields (a content type's, a static file's) are
    encoded once.
    """
    block = headers._block
    if block is not None:
        return block
    lines = [f'{name}: {value}\r\n' for name, value in headers._items if name.lower() not in _FRAMING_HEADERS]
    text = ''.join(lines)
    if text.count('\n') != len(lines) or text.count('\r') != len(lines) or '\x00' in text:
        return None
    block = headers._block = text.encode('latin-1', 'replace')
    return block


def _frozen_fields(items):
    """Headers shared by many responses: indexed and encoded now, then only ever viewed (_view)."""
    fields = Headers(items)
    fields._index           # touching it builds the index (Headers.__getattr__)
    field_block(fields)     # stored on fields._block
    return fields


_NO_FIELDS = _frozen_fields([])     # the shared fields of a response made without any


def response_head(version, status, fields, length, keep_alive, body=b''):
    """A response's head as bytes, ``body`` appended (to send both in one write); None if
    one of the app's ``fields`` (Headers) would inject a line of its own.

    Status line, Date, the app's fields, then our framing (RFC 9112 6): Content-Length when
    the ``length`` is known, chunked for an HTTP/1.1 stream of unknown length, none for 1xx,
    204 and 304; ``Connection: close`` whenever the connection ends after it.
    """
    user = fields._block                # encoded when first written, kept until changed
    if user is None:
        user = field_block(fields)
        if user is None:
            return None
    if status in _NO_BODY_STATUSES or status < 200:
        framing = b''
    elif length is not None:
        framing = _LENGTH_LINES.get(length)
        if framing is None:
            framing = b'Content-Length: %d\r\n' % length
            if len(_LENGTH_LINES) < 4096:
                _LENGTH_LINES[length] = framing
    elif version >= (1, 1):
        framing = b'Transfer-Encoding: chunked\r\n'
    else:
        framing = b''
    if not keep_alive:
        end = b'Connection: close\r\n\r\n'
    elif version < (1, 1):
        end = b'Connection: keep-alive\r\n\r\n'
    else:
        end = b'\r\n'
    return b''.join((_STATUS_LINES.get(status) or _status_line(status), CLOCK.tick(), user,
                     framing, end, body))


def keep_alive_after(head, close, unknown_length, body_left):
    """May the connection carry another request once this answer is sent? (RFC 9112 9.3)

    ``close``: the app or the server wants it closed. ``unknown_length``: the answer is a
    stream of unknown length, which on HTTP/1.0 only the close can end. ``body_left``: None
    when the request's body was read whole, else how many of its bytes are still to come
    and be drained (-1 when that cannot be done: the body failed, its framing is chunked,
    or the client waits for a 100 Continue it was never sent, RFC 9110 10.1.1).
    """
    if close or not head.keep_alive:
        return False
    if unknown_length and head.version < (1, 1):
        return False
    return body_left is None or 0 <= body_left <= MAX_DRAIN_BYTES


# -- Content types of files: every MIME type this server adds, registered here only --

def guess_type(path):
    """The Content-Type for a file's name: text types (and JSON, SVG, XML) in UTF-8, and
    application/octet-stream for what is unknown or compressed (``.gz``)."""
    ctype, encoding = mimetypes.guess_type(path, strict=False)
    if ctype is None or encoding:
        return 'application/octet-stream'
    if ctype.startswith('text/') or ctype in _CHARSET_TYPES:
        ctype += '; charset=utf-8'
    return ctype


_CHARSET_TYPES = {'application/javascript', 'application/json', 'image/svg+xml',
                  'application/xml', 'application/manifest+json'}
mimetypes.add_type('text/javascript', '.js')
mimetypes.add_type('text/javascript', '.mjs')
mimetypes.add_type('image/svg+xml', '.svg')
mimetypes.add_type('application/manifest+json', '.webmanifest')
mimetypes.add_type('image/webp', '.webp')
mimetypes.add_type('font/woff2', '.woff2')
mimetypes.add_type('image/x-icon', '.ico')


# === 4. Forms ===
# application/x-www-form-urlencoded is parse_query's grammar over the body's text (a large
# form is parsed in a thread: Request._read_body). multipart/form-data (RFC 7578) is parsed
# incrementally: the parser is pure (bytes in, events out) and the request drives it,
# spooling file parts to disk as they arrive.

def parse_urlencoded(body, max_fields=1000):
    """An ``application/x-www-form-urlencoded`` body -> MultiDict (UTF-8, '+' is space):
    what parse_query gives for its text. Not UTF-8 -> 400; max_fields or more '&' -> 413."""
    try:
        text = body.decode('utf-8')
    except UnicodeDecodeError:
        raise HTTPError(400, 'form is not valid UTF-8') from None
    return parse_query(text, max_fields)


# Letters and digits of any script stay (a résumé keeps its accents); separators,
# controls, quotes and the like become '_'.
_SAFE_FILENAME_RE = re.compile(r'[^\w.\- ]+')


def safe_filename(name, default='file'):
    """A client's filename reduced to a harmless base name: no folders, dots or controls.

    >>> safe_filename('../../etc/pass wd.txt')
    'pass wd.txt'
    """
    name = name.replace('\\', '/').rsplit('/', 1)[-1]
    name = unicodedata.normalize('NFC', name)
    name = _SAFE_FILENAME_RE.sub('_', name).strip(' ._')
    if len(name) > 120:
        # Cut the stem, not the extension: 'a…a.pdf' stays a .pdf.
        stem, dot, ext = name.rpartition('.')
        name = stem[:119 - len(ext)] + dot + ext if dot and len(ext) <= 16 else name[:120]
        name = name.rstrip(' ._')      # the cut may have left a dot or a space at the end
    return name or default


# RFC 8187 3.2.1: the charsets of an ext-value every recipient reads. No other name a client
# sends is looked up as a codec: punycode, idna, rot13 and the like fail each in its own way.
_EXT_VALUE_CHARSETS = {'utf-8': 'utf-8', '': 'utf-8', 'iso-8859-1': 'latin-1'}


def parse_header_params(value):
    """``form-data; name="a"; filename="b.txt"`` -> ('form-data', {'name': 'a', ...})."""
    kind, params = parse_content_type(value)
    for key in ('name', 'filename'):
        # Browsers send these as raw UTF-8 (RFC 7578 4.2); header values arrive as latin-1.
        if key in params:
            with contextlib.suppress(UnicodeError):
                params[key] = params[key].encode('latin-1').decode('utf-8')
    if 'filename*' in params:
        # RFC 8187 ext-value: charset'lang'percent-encoded. One that cannot be read is
        # ignored, and the part stays a file (safe_filename names it).
        charset, _, rest = params['filename*'].partition("'")
        _, _, encoded = rest.partition("'")
        encoding = _EXT_VALUE_CHARSETS.get(charset.lower())
        if encoding is not None:
            with contextlib.suppress(UnicodeError):
                params['filename'] = urllib.parse.unquote(encoded, encoding=encoding, errors='strict')
        params.setdefault('filename', '')
    return kind, params


class MultipartParser:
    """Incremental ``multipart/form-data`` parser (RFC 7578, RFC 2046 5.1).

    ``feed(data)`` returns a list of events:
    ('part', headers)  a part begins; headers is a Headers
    ('data', bytes)    some of its body
    ('end', None)      the part ended
    and ``done`` turns true at the close delimiter. Malformed input raises HTTPError 400;
    too many parts or oversized part headers 413.
    """

    def __init__(self, boundary, max_parts=MAX_MULTIPART_PARTS):
        if not boundary or len(boundary) > 70:
            raise HTTPError(400, 'multipart boundary missing or too long')
        self._delim = b'\r\n--' + boundary.encode('latin-1')
        self._buf = b'\r\n'  # so the first delimiter matches like every other
        self._state = 'preamble'
        self._scanned = 0      # how far the part-header buffer was searched for its end
        self._parts = 0
        self._max_parts = max_parts
        self.done = False

    def feed(self, data):
        events = []
        buf = self._buf + data
        delim = self._delim
        while True:
            state = self._state
            if state == 'preamble' or state == 'body':
                i = buf.find(delim)
                if i == -1:
                    # Keep enough to recognise a delimiter split across feeds.
                    keep = len(delim)
                    if state == 'body' and len(buf) > keep:
                        events.append(('data', buf[:-keep]))
                        buf = buf[-keep:]
                    elif state == 'preamble' and len(buf) > keep:
                        buf = buf[-keep:]
                    break
                if state == 'body':
                    if i:
                        events.append(('data', buf[:i]))
                    events.append(('end', None))
                buf = buf[i + len(delim):]
                self._state = 'after_delim'
            elif state == 'after_delim':
                if len(buf) < 2:
                    break
                if buf[:2] == b'--':
                    self.done = True
                    self._state = 'epilogue'
                    buf = b''
                    break
                # transport-padding (LWSP) then CRLF
                nl = buf.find(b'\r\n')
                if nl == -1:
                    if len(buf) > 256:
                        raise HTTPError(400, 'malformed multipart delimiter line')
                    break
                if buf[:nl].strip(b' \t'):
                    raise HTTPError(400, 'malformed multipart delimiter line')
                buf = buf[nl + 2:]
                self._parts += 1
                if self._parts > self._max_parts:
                    raise HTTPError(413, f'more than {self._max_parts} multipart parts')
                self._state = 'headers'
            elif state == 'headers':
                end = buf.find(b'\r\n\r\n', self._scanned)
                if buf.startswith(b'\r\n'):
                    end, head = 0, b''
                    buf = buf[2:]
                elif end == -1:
                    if len(buf) > MAX_PART_HEADER_BYTES:
                        raise HTTPError(413, 'multipart part headers too large')
                    self._scanned = max(0, len(buf) - 3)
                    break
                else:
                    if end > MAX_PART_HEADER_BYTES:
                        raise HTTPError(413, 'multipart part headers too large')
                    head = buf[:end]
                    buf = buf[end + 4:]
                self._scanned = 0
                lines = head.split(b'\r\n') if head else []
                if any(line[:1] in (b' ', b'\t') for line in lines):
                    raise HTTPError(400, 'folded multipart header')
                headers = parse_header_lines(lines) if lines else Headers()
                events.append(('part', headers))
                self._state = 'body'
            else:  # epilogue: ignore everything
                buf = b''
                break
        self._buf = buf
        return events


class UploadedFile:
    """A file part of a multipart form, already spooled to disk under the uploads folder.

    ``filename`` is the client's name made safe, ``path`` where the bytes are, ``size``
    their count. ``save(dest)`` moves it (same filesystem) and fsyncs; files left unsaved
    are deleted when the request ends.
    """

    __slots__ = ('name', 'filename', 'content_type', 'path', 'size', '_file')

    def __init__(self, name, filename, content_type, path, file):
        self.name = name
        self.filename = filename
        self.content_type = content_type
        self.path = path
        self.size = 0
        self._file = file

    def read(self):
        """The whole file as bytes (blocking: call it from a thread or a plain def handler)."""
        with open(self.path, 'rb') as f:
            return f.read()

    def save(self, dest):
        """Move the upload to ``dest`` durably (fsync of file and folder); blocking."""
        os.replace(self.path, dest)
        self.path = dest
        fsync_dir(os.path.dirname(os.path.abspath(dest)))
        return dest

    def __repr__(self):
        return f'<UploadedFile {self.name}={self.filename!r} {self.size} bytes>'


def fsync_dir(path):
    """Make a rename or a new file in ``path`` durable (POSIX); a no-op where unsupported."""
    if not hasattr(os, 'O_DIRECTORY'):      # Windows: a folder cannot be opened, nor synced
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # EINVAL: a filesystem that cannot sync a folder (some network and FUSE ones) keeps
        # renames as well as it can. Any other error (EIO) means the rename may be lost.
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


# === 5. Request and Response ===

_current_request = contextvars.ContextVar('server_request', default=None)


class Request:
    """One HTTP request, handed to handlers as their first argument.

    ``method``, ``path`` (percent-decoded), ``query`` (MultiDict), ``headers`` (Headers),
    ``cookies``, ``client`` (the address, through a trusted proxy), ``scheme``, ``body``,
    ``form`` and ``files`` (MultiDict), ``json``, ``session`` and ``csrf_token``.
    """

    # Defaults at class level: a request sets only what it has (the hot path stays short).
    params = types.MappingProxyType({})
    route = None
    _peer_trusted = None           # the connection may know it already
    _session = None
    _session_ready = False         # true once the session cookie was looked up
    _state = None
    _body = _form = _files = _query = _cookies = None
    _cleanup = ()                  # uploads spooled for this request
    _body_read = False             # read_body() finished
    _csrf_pending = False          # a defer_body route's CSRF check waits for its body
    _bad_path = False              # the percent-decoded path is not UTF-8: a 400
    _raise_errors = False          # the test client's raise_errors: a 500's exception is raised

    def __init__(self, app, head, client, scheme='http', body_source=None):
        self.app = app
        self.method = head.method
        self.target = head.target
        self.version = head.version
        self.headers = head.headers
        self.raw_path = head.path
        self.query_string = head.query_string
        self.peer = client
        self._scheme = scheme
        self._body_source = body_source
        self._head = head
        self._json = _MISSING
        path = head.path
        if '%' in path:
            try:
                path = urllib.parse.unquote(path, encoding='utf-8', errors='strict')
            except UnicodeDecodeError:
                # Refused by App.handle, like any other error, so the app's error handlers
                # and after hooks (security headers) see it; the path stays as it came.
                self._bad_path = True
        self.path = path

    @property
    def state(self):
        """A dict for hooks and handlers to share per-request values in."""
        if self._state is None:
            self._state = {}
        return self._state

    # -- what the client said --
    @property
    def query(self):
        if self._query is None:
            self._query = parse_query(self.query_string)
        return self._query

    @property
    def cookies(self):
        if self._cookies is None:
            self._cookies = parse_cookies(self.headers.get_all('cookie'))
        return self._cookies

    @property
    def content_type(self):
        return parse_content_type(self.headers.get('content-type', ''))[0]

    @property
    def content_length(self):
        return self._head.body_length

    def _trusted(self):
        trusted = self._peer_trusted
        if trusted is None:
            trusted = self._peer_trusted = self.app.config_trusted(self.peer)
        return trusted

    @property
    def client(self):
        """The client's IP: the peer, or the last untrusted X-Forwarded-For hop behind a trusted proxy."""
        index = self.headers._index
        if ('x-real-ip' in index or 'x-forwarded-for' in index) and self._trusted():
            # X-Real-IP is set (not appended) by the proxy in front, so it is exact; else the
            # right-most X-Forwarded-For hop that is not itself a trusted proxy.
            real = self.headers.get('x-real-ip', '').strip()
            if real and _is_ip(real):
                return real
            forwarded = ','.join(self.headers.get_all('x-forwarded-for'))
            for hop in reversed([h.strip() for h in forwarded.split(',') if h.strip()]):
                if not self.app.config_trusted(hop) and _is_ip(hop):
                    return hop
        return self.peer

    @property
    def scheme(self):
        """'https' when the connection is TLS or a trusted proxy says so in X-Forwarded-Proto."""
        if self._scheme == 'http' and 'x-forwarded-proto' in self.headers._index and self._trusted():
            proto = self.headers.get('x-forwarded-proto', '').strip().lower()
            if proto in ('http', 'https'):
                return proto
        return self._scheme

    @property
    def is_secure(self):
        return self.scheme == 'https'

    @property
    def host(self):
        return self.headers.get('host', '')

    @property
    def url(self):
        return f'{self.scheme}://{self.host}{self.target if self.target.startswith("/") else self.path}'

    # -- the body --
    @property
    def body(self):
        """The request body as bytes (read before the handler ran)."""
        if self._body is None:
            if self.route is not None and self.route.stream:
                raise RuntimeError('a stream=True route reads request.stream(), not request.body')
            return b''
        return self._body

    @property
    def form(self):
        """Fields of a urlencoded or multipart form (MultiDict); empty otherwise."""
        if self._form is None:
            self._form = MultiDict()
        return self._form

    @property
    def files(self):
        """Uploaded files of a multipart form by field name (MultiDict of UploadedFile)."""
        if self._files is None:
            self._files = MultiDict()
        return self._files

    @property
    def json(self):
        """The body parsed as JSON (None when there is no body); invalid JSON -> 400."""
        if self._json is _MISSING:
            body = self.body
            if not body:
                self._json = None
            else:
                try:
                    self._json = json.loads(body)
                except (ValueError, UnicodeDecodeError, RecursionError):
                    raise HTTPError(400, 'invalid JSON body') from None
        return self._json

    async def stream(self):
        """Yield the body in chunks as it arrives (routes declared with ``stream=True``).

        Past the route's ``max_body`` it raises HTTPError 413, so an endless chunked body
        is cut off here too.
        """
        source = self._body_source
        if source is None:
            return
        limit = self.route.max_body if self.route is not None else MAX_BODY_BYTES
        total = 0
        while True:
            chunk = await source.receive()
            if not chunk:
                return
            total += len(chunk)
            if total > limit:
                raise HTTPError(413, _too_large(limit), close=True)
            yield chunk

    async def read_body(self):
        """Read and parse the body within the route's ``max_body``, then check its CSRF token.

        A route declared ``defer_body=True`` calls it itself, after the checks that need
        no body (a quota, a permission), so a request refused there never has its body read
        or its files written. Elsewhere the App read the body before the handler ran (or the
        route streams it), and this does nothing; so does a second call.
        """
        route = self.route
        if self._body_read or route is None or not route.defer_body:
            return
        await self._read_body(route.max_body, self._csrf_pending)
        if self._csrf_pending:
            self.app._check_csrf(self)
            self._csrf_pending = False
        self._body_read = True

    async def _read_body(self, limit, csrf=False):
        """Read the whole body within ``limit`` bytes and parse forms; with ``csrf``, a token
        sent in a header (or in a form field ahead of the file parts) is checked before any
        file is written."""
        length = self._head.body_length
        if length is not None and length > limit:
            raise HTTPError(413, _too_large(limit))
        if self._body_source is None or length == 0 or self.method == 'GET' or self.method == 'HEAD':
            # A GET or HEAD body has no meaning a server may act on (RFC 9110 9.3.1): it is
            # never parsed, and the connection drains it or closes.
            self._body = b''
            return
        if csrf and self.headers.get('x-csrf-token'):
            self.app._check_csrf(self)
        ctype, params = parse_content_type(self.headers.get('content-type', ''))
        if ctype == 'multipart/form-data':
            await self._read_multipart(params.get('boundary', ''), limit, csrf)
            return
        body = self._body_source.take_all()      # usually it came in with the head
        if body is None:
            chunks, total = [], 0
            async for chunk in self.stream():
                total += len(chunk)
                if total > limit:
                    raise HTTPError(413, _too_large(limit), close=True)
                chunks.append(chunk)
            body = b''.join(chunks)
        elif len(body) > limit:
            raise HTTPError(413, _too_large(limit), close=True)
        self._body = body
        if ctype == 'application/x-www-form-urlencoded':
            if len(body) > FORM_ON_LOOP_BYTES:
                self._form = await asyncio.to_thread(parse_urlencoded, body)
            else:
                self._form = parse_urlencoded(body)

    async def _read_multipart(self, boundary, limit, csrf=False):
        parser = MultipartParser(boundary)
        form, files = MultiDict(), MultiDict()
        self._form, self._files, self._body = form, files, b''
        upload_dir = self.app.upload_dir
        field = None          # (name, [chunks], size) of a non-file part
        upload = None         # UploadedFile being written
        pending = []          # bytes for the current upload not yet written
        pending_size = 0
        total = 0
        form_bytes = 0

        async def flush():
            nonlocal pending, pending_size
            if pending and upload is not None:
                data = b''.join(pending)
                pending, pending_size = [], 0
                await _storage(upload._file.write, data)

        async for chunk in self.stream():
            total += len(chunk)
            if total > limit:
                raise HTTPError(413, _too_large(limit), close=True)
            for kind, value in parser.feed(chunk):
                if kind == 'data':
                    if upload is not None:
                        upload.size += len(value)
                        pending.append(value)
                        pending_size += len(value)
                        if pending_size >= 256 * 1024:
                            await flush()
                    elif field is not None:
                        field[2] += len(value)
                        form_bytes += len(value)
                        if field[2] > MAX_FIELD_BYTES or form_bytes > MAX_BODY_BYTES:
                            raise HTTPError(413, 'form field too large')
                        field[1].append(value)
                elif kind == 'part':
                    disposition, dparams = parse_header_params(value.get('content-disposition', ''))
                    if disposition != 'form-data' or 'name' not in dparams:
                        raise HTTPError(400, 'multipart part without form-data name')
                    name = dparams['name']
                    if 'filename' in dparams:
                        if csrf and 'csrf_token' in form:     # sent ahead of the file, as forms do
                            self.app._check_csrf(self)
                        upload = await _storage(
                            _open_spool, upload_dir, name, safe_filename(dparams['filename']),
                            value.get('content-type', 'application/octet-stream'))
                        self._cleanup = [*self._cleanup, upload]
                    else:
                        field = [name, [], 0]
                else:  # end of part
                    if upload is not None:
                        await flush()
                        await _storage(_close_spool, upload)
                        files.add(upload.name, upload)
                        upload = None
                    elif field is not None:
                        try:
                            text = b''.join(field[1]).decode('utf-8')
                        except UnicodeDecodeError:
                            raise HTTPError(400, 'form field is not valid UTF-8') from None
                        form.add(field[0], text)
                        field = None
            if parser.done:
                break
        if not parser.done:
            raise HTTPError(400, 'multipart body ended before its close delimiter')
        # The epilogue, if any, is discarded by the body reader's drain.

    def _discard_uploads(self):
        """Delete spooled files the handler did not save elsewhere (blocking; runs in a thread)."""
        for upload in self._cleanup:
            try:
                if not upload._file.closed:
                    upload._file.close()
            except OSError:
                pass
            if os.path.basename(upload.path).startswith('.part-'):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(upload.path)

    # -- session and CSRF --
    @property
    def session(self):
        """This visitor's Session (dict-like), created on first use; None where sessions are off."""
        session = self._session
        if session is None and self._session_ready:
            session = self._session = self.app.sessions.new()
        return session

    @property
    def csrf_token(self):
        """This session's CSRF token (put it in forms as ``csrf_token``); it changes with the
        session id, so ``rotate()`` at sign-in renews it."""
        session = self.session
        if session is None:
            raise RuntimeError('sessions need App(data=...) and a request through the app')
        if not session.stored:
            # A keyed hash of the id needs no row: only the cookie is sent, and sent again
            # with each form shown, so it outlives the visit to the page.
            session.send_cookie = True
        return self.app.keyed_hash('csrf', session.ensure_id())

    def __repr__(self):
        return f'<Request {self.method} {self.target}>'


_MISSING = object()


@functools.lru_cache(maxsize=1024)      # behind a proxy, every request asks about its X-Real-IP
def _is_ip(text):
    """A plain IPv4 or IPv6 address. Not one with a zone (``fe80::1%eth0``): ipaddress lets
    almost any text follow the '%', and a forwarded client address never needs one."""
    if '%' in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


async def _storage(fn, *args):
    """Run blocking file work in a thread; a full disk or quota becomes 507, not a 500."""
    try:
        return await asyncio.to_thread(fn, *args)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            log.error('upload refused: %s', exc.strerror)
            raise HTTPError(507, 'not enough storage for this upload', close=True) from None
        raise


def _open_spool(upload_dir, name, filename, content_type):
    os.makedirs(upload_dir, mode=DATA_DIR_MODE, exist_ok=True)
    path = os.path.join(upload_dir, '.part-' + secrets.token_hex(16))
    # Readable by the server's user only, as its folder is, whatever the umask.
    f = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), 'wb')
    return UploadedFile(name, filename, content_type, path, f)


def _close_spool(upload):
    upload._file.flush()
    os.fsync(upload._file.fileno())
    upload._file.close()


_HEADER_INJECTION_RE = re.compile(r'[\r\n\x00]')


class Response:
    """What a handler answers. ``body`` is str, bytes, an iterator or an async iterator.

    ``Response('<p>hi</p>')`` is HTML, ``Response.json({...})``, ``Response.redirect('/x')``,
    ``Response.send_file(path)``; ``set_cookie`` and ``delete_cookie`` add Set-Cookie fields.
    """

    __slots__ = ('status', '_headers', '_shared', 'body', 'file', 'close')

    def __init__(self, body=b'', status=200, headers=None, content_type=None):
        self.status = status if status.__class__ is int else int(status)
        self.file = None
        self.close = False
        if body.__class__ is bytes:
            pass
        elif isinstance(body, str):
            body = body.encode('utf-8')
            if content_type is None and (headers is None or 'content-type' not in Headers(headers)):
                content_type = 'text/html; charset=utf-8'
        elif isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        if headers is None:
            # The common case: no Headers of its own yet. Its type's shared field, encoded
            # once, is written as it is; ``headers`` makes a copy only if the app looks.
            self._headers = None
            self._shared = _NO_FIELDS if content_type is None else (
                _TYPED_FIELDS.get(content_type) or _typed_fields(content_type))
        else:
            headers = headers if isinstance(headers, Headers) else Headers(headers)
            if content_type is not None:
                headers['Content-Type'] = content_type
            self._headers = headers
        self.body = body

    @property
    def headers(self):
        """The response's fields (Headers)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = self._shared._view()
        return headers

    @headers.setter
    def headers(self, headers):
        self._headers = headers if isinstance(headers, Headers) else Headers(headers)

    def _fields(self):
        """The fields to write: its own, or the shared ones of its type when none were made."""
        fields = self._headers
        return self._shared if fields is None else fields

    @classmethod
    def json(cls, data, status=200, headers=None):
        body = _json_text(data).encode('utf-8')
        return cls(body, status, headers, 'application/json')

    @classmethod
    def text(cls, text, status=200, headers=None):
        return cls(text.encode('utf-8'), status, headers, 'text/plain; charset=utf-8')

    @classmethod
    def html(cls, text, status=200, headers=None):
        return cls(text.encode('utf-8'), status, headers, 'text/html; charset=utf-8')

    @classmethod
    def redirect(cls, location, status=303):
        return redirect(location, status)

    @classmethod
    def send_file(cls, path, content_type=None, download_name=None, headers=None):
        """Send a file from disk (read off the loop); ``download_name`` makes it an attachment.

        Answered as static files are: ETag and Last-Modified, 304 to If-None-Match or
        If-Modified-Since, one byte range as 206 (416 when unsatisfiable), HEAD without a body.
        """
        resp = cls(b'', 200, headers, content_type or guess_type(path))
        resp.file = (path, 0, None)
        if download_name is not None:
            resp.headers['Content-Disposition'] = content_disposition(download_name)
        return resp

    def set_cookie(self, name, value, max_age=None, path='/', domain=None, secure=False,
                   httponly=True, samesite='Lax', expires=None):
        """Add a Set-Cookie field (RFC 6265); refuses characters that could split the header."""
        if not _TOKEN_RE.fullmatch(name.encode('latin-1', 'replace')):
            raise ValueError(f'invalid cookie name {name!r}')
        if not _COOKIE_VALUE_RE.fullmatch(value):
            raise ValueError('cookie value may not contain controls, spaces, quotes, commas, ; or \\')
        parts = [f'{name}={value}']
        if max_age is not None:
            parts.append(f'Max-Age={int(max_age)}')
        if expires is not None:
            parts.append(f'Expires={http_date(expires)}')
        for label, attr in (('Path', path), ('Domain', domain)):
            if attr:
                if _HEADER_INJECTION_RE.search(attr) or ';' in attr:
                    raise ValueError(f'invalid cookie {label}')
                parts.append(f'{label}={attr}')
        if secure:
            parts.append('Secure')
        if httponly:
            parts.append('HttpOnly')
        if samesite:
            if samesite.lower() not in ('lax', 'strict', 'none'):
                raise ValueError('samesite must be Lax, Strict or None')
            parts.append(f'SameSite={samesite.capitalize()}')
        self.headers.add('Set-Cookie', '; '.join(parts))

    def delete_cookie(self, name, path='/', domain=None, secure=False, samesite='Lax'):
        self.set_cookie(name, '', max_age=0, path=path, domain=domain, secure=secure,
                        samesite=samesite, expires=0)

    def __repr__(self):
        return f'<Response {self.status}>'


# RFC 6265 4.1.1 cookie-octet
_COOKIE_VALUE_RE = re.compile(r'[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*')


def _typed_fields(content_type):
    """The lone Content-Type field ``content_type``, indexed and encoded once for all
    responses of that type (at most 256 types are kept); only ever viewed (_view)."""
    fields = _TYPED_FIELDS.get(content_type)
    if fields is None:
        fields = _frozen_fields([('Content-Type', content_type)])
        if fields._block is None or len(_TYPED_FIELDS) >= 256 or content_type.__class__ is not str:
            return fields      # refused when written (CR, LF or NUL), or not to be kept
        _TYPED_FIELDS[content_type] = fields
    return fields


_TYPED_FIELDS = {}


def content_disposition(filename, disposition='attachment'):
    """A Content-Disposition value with an ASCII fallback and the RFC 6266 UTF-8 form."""
    ascii_name = safe_filename(filename.encode('ascii', 'replace').decode('ascii').replace('?', '_'))
    quoted = urllib.parse.quote(filename, safe='')
    return f'{disposition}; filename="{ascii_name}"; filename*=UTF-8\'\'{quoted}'


def redirect(location, status=303):
    """A redirect response (303 See Other by default, the right answer to a POST).

    The location is percent-encoded where needed, so it can never split the header.
    """
    safe = urllib.parse.quote(location, safe="/:?#[]@!$&'()*+,;=%~-._")
    resp = Response(b'', status)
    resp.headers['Location'] = safe
    return resp


def escape(value):
    """HTML-escape ``value`` (quotes included)."""
    return html.escape(str(value), quote=True)


# One encoder for every JSON response: json.dumps with options makes a new one per call.
_json_text = json.JSONEncoder(ensure_ascii=False, separators=(',', ':')).encode


def make_response(rv):
    """Normalise what a handler returned into a Response.

    Response as is; str -> HTML; bytes -> octet-stream; dict or list -> JSON; an iterator or
    async iterator -> streamed; a tuple (body, status), (body, headers) or
    (body, status, headers).
    """
    kind = rv.__class__
    if kind is Response:
        return rv
    if kind is str:
        return Response(rv)
    if kind is dict:
        return Response.json(rv)
    if isinstance(rv, Response):
        return rv
    if isinstance(rv, tuple):
        body, status, headers = rv[0], 200, None
        for extra in rv[1:]:
            if isinstance(extra, int):
                status = extra
            else:
                headers = extra
        resp = make_response(body)
        resp.status = status
        if isinstance(headers, dict):
            for name, value in headers.items():
                resp.headers[name] = value
        elif headers:
            for name, value in headers:       # a list of pairs may repeat a name (Set-Cookie)
                resp.headers.add(name, value)
        return resp
    if isinstance(rv, str):
        return Response(rv)
    if isinstance(rv, (bytes, bytearray, memoryview)):
        return Response(bytes(rv), content_type='application/octet-stream')
    if isinstance(rv, (dict, list)):
        return Response.json(rv)
    if hasattr(rv, '__aiter__') or hasattr(rv, '__next__'):
        return Response(rv, content_type='text/html; charset=utf-8')
    if rv is None:
        raise TypeError('the handler returned None; return a str, bytes, dict, list or Response')
    raise TypeError(f'cannot make a response from {type(rv).__name__}')


# === 6. Templates ===
# A small engine: {{ expr|filter }} autoescaped, {% if/elif/else %}, {% for %} with
# loop.index, {% include %}, {% extends %} with {% block %}, {# comments #}. Expressions
# are checked against a tiny grammar and compiled to Python that can only look names up
# in the context and call the listed filters: a template cannot run arbitrary code.

class TemplateError(Exception):
    """A template that cannot be compiled or rendered; names the file and line."""

    def __init__(self, message, filename='<string>', lineno=0):
        super().__init__(f'{filename}:{lineno}: {message}' if lineno else f'{filename}: {message}')
        self.message = message
        self.filename = filename
        self.lineno = lineno


class _TemplateNotFound(TemplateError):
    """No template by that name in the folder (or no folder): an include or extends that
    names it turns this into an error of its own file and line."""


class Markup(str):
    """A string that is already safe HTML and is not escaped again."""

    __slots__ = ()


def _escape_text(text):
    # Most values (names, titles, dates) have nothing to escape: testing for the five
    # characters is cheaper than html.escape's five replace calls, so only a value that
    # needs escaping pays for them.
    if '&' in text or '<' in text or '>' in text or '"' in text or "'" in text:
        escaped = html.escape(text)
    else:
        escaped = text
    if len(text) <= 200:
        if len(_ESCAPED) >= 4096:
            _ESCAPED.clear()
        _ESCAPED[text] = escaped
    return escaped


# Short strings already escaped once -> their escaped form. Compiled templates look a value
# up here (one C call) before calling _escape_text: a page shows the same names, titles
# and dates on every request. Bounded, and cleared when full.
_ESCAPED = {}


def _escape_value(value):
    if value.__class__ is str:
        return _escape_text(value)
    if isinstance(value, Markup):
        return value
    if value is None or callable(value):   # nothing is ever called, nor its repr shown
        return ''
    return html.escape(str(value))


_TEMPLATE_TOKEN_RE = re.compile(r'({{.*?}}|{%.*?%}|{#.*?#})', re.S)
_EXPR_TOKEN_RE = re.compile(r'''
    \s*(?:
      (?P<string>"[^"\\]*(?:\\.[^"\\]*)*"|'[^'\\]*(?:\\.[^'\\]*)*')
    | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
    | (?P<op>==|!=|<=|>=|<|>|\(|\)|\||,)
    )''', re.X)
_LITERALS = {'true': 'True', 'false': 'False', 'none': 'None',
             'True': 'True', 'False': 'False', 'None': 'None'}
_COMPARISONS = {'==', '!=', '<', '>', '<=', '>=', 'in'}


def _filter_default(value, fallback=''):
    return fallback if value is None or value == '' else value


def _filter_text(value):
    # A missing value (None) is empty through a filter too, as it is in {{ name }}: never 'None'.
    return '' if value is None else str(value)


TEMPLATE_FILTERS = {
    'safe': lambda v: Markup('' if v is None else v),
    'upper': lambda v: _filter_text(v).upper(),
    'lower': lambda v: _filter_text(v).lower(),
    'title': lambda v: _filter_text(v).title(),
    'trim': lambda v: _filter_text(v).strip(),
    'length': lambda v: len(v) if v is not None else 0,
    'default': _filter_default,
    'join': lambda v, sep=', ': '' if v is None else str(sep).join(str(x) for x in v),
    'urlencode': lambda v: urllib.parse.quote(_filter_text(v), safe=''),
}


def _lookup(context, parts):
    """The parts of ``a.b.0`` (split when the template was compiled) against the context:
    dict keys, then attributes, then list indexes.

    Names starting with '_' are never reached, so ``__class__`` and friends stay out, and
    nothing is ever called.
    """
    value = context.get(parts[0])
    for part in parts[1:]:
        if value is None or part.startswith('_'):
            return None
        if isinstance(value, dict):
            value = value.get(part)
        elif part.isdigit() and isinstance(value, (list, tuple)):
            index = int(part)
            value = value[index] if index < len(value) else None
        else:
            value = getattr(value, part, None)
            if callable(value):
                return None
    return value


class _ExpressionParser:
    """Recursive descent over the expression grammar, emitting Python source.

    expr := or;  or := and ('or' and)*;  and := not ('and' not)*;  not := 'not' not | cmp
    cmp := filtered [('=='|'!='|'<'|'>'|'<='|'>='|'in'|'not' 'in') filtered]
    filtered := primary ('|' FILTER ['(' expr (',' expr)* ')'])*
    primary := STRING | NUMBER | NAME('.'NAME)* | true | false | none | '(' expr ')'
    """

    def __init__(self, text, filename, lineno):
        self.where = (filename, lineno)
        self.text = text
        self.tokens = []
        pos, text = 0, text.rstrip()
        while pos < len(text):
            m = _EXPR_TOKEN_RE.match(text, pos)
            if m is None or m.end() == pos:
                self.fail(f'cannot parse expression {self.text.strip()!r}')
            pos = m.end()
            self.tokens.append((m.lastgroup, m.group(m.lastgroup)))
        self.i = 0

    def fail(self, message):
        raise TemplateError(message, *self.where)

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None)

    def take(self):
        token = self.peek()
        self.i += 1
        return token

    def expect(self, value):
        if self.take()[1] != value:
            self.fail(f'expected {value!r} in {self.text.strip()!r}')

    def parse(self):
        if not self.tokens:
            self.fail('empty expression')
        source = self.or_()
        if self.i != len(self.tokens):
            self.fail(f'unexpected {self.peek()[1]!r} in {self.text.strip()!r}')
        return source

    def or_(self):
        left = self.and_()
        while self.peek() == ('name', 'or'):
            self.take()
            left = f'({left} or {self.and_()})'
        return left

    def and_(self):
        left = self.not_()
        while self.peek() == ('name', 'and'):
            self.take()
            left = f'({left} and {self.not_()})'
        return left

    def not_(self):
        if self.peek() == ('name', 'not'):
            self.take()
            return f'(not {self.not_()})'
        return self.cmp()

    def cmp(self):
        left = self.filtered()
        kind, value = self.peek()
        if value in _COMPARISONS and kind in ('op', 'name'):
            self.take()
            return f'_cmp({value!r}, {left}, {self.filtered()})'
        if (kind, value) == ('name', 'not') and self.tokens[self.i + 1:self.i + 2] == [('name', 'in')]:
            self.i += 2
            return f"(not _cmp('in', {left}, {self.filtered()}))"
        return left

    def filtered(self):
        value = self.primary()
        while self.peek() == ('op', '|'):
            self.take()
            kind, name = self.take()
            if kind != 'name' or name not in TEMPLATE_FILTERS:
                self.fail(f'unknown filter {name!r}')
            args = ''
            if self.peek() == ('op', '('):
                self.take()
                parts = [self.or_()]
                while self.peek() == ('op', ','):
                    self.take()
                    parts.append(self.or_())
                self.expect(')')
                args = ', ' + ', '.join(parts)
            value = f'_f[{name!r}]({value}{args})'
        return value

    def primary(self):
        kind, value = self.take()
        if kind == 'string':
            return repr(ast.literal_eval(value))
        if kind == 'number':
            return value
        if kind == 'name':
            if value in _LITERALS:
                return _LITERALS[value]
            if value in ('and', 'or', 'not', 'in'):
                self.fail(f'unexpected {value!r} in {self.text.strip()!r}')
            return _name_source(tuple(value.split('.')))
        if value == '(':
            inner = self.or_()
            self.expect(')')
            return inner
        self.fail(f'unexpected {value!r} in {self.text.strip()!r}')


def _compare(op, left, right):
    if op == 'in':
        return right is not None and left in right
    if op == '==':
        return left == right
    if op == '!=':
        return left != right
    try:
        return {'<': left < right, '>': left > right, '<=': left <= right, '>=': left >= right}[op]
    except TypeError:
        return False


_PLAIN_NAME_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\s*')


def expression_source(text, filename='<string>', lineno=0):
    """A template expression -> Python source over the context ``_c``. Refuses anything
    off-grammar; the source can only look names up, compare them and call the filters."""
    m = _PLAIN_NAME_RE.fullmatch(text)
    if m and m.group(1) not in _LITERALS and m.group(1) not in ('and', 'or', 'not', 'in'):
        # The common case, a (dotted) name: a direct lookup, split in advance.
        return _name_source((m.group(1), *m.group(2)[1:].split('.')) if m.group(2) else (m.group(1),))
    try:
        return _ExpressionParser(text, filename, lineno).parse()
    except (SyntaxError, ValueError, RecursionError) as exc:    # a bad string escape, ((((...
        raise TemplateError(f'cannot parse expression {text.strip()[:80]!r} ({exc.__class__.__name__})',
                            filename, lineno) from None


def _name_source(parts):
    """Python source that looks a (dotted) name up in the context ``_c``, as _lookup does:
    the usual ``person.name`` of a dict inline, anything else through _lookup."""
    if len(parts) == 1:
        return f'_c.get({parts[0]!r})'
    if len(parts) == 2 and not parts[1].startswith('_'):
        return (f'(_d.get({parts[1]!r}) if (_d := _c.get({parts[0]!r})).__class__ is dict '
                f'else _l(_c, {parts!r}))')
    return f'_l(_c, {parts!r})'


#: Includes and extends one rendering may nest: deeper is almost surely a template that
#: includes or extends itself, and would otherwise end in Python's RecursionError.
MAX_TEMPLATE_NESTING = 20
_render_depth = threading.local()
_LOOP_USERS_RE = re.compile(r'\b(?:loop|include|block)\b')   # in a for body's tags and outputs
# All a compiled template's code can reach: no builtins, only these.
_TEMPLATE_ENV = {'__builtins__': {}, '_l': _lookup, '_f': TEMPLATE_FILTERS, '_cmp': _compare,
                 '_e': _escape_value, '_esc': _escape_text, '_ec': _ESCAPED.get, '_str': str,
                 'dict': dict, 'list': list,
                 'len': len, 'enumerate': enumerate, 'Exception': Exception,
                 'TemplateError': TemplateError}


class _TemplateParser:
    """Template source -> a tree of nodes, each ``{% tag %}`` read by its entry in ``TAGS``.

    The tree: ('text', str) | ('out', source, line) | ('if', [(source or None, line, tree)])
    | ('for', var, source, body, orelse, with_loop, line) | ('block', name, tree)
    | ('include', name, line). ``{% extends %}`` makes no node: it sets ``extends``.
    A tag that opens a body pushes (tag, nodes, extra, line) on ``stack``; its end tag pops it.
    """

    def __init__(self, source, name):
        self.name = name
        self.tokens = _TEMPLATE_TOKEN_RE.split(source)   # text at even indexes, tags at odd ones
        self.index = 0                    # of the tag being read, in tokens
        self.stack = [('root', [], None, 1)]
        self.block_names = set()
        self.extends = None               # (template name, line)
        self.includes = []                # (template name, line)

    def parse(self):
        lineno = 1
        for i, token in enumerate(self.tokens):
            start_line = lineno
            lineno += token.count('\n')
            if i % 2 == 0:
                if token:
                    self.add(('text', token))
                continue
            if token.startswith('{#'):
                continue
            if token.startswith('{{'):
                self.add(('out', expression_source(token[2:-2], self.name, start_line), start_line))
                continue
            words = token[2:-2].strip().split(None, 1)
            if not words:
                raise TemplateError('empty tag', self.name, start_line)
            tag, arg = words[0], (words[1] if len(words) > 1 else '')
            handler = self.TAGS.get(tag)
            if handler is None:
                raise self.unknown(tag, start_line)
            self.index = i
            handler(self, arg, start_line)
        if len(self.stack) > 1:
            tag, _, _, ln = self.stack[-1]
            raise TemplateError(f'{{% {tag} %}} is never closed', self.name, ln)
        return self.stack[0][1]

    def add(self, node):
        self.stack[-1][1].append(node)

    def unknown(self, tag, lineno):
        return TemplateError(f'unknown tag {{% {tag} %}}', self.name, lineno)

    def close(self, closing, lineno, *opening):
        """Pop the innermost open tag, which ``closing`` must close (one of ``opening``)."""
        tag, _, _, opened = self.stack[-1]
        if tag in opening:
            return self.stack.pop()
        if tag == 'root':
            raise TemplateError(f'{{% {closing} %}} without {{% {closing[3:]} %}}', self.name, lineno)
        raise TemplateError(f'{{% {closing} %}} while the {{% {tag.split("-")[0]} %}} of line {opened} '
                            'is still open', self.name, lineno)

    def string_arg(self, arg, lineno):
        arg = arg.strip()
        if len(arg) < 2 or arg[0] != arg[-1] or arg[0] not in '"\'':
            raise TemplateError('expected a quoted template name', self.name, lineno)
        return arg[1:-1]

    # -- one handler per tag: (self, the text after the tag's name, its line) --
    def tag_if(self, arg, lineno):
        cond = expression_source(arg, self.name, lineno)
        self.stack.append(('if', [], [(cond, lineno, None)], lineno))

    def tag_elif(self, arg, lineno):
        if self.stack[-1][0] != 'if':
            raise self.unknown('elif', lineno)
        self.next_branch('elif', arg, lineno)

    def tag_else(self, arg, lineno):
        if self.stack[-1][0] == 'if':
            self.next_branch('else', arg, lineno)
        elif self.stack[-1][0] == 'for':
            _, nodes, extra, opened = self.stack.pop()
            extra['body'] = nodes
            self.stack.append(('for-else', [], extra, opened))
        else:
            raise self.unknown('else', lineno)

    def next_branch(self, tag, arg, lineno):
        """An {% elif %} or {% else %} ends the open branch of its {% if %} and starts one."""
        _, nodes, branches, opened = self.stack.pop()
        cond, line, _ = branches[-1]
        if cond is None:
            raise TemplateError(f'{{% {tag} %}} after {{% else %}}', self.name, lineno)
        branches[-1] = (cond, line, nodes)
        cond = expression_source(arg, self.name, lineno) if tag == 'elif' else None
        branches.append((cond, lineno, None))
        self.stack.append(('if', [], branches, opened))

    def tag_endif(self, arg, lineno):
        _, nodes, branches, _ = self.close('endif', lineno, 'if')
        branches[-1] = branches[-1][:2] + (nodes,)
        self.add(('if', branches))

    def tag_for(self, arg, lineno):
        m = re.fullmatch(r'([A-Za-z_]\w*)\s+in\s+(.+)', arg.strip(), re.S)
        if not m:
            raise TemplateError('expected {% for name in expression %}', self.name, lineno)
        extra = {'var': m.group(1), 'iter': expression_source(m.group(2), self.name, lineno),
                 'start': self.index}
        self.stack.append(('for', [], extra, lineno))

    def tag_endfor(self, arg, lineno):
        kind, nodes, extra, opened = self.close('endfor', lineno, 'for', 'for-else')
        if kind == 'for':
            extra['body'], extra['else'] = nodes, []
        else:
            extra['else'] = nodes
        # Only a body that can name ``loop`` (itself, or through an include or a block a
        # child template fills) gets the per-item loop dict: most loops never read it.
        with_loop = any(_LOOP_USERS_RE.search(t) for t in self.tokens[extra['start'] + 2:self.index:2])
        self.add(('for', extra['var'], extra['iter'], extra['body'], extra['else'], with_loop, opened))

    def tag_block(self, arg, lineno):
        name = arg.strip()
        if not re.fullmatch(r'\w+', name):
            raise TemplateError('expected {% block name %}', self.name, lineno)
        if name in self.block_names:
            raise TemplateError(f'block {name!r} defined twice', self.name, lineno)
        self.block_names.add(name)
        self.stack.append(('block', [], name, lineno))

    def tag_endblock(self, arg, lineno):
        _, nodes, name, _ = self.close('endblock', lineno, 'block')
        self.add(('block', name, nodes))

    def tag_include(self, arg, lineno):
        target = self.string_arg(arg, lineno)
        self.includes.append((target, lineno))
        self.add(('include', target, lineno))

    def tag_extends(self, arg, lineno):
        if self.extends is not None or len(self.stack) > 1:
            raise TemplateError('{% extends %} must be a top-level tag, once', self.name, lineno)
        self.extends = (self.string_arg(arg, lineno), lineno)

    TAGS = {'if': tag_if, 'elif': tag_elif, 'else': tag_else, 'endif': tag_endif,
            'for': tag_for, 'endfor': tag_endfor, 'block': tag_block, 'endblock': tag_endblock,
            'include': tag_include, 'extends': tag_extends}


class _TemplateCompiler:
    """A template's tree -> Python: one function for the template and one per block.

    Each function appends strings to a list, so rendering runs no interpreter of ours: the
    tree is walked once, here, not on every request. Each kind of node is written by its
    entry in ``EMIT``. ``where`` maps a line of the Python to the template line it came
    from, so an error while rendering names the template's line.
    """

    def __init__(self, name):
        self.name = name
        self.code = []            # the lines of the module
        self.where = {}           # its line number -> (template line, what failed there)
        self.functions = []       # (function name, block name or None)
        self.pending = []         # (function name, block name or None, tree) still to write
        self.counter = itertools.count()

    def compile(self, tree, template):
        """(the function rendering ``tree``, {block name: the function rendering it})."""
        self.pending.append(('_render', None, tree))
        try:
            while self.pending:   # a block's function is written after the one that names it
                self.function(*self.pending.pop(0))
        except RecursionError:    # nested deeper than our own stack: name the deepest line reached
            lineno = next(reversed(self.where.values()), (0,))[0]
            raise TemplateError('too deeply nested to compile (RecursionError)', self.name, lineno) from None
        env = dict(_TEMPLATE_ENV, _t=template, _fail=self._failure())
        try:
            exec(compile('\n'.join(self.code), f'<template {self.name}>', 'exec'), env)
        except (SyntaxError, RecursionError, MemoryError) as exc:   # Python's own nesting limits
            lineno = self.where.get(getattr(exc, 'lineno', None), (0,))[0]
            raise TemplateError(f'too deeply nested to compile ({exc.__class__.__name__})',
                                self.name, lineno) from None
        return env['_render'], {block: env[fname] for fname, block in self.functions if block is not None}

    def _failure(self):
        name, where = self.name, self.where

        def fail(exc):
            # The failing line of the compiled function says which template line it was.
            lineno, what = where.get(exc.__traceback__.tb_lineno, (0, ''))
            return TemplateError(f'{what}{type(exc).__name__}: {exc}', name, lineno)
        return fail

    def function(self, fname, block, nodes):
        self.functions.append((fname, block))
        self.code.append(f'def {fname}(_c, _b, _o):')
        self.code.append('    _a = _o.append')
        self.code.append('    try:')
        self.emit(nodes, 2)
        self.code.append('        pass')
        self.code.append('    except TemplateError:')
        self.code.append('        raise')
        self.code.append('    except Exception as exc:')
        self.code.append('        raise _fail(exc) from None')

    def line(self, depth, text, lineno=None, what=''):
        self.code.append('    ' * depth + text)
        if lineno is not None:
            self.where[len(self.code)] = (lineno, what)

    def emit(self, nodes, depth):
        for node in nodes:
            self.EMIT[node[0]](self, node, depth)

    # -- one writer per kind of node: (self, the node, the indentation depth) --
    def emit_text(self, node, depth):
        self.line(depth, f'_a({node[1]!r})')

    def emit_out(self, node, depth):
        _, source, lineno = node
        self.line(depth, f'_v = {source}', lineno)
        self.line(depth, '_a((_ec(_v) or _esc(_v)) if _v.__class__ is _str else _e(_v))', lineno)

    def emit_if(self, node, depth):
        for n, (cond, lineno, body) in enumerate(node[1]):
            if cond is None:
                self.line(depth, 'else:')
            else:
                self.line(depth, f'{"if" if n == 0 else "elif"} {cond}:', lineno)
            self.emit(body, depth + 1)
            self.line(depth + 1, 'pass')

    def emit_for(self, node, depth):
        _, var, source, body, orelse, with_loop, lineno = node
        k = next(self.counter)
        line = self.line
        # One copy of the scope per loop; each item rebinds a name or two in it.
        line(depth, f'_it{k} = {source}', lineno, 'cannot loop: ')
        line(depth, f'_it{k} = list(_it{k}) if _it{k} is not None else []', lineno, 'cannot loop: ')
        line(depth, f'if _it{k}:')
        line(depth + 1, f'_outer{k}, _c, _n{k} = _c, dict(_c), len(_it{k})')
        line(depth + 1, f'for _i{k}, _c[{var!r}] in enumerate(_it{k}, 1):')
        if with_loop:
            line(depth + 2, f"_c['loop'] = {{'index': _i{k}, 'first': _i{k} == 1, "
                            f"'last': _i{k} == _n{k}, 'length': _n{k}}}")
        self.emit(body, depth + 2)
        line(depth + 2, 'pass')
        line(depth + 1, f'_c = _outer{k}')
        line(depth, 'else:')
        self.emit(orelse, depth + 1)
        line(depth + 1, 'pass')

    def emit_block(self, node, depth):
        _, name, body = node
        fname = f'_block{next(self.counter)}'
        self.pending.append((fname, name, body))
        self.line(depth, f'_b.get({name!r}, {fname})(_c, _b, _o)')

    def emit_include(self, node, depth):
        _, target, lineno = node
        self.line(depth, f'_t._include({target!r}, {lineno}, _c, _o)')

    EMIT = {'text': emit_text, 'out': emit_out, 'if': emit_if, 'for': emit_for,
            'block': emit_block, 'include': emit_include}


class Template:
    """A compiled template. ``render(context)`` -> str. Built by ``Templates`` from files.

    ``_TemplateParser`` reads the source into a tree; ``_TemplateCompiler`` turns the tree
    into Python functions. Only the grammar-checked expressions, repr()'d text and names
    reach that Python. Includes and extends are looked up when rendered.
    """

    def __init__(self, source, name='<string>', loader=None):
        self.name = name
        self.loader = loader
        parser = _TemplateParser(source, name)
        tree = parser.parse()
        self.extends, self._extends_line = parser.extends or (None, 0)
        self._includes = parser.includes
        # blocks: name -> its compiled function, for templates extending this one
        self._render, self.blocks = _TemplateCompiler(name).compile(tree, self)

    def check_targets(self):
        """Look up every template this one includes or extends, so a missing one is found
        now (naming this file and the tag's line) rather than by a visitor."""
        for target, lineno in self._includes:
            self._load('include', target, lineno)
        if self.extends is not None:
            self._load('extends', self.extends, self._extends_line)

    def _load(self, tag, target, lineno):
        if self.loader is None:
            raise TemplateError(f'{tag} needs a template folder', self.name, lineno)
        try:
            return self.loader.get(target)
        except _TemplateNotFound as exc:
            raise TemplateError(f'{{% {tag} {target!r} %}}: {exc.message}', self.name, lineno) from None

    def _include(self, target, lineno, ctx, out):
        self._render_other('include', target, lineno, ctx, {}, out)

    def _render_other(self, tag, target, lineno, ctx, blocks, out):
        """Render the template an include or extends names, within MAX_TEMPLATE_NESTING."""
        template = self._load(tag, target, lineno)
        depth = getattr(_render_depth, 'value', 0)
        if depth >= MAX_TEMPLATE_NESTING:
            raise TemplateError(f'includes or extends nested more than {MAX_TEMPLATE_NESTING} deep '
                                '(a cycle?)', self.name, lineno)
        _render_depth.value = depth + 1
        try:
            template._render_into(ctx, blocks, out)
        finally:
            _render_depth.value = depth

    def _render_into(self, ctx, blocks, out):
        if self.extends is None:
            self._render(ctx, blocks, out)
            return
        merged = dict(self.blocks)
        merged.update(blocks)
        self._render_other('extends', self.extends, self._extends_line, ctx, merged, out)

    def render(self, context=None, **kwargs):
        ctx = dict(context or {}, **kwargs)
        out = []
        self._render_into(ctx, {}, out)
        return ''.join(out)


def _read_template(path, filename):
    """A template file's text; one that is not UTF-8 is an error naming its first bad line."""
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except UnicodeDecodeError:
        with open(path, 'rb') as f:
            data = f.read()
        try:
            data.decode('utf-8')
        except UnicodeDecodeError as exc:
            raise TemplateError('not UTF-8 text', filename, data.count(b'\n', 0, exc.start) + 1) from None
        raise


class Templates:
    """Templates from a folder, compiled once and recompiled when the file changes.

    ``preload()`` (run in a thread at startup) compiles them all; after that ``get`` reads
    the disk at most once a second per template, so rendering stays off the filesystem.
    """

    def __init__(self, folder):
        self.folder = os.path.realpath(folder) if folder else None
        self._cache = {}   # name -> (Template, mtime_ns, checked_at)
        self._lock = threading.Lock()

    def _path(self, name):
        if self.folder is None:
            raise _TemplateNotFound(f'no template folder for {name!r}', name)
        path = os.path.realpath(os.path.join(self.folder, name))
        if os.path.commonpath([path, self.folder]) != self.folder:
            raise _TemplateNotFound('template outside the template folder', name)
        return path

    def get(self, name):
        entry = self._cache.get(name)
        now = time.monotonic()
        if entry is not None and now - entry[2] < 1.0:
            return entry[0]
        with self._lock:
            path = self._path(name)
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:
                raise _TemplateNotFound('template not found', name) from None
            if entry is not None and entry[1] == mtime:
                self._cache[name] = (entry[0], mtime, now)
                return entry[0]
            filename = os.path.relpath(path, os.path.dirname(self.folder))
            template = Template(_read_template(path, filename), filename, self)
            self._cache[name] = (template, mtime, now)
            return template

    def exists(self, name):
        """Is there a template ``name``? For routes that serve templates by name: a new file
        is found without a restart. Blocking (a stat()), as ``get`` is; a broken template
        raises TemplateError."""
        try:
            self.get(name)
        except _TemplateNotFound:
            return False
        return True

    def preload(self):
        """Compile every .html template, and look up what each includes or extends: a
        mistake in any stops the start instead of failing a visitor."""
        if self.folder is None or not os.path.isdir(self.folder):
            return
        for dirpath, _, filenames in os.walk(self.folder):
            for filename in filenames:
                if filename.endswith('.html'):
                    try:
                        self.get(os.path.relpath(os.path.join(dirpath, filename), self.folder)).check_targets()
                    except TemplateError as exc:    # a page that would fail later stops the start
                        raise StartupError(f'template {exc}') from None

    def refresh(self):
        """Re-check every cached template now (blocking; for a thread)."""
        for name in list(self._cache):
            template, mtime, _ = self._cache[name]
            self._cache[name] = (template, mtime, 0.0)
            try:
                self.get(name)
            except TemplateError:
                log.exception('template %s', name)


# === 7. Storage, sessions, CSRF ===

# SQLite's primary result codes (sqlite3.SQLITE_* from Python 3.11 on), fixed since SQLite 3.0.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_NOTADB = 5, 6, 11, 26


def _sqlite_error_is(exc, codes, words):
    """Is ``exc`` one of SQLite's result ``codes``? Told by its code where Python has it
    (``sqlite_errorcode``, 3.11 on; an extended code carries its primary one in the low
    byte), else by ``words`` in SQLite's message (3.10, or an error raised by Python)."""
    code = getattr(exc, 'sqlite_errorcode', None)
    if code is not None:
        return code & 0xFF in codes
    text = str(exc).lower()
    return any(word in text for word in words)


def _is_busy(exc):
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds the lock."""
    return _sqlite_error_is(exc, (_SQLITE_BUSY, _SQLITE_LOCKED), ('locked', 'busy'))


class DataFolderInUse(StartupError):
    """Another server holds the data folder (or it cannot be locked)."""


def claim_data_folder(data, shared=False):
    """Make this process, and the workers it forks, the one server of ``data``; blocking.
    ``shared``: one of the servers on PostgreSQL that may share it (their uploads arrive
    there, each under a name of its own), which a server on SQLite then cannot claim.

    An advisory lock (flock) on the folder itself, so that no file removed from it can undo
    the claim: two servers on one folder would each sweep away the uploads the other is
    still writing. ``data/.lock`` holds the owner's pid, for the message a second server
    gets. The lock lasts while any process holding the returned descriptor lives (forked
    workers inherit it). Also makes ``uploads/`` 0700 and warns if the folder itself is
    open to other users. Returns the descriptor, or None where flock does not exist.
    """
    data = os.path.abspath(data)
    os.makedirs(data, mode=DATA_DIR_MODE, exist_ok=True)
    pid_file = os.path.join(data, '.lock')
    fd = None
    if fcntl is not None:
        fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise DataFolderInUse(f'cannot lock the data folder {data}: {exc.strerror}') from None
            try:
                with open(pid_file, encoding='ascii', errors='replace') as f:
                    holder = f.read(32).strip()
            except OSError:
                holder = ''
            raise DataFolderInUse(f'the data folder {data} is in use by another server '
                                  f'(pid {holder or "unknown"}): stop it or use another --data') from None
        pid_fd = os.open(pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, DATA_FILE_MODE)
        try:
            os.fchmod(pid_fd, DATA_FILE_MODE)
            os.write(pid_fd, f'{os.getpid()}\n'.encode())
        finally:
            os.close(pid_fd)
    mode = os.stat(data).st_mode & 0o777
    if mode & 0o077:
        log.warning('the data folder %s is open to other users (mode %03o): chmod 700 it',
                    data, mode)
    upload_dir = os.path.join(data, 'uploads')
    os.makedirs(upload_dir, mode=DATA_DIR_MODE, exist_ok=True)
    os.chmod(upload_dir, DATA_DIR_MODE)     # a folder made by hand, or under a loose umask
    return fd


def _private_database_files(path):
    """The database and its -wal and -shm the server's user's alone: SQLite gives a new -wal
    and -shm the database file's mode, so a private database file keeps them private too."""
    if not os.path.exists(path):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, DATA_FILE_MODE))
    for name in (path, path + '-wal', path + '-shm'):
        with contextlib.suppress(FileNotFoundError):
            if os.stat(name).st_mode & 0o777 != DATA_FILE_MODE:
                os.chmod(name, DATA_FILE_MODE)


# PostgreSQL, spoken here as HTTP is: the frontend/backend protocol 3.0 over a socket, in the
# database threads (the same place SQLite's calls run), with a connection that behaves like
# sqlite3's for the subset the framework and the site use. So one Database, one SQL text and
# one set of helpers serve both backends.

class PostgresError(sqlite3.DatabaseError):
    """An error the PostgreSQL server reported: ``sqlstate`` (such as '23505'), ``message``,
    ``detail``. A subclass of sqlite3's DatabaseError, so code that catches the DB-API
    classes (``sqlite3.Error``, ``sqlite3.IntegrityError``) catches both backends' errors."""

    def __init__(self, message, sqlstate='', detail=''):
        super().__init__(f'{message} (SQLSTATE {sqlstate})' if sqlstate else message)
        self.message, self.sqlstate, self.detail = message, sqlstate, detail
        # sqlite3's own errors name a code too (3.11 on): ours is the SQLSTATE.
        self.sqlite_errorcode = None


class PostgresIntegrityError(PostgresError, sqlite3.IntegrityError):
    """SQLSTATE class 23: a unique, foreign key, not-null or check constraint refused a row."""


class PostgresUnavailable(PostgresError, sqlite3.OperationalError):
    """The server cannot be reached or went away (restart, network): the connection is
    closed, and the next call opens a new one."""


# SQLSTATEs after which the connection cannot go on: the server is shutting down or full
# (too many connections), or a connection exception (class 08).
_PG_GONE_STATES = ('57P01', '57P02', '57P03', '53300')
# The statement ran out of time (statement_timeout), or met a lock or a deadlock it lost:
# the database is busy, as SQLite's SQLITE_BUSY says.
_PG_BUSY_STATES = ('57014', '55P03', '40P01', '40001')
# The one advisory lock that "BEGIN IMMEDIATE" takes on PostgreSQL, as SQLite takes its
# database's write lock: writing transactions run one at a time, so a check-then-act in
# one of them (a quota, a rate limit, a lockout) holds across every process and host.
_PG_WRITE_LOCK = 0x7365727665722e70     # 'server.p'


def parse_database_url(url, data):
    """``--database``: ('sqlite', path) or ('postgresql', settings dict); ValueError if bad.

    ``sqlite:`` is ``data/app.db``; ``sqlite:PATH`` another file. ``postgresql://user:password@
    host:port/dbname?sslmode=…&sslrootcert=…&connect_timeout=…`` as libpq reads it (a host
    that starts with ``/``, percent-encoded, is a unix socket folder)."""
    scheme, _, rest = url.partition(':')
    scheme = scheme.lower()
    if scheme == 'sqlite':
        path = urllib.parse.unquote(rest[2:] if rest.startswith('//') else rest)
        return 'sqlite', os.path.join(data, path or 'app.db')
    if scheme not in ('postgresql', 'postgres') or not rest.startswith('//'):
        raise ValueError(f'{redact_url(url)!r} is neither sqlite: nor postgresql://user:password@host/dbname')
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    userinfo, _, hostport = parts.netloc.rpartition('@')
    user, _, password = userinfo.partition(':')
    # A unix socket folder is a percent-encoded path, maybe with its :port after it.
    host = (urllib.parse.unquote(hostport.partition(':')[0]) if hostport.lower().startswith('%2f')
            else parts.hostname)
    try:
        port = parts.port or int(query.get('port', 5432))
    except ValueError:
        raise ValueError(f'the port in {redact_url(url)!r} is not a number from 1 to 65535 (in a '
                         f'password, write @ as %40, / as %2F, : as %3A, # as %23, ? as %3F)') from None
    user = urllib.parse.unquote(user) or query.get('user') or os.environ.get('PGUSER') or _os_user()
    settings = {
        'host': query.get('host') or host or 'localhost',
        'port': port,
        'user': user,
        'password': urllib.parse.unquote(password) if password else query.get('password', os.environ.get('PGPASSWORD')),
        'dbname': urllib.parse.unquote(parts.path.lstrip('/')) or query.get('dbname') or user,
        'sslmode': query.get('sslmode', 'prefer'),
        'sslrootcert': query.get('sslrootcert'),
        'connect_timeout': float(query.get('connect_timeout') or PG_CONNECT_TIMEOUT_S),
    }
    if settings['sslmode'] not in ('disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'):
        raise ValueError(f'sslmode={settings["sslmode"]} is none of disable, prefer, require, '
                         f'verify-ca, verify-full')
    return 'postgresql', settings


def database_path(url, data):
    """Database's ``path`` for ``--database``: the SQLite file, or the PostgreSQL URL."""
    kind, where = parse_database_url(url, data)
    return where if kind == 'sqlite' else url


def redact_url(url):
    """The URL with its password, if any, replaced by ***: for banners and messages."""
    url = re.sub(r'([?&]password=)[^&#]*', r'\1***', url)       # libpq's ?password=, too
    head, slashes, rest = url.partition('//')
    # The user information ends at the last @ before the query, as parse_database_url reads
    # it: a password may hold an @ or a / that was not percent-encoded.
    before_query, mark, query = rest.partition('?')
    userinfo, at, host = before_query.rpartition('@')
    if not slashes or not at or ':' not in userinfo:
        return url
    return f'{head}//{userinfo.partition(":")[0]}:***@{host}{mark}{query}'


def _os_user():
    try:
        return getpass.getuser()
    except (KeyError, OSError):     # a uid with no name, and no USER or LOGNAME
        return 'postgres'


def _scram_client(password, nonce=None):
    """SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL runs it: a generator that yields
    each message to send and is sent each server message; it returns once the server has
    proven that it knows the password too. No channel binding ('n,,')."""
    nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode()
    first_bare = f'n=,r={nonce}'
    server_first = (yield ('n,,' + first_bare).encode()).decode()
    fields = dict(item.split('=', 1) for item in server_first.split(','))
    if not fields.get('r', '').startswith(nonce) or len(fields['r']) == len(nonce):
        raise PostgresError('the server answered SCRAM with a nonce that is not ours')
    salted = hashlib.pbkdf2_hmac('sha256', _saslprep(password).encode(),
                                 base64.b64decode(fields['s']), int(fields['i']))
    client_key = hmac.digest(salted, b'Client Key', 'sha256')
    final_bare = f'c=biws,r={fields["r"]}'
    auth_message = f'{first_bare},{server_first},{final_bare}'.encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, 'sha256')
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    server_final = (yield f'{final_bare},p={base64.b64encode(proof).decode()}'.encode()).decode()
    server_key = hmac.digest(salted, b'Server Key', 'sha256')
    expected = base64.b64encode(hmac.digest(server_key, auth_message, 'sha256')).decode()
    if not hmac.compare_digest(server_final.partition('v=')[2], expected):
        raise PostgresError('the server could not prove it knows the password (SCRAM)')


def _saslprep(password):
    """SASLprep (RFC 4013), as PostgreSQL applies it to a SCRAM password: non-ASCII spaces
    become spaces, characters mapped to nothing go, then NFKC. A password it refuses
    (prohibited characters, mixed directions) is used as it is, as PostgreSQL does."""
    mapped = ''.join(' ' if stringprep.in_table_c12(c) else c for c in password
                     if not stringprep.in_table_b1(c))
    prepared = unicodedata.normalize('NFKC', mapped)
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
                  stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9)
    if any(test(c) for c in prepared for test in prohibited):
        return password
    if any(stringprep.in_table_d1(c) for c in prepared):
        # Right-to-left text must start and end with such a character and hold no
        # left-to-right one (RFC 3454 section 6).
        if (any(stringprep.in_table_d2(c) for c in prepared)
                or not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1]))):
            return password
    return prepared


def _pg_timestamp(text):
    """A timestamp or timestamptz as PostgreSQL prints it (DateStyle ISO) -> datetime;
    'infinity' and BC dates stay text, as no datetime holds them."""
    match = re.fullmatch(r'(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?'
                         r'(?:([+-])(\d\d)(?::?(\d\d))?(?::?(\d\d))?)?', text)
    if not match:
        return text
    day, clock, fraction, sign, hours, minutes, seconds = match.groups()
    value = datetime.datetime.fromisoformat(f'{day}T{clock}.{(fraction or "").ljust(6, "0")}')
    if sign:
        offset = datetime.timedelta(hours=int(hours), minutes=int(minutes or 0), seconds=int(seconds or 0))
        value = value.replace(tzinfo=datetime.timezone(-offset if sign == '-' else offset))
    return value


def _pg_date(text):
    """A date (DateStyle ISO) -> date; 'infinity', BC and years past 9999 stay text."""
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        return text


def _pg_bool(text):
    return text == 't'


def _pg_bytea(text):
    return bytes.fromhex(text[2:]) if text.startswith('\\x') else text.encode()


# Type OID -> converter of the text form, for the common types; others stay text.
_PG_FROM_TEXT = {
    16: _pg_bool, 17: _pg_bytea, 20: int, 21: int, 23: int, 26: int,
    700: float, 701: float, 1700: decimal.Decimal,
    1082: _pg_date, 1114: _pg_timestamp, 1184: _pg_timestamp,
}


def _pg_param(value):
    """A Python value -> (type OID, format, bytes) for Bind: text form but for bytes; a str
    goes as 'unknown' so the server gives it the type its place in the statement needs."""
    if value is None:
        return 0, 0, None
    if isinstance(value, bool):
        return 16, 0, b't' if value else b'f'
    if isinstance(value, int):
        return 20, 0, str(value).encode()
    if isinstance(value, float):
        return 701, 0, repr(value).replace('inf', 'Infinity').replace('nan', 'NaN').encode()
    if isinstance(value, str):
        return 0, 0, value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return 17, 1, bytes(value)
    if isinstance(value, decimal.Decimal):
        return 1700, 0, str(value).encode()
    if isinstance(value, datetime.datetime):
        return (1184 if value.tzinfo else 1114), 0, value.isoformat(' ').encode()
    if isinstance(value, datetime.date):
        return 1082, 0, value.isoformat().encode()
    raise sqlite3.ProgrammingError(f'a parameter of type {type(value).__name__} is not supported')


# '?' placeholders -> $1, $2 …, outside quotes, dollar quotes and comments.
_PG_PLACEHOLDER_RE = re.compile(r"""[Ee]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|"(?:[^"]|"")*"|"""
                                r"""\$([A-Za-z_]\w*|)\$.*?\$\1\$|--[^\n]*|/\*.*?\*/|(\?)""", re.S)


@functools.lru_cache(maxsize=512)
def _pg_sql(sql):
    """SQL written for sqlite3 -> the same for PostgreSQL: (text, number of '?')."""
    count = 0

    def number(match):
        nonlocal count
        if match.group(2) is None:
            return match.group(0)
        count += 1
        return f'${count}'
    return _PG_PLACEHOLDER_RE.sub(number, sql), count


# Column types in a migration script mean what they mean to SQLite on both backends:
# INTEGER is 64 bits, REAL a double, BLOB bytes, and INTEGER PRIMARY KEY a row id the
# database picks when an INSERT gives none.
_PG_DDL = [
    (re.compile(r'\bINTEGER\s+PRIMARY\s+KEY(\s+AUTOINCREMENT)?\b', re.I),
     'BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY'),
    (re.compile(r'\bINTEGER\b', re.I), 'BIGINT'),
    (re.compile(r'\bREAL\b', re.I), 'DOUBLE PRECISION'),
    (re.compile(r'\bBLOB\b', re.I), 'BYTEA'),
]


def postgres_schema(script):
    """A migration script written for SQLite -> the same schema on PostgreSQL."""
    for pattern, replacement in _PG_DDL:
        script = pattern.sub(replacement, script)
    return script


class PgRow(tuple):
    """One row, as sqlite3.Row reads: by position, by column name, ``keys()``, ``dict(row)``."""

    def __new__(cls, values, names):
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self):
        return list(self._names)


class PgCursor:
    """The result of ``PgConnection.execute``: its rows, ``rowcount`` (rows changed, -1
    for a SELECT) and ``lastrowid`` (the first column of the last row RETURNING gave, as
    sqlite3's is the last row inserted; else None)."""

    def __init__(self, rows, rowcount, description):
        self._rows = rows
        self.rowcount = rowcount
        self.description = description
        self.lastrowid = rows[-1][0] if rows and rowcount >= 0 else None
        self._at = 0

    def fetchone(self):
        if self._at >= len(self._rows):
            return None
        self._at += 1
        return self._rows[self._at - 1]

    def fetchall(self):
        rows, self._at = self._rows[self._at:], len(self._rows)
        return rows

    def __iter__(self):
        return iter(self.fetchall())


def _pg_socket(settings):
    """A socket to the server ``settings`` name: a unix socket, or TCP with TLS as sslmode
    says (SSLRequest first, then the handshake)."""
    host, timeout, mode = settings['host'], settings['connect_timeout'], settings['sslmode']
    if host.startswith('/'):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(os.path.join(host, f'.s.PGSQL.{settings["port"]}'))
        return sock             # a unix socket never needs TLS
    sock = socket.create_connection((host, settings['port']), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)     # a host that vanished
    if mode == 'disable':
        return sock
    sock.sendall(struct.pack('!ii', 8, 80877103))          # SSLRequest
    answer = sock.recv(1)
    if answer != b'S':
        if mode in ('require', 'verify-ca', 'verify-full'):
            sock.close()
            raise PostgresError(f'PostgreSQL at {host} does not offer TLS, and sslmode={mode} '
                                f'requires it: turn ssl on in postgresql.conf or change sslmode')
        if answer != b'N':
            sock.close()
            raise EOFError('the server answered SSLRequest with neither S nor N')
        return sock
    try:
        context = ssl.create_default_context(cafile=settings['sslrootcert'])
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise PostgresError(f'sslrootcert={settings["sslrootcert"]}: {getattr(exc, "strerror", None) or exc}: '
                            f'give the CA certificate (PEM) that signed the server\'s') from None
    if mode == 'verify-ca' or (mode == 'require' and settings['sslrootcert']):
        context.check_hostname = False      # libpq's require checks the CA once it has one
    elif mode != 'verify-full':
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise PostgresError(f'the certificate of PostgreSQL at {host} is not trusted '
                            f'({exc.verify_message}): check sslrootcert and the host name') from None
    except BaseException:
        sock.close()
        raise


def _pg_description(payload):
    """A RowDescription -> (column name -> index, the converters of the columns)."""
    count = struct.unpack_from('!h', payload)[0]
    names, types, at = {}, [], 2
    for i in range(count):
        end = payload.index(b'\0', at)
        names.setdefault(payload[at:end].decode(), i)
        types.append(_PG_FROM_TEXT.get(struct.unpack_from('!i', payload, end + 7)[0]))
        at = end + 19
    return names, types

def _pg_row(payload, types, names):
    """A DataRow, its values converted -> PgRow."""
    values, at = [], 2
    for convert in types:
        size = struct.unpack_from('!i', payload, at)[0]
        at += 4
        if size < 0:
            values.append(None)
            continue
        text = payload[at:at + size].decode()
        at += size
        values.append(convert(text) if convert else text)
    return PgRow(values, names)


class PgConnection:
    """One connection to PostgreSQL, used by one thread at a time, in autocommit mode as
    Database opens sqlite3's: ``execute(sql, params)`` with '?' placeholders (the values
    travel apart from the SQL, in the extended query protocol: never spliced into it),
    ``executemany``, ``executescript``, ``in_transaction``, and ``with conn:`` committing
    an open transaction (rolling it back on an exception). ``BEGIN IMMEDIATE`` begins a
    transaction that holds the one write lock, as on SQLite (taken with the next statement).

    ``settings`` is what parse_database_url gives. Raises PostgresUnavailable when the
    server cannot be reached, PostgresError for what the server refuses.
    """

    def __init__(self, settings, statement_timeout_ms=None):
        self.settings = settings
        self.status = b'I'          # the last ReadyForQuery's: Idle, in Transaction, Error
        self.parameters = {}        # ParameterStatus: server_version and the like
        self._buffer = bytearray()
        self._deferred = []         # statements to send with the next one (defer)
        self._statements = {}       # (SQL, parameter types) -> the name it was prepared as
        self._names = itertools.count()
        self._parsing = None        # the (key, name) of the statement being prepared
        self._sock = None
        timeout = PG_STATEMENT_TIMEOUT_MS if statement_timeout_ms is None else statement_timeout_ms
        try:
            self._sock = _pg_socket(settings)
            self._startup(settings, timeout)
            # The connect timeout was for reaching the server; a statement may take its own
            # time, and a server that answers nothing for longer than that is gone.
            self._sock.settimeout(timeout / 1000 + settings['connect_timeout'])
        except PostgresError:
            self.close()
            raise
        except (OSError, ssl.SSLError, EOFError) as exc:
            self.close()
            where = settings['host'] if settings['host'].startswith('/') else f'{settings["host"]}:{settings["port"]}'
            raise PostgresUnavailable(f'cannot reach PostgreSQL at {where}: '
                                      f'{getattr(exc, "strerror", None) or exc}') from None

    # Connection and authentication (protocol 3.0: StartupMessage, then Authentication*).

    def _startup(self, settings, timeout_ms):
        params = {'user': settings['user'], 'database': settings['dbname'],
                  'application_name': 'server.py', 'client_encoding': 'UTF8',
                  'DateStyle': 'ISO', 'TimeZone': 'UTC', 'bytea_output': 'hex',
                  'statement_timeout': str(int(timeout_ms))}
        body = b''.join(f'{key}\0{value}\0'.encode() for key, value in params.items()) + b'\0'
        self._sock.sendall(struct.pack('!ii', len(body) + 8, 196608) + body)
        scram = proven = None
        while True:
            kind, payload = self._read_message()
            if kind == b'R':
                code = struct.unpack_from('!i', payload)[0]
                if code == 0:
                    if scram is not None and not proven:
                        # A server that skips its proof may be one that does not know the password.
                        raise PostgresError('the server signed us in without proving it knows the '
                                            'password (SCRAM): is it the database the URL names?')
                    continue
                password = settings['password']
                if password is None and code in (3, 5, 10):
                    raise PostgresError(f'PostgreSQL asks user {settings["user"]} for a password: '
                                        f'put it in the --database URL (user:password@host)')
                if code == 3:           # cleartext
                    self._send(b'p', password.encode() + b'\0')
                elif code == 5:         # md5(md5(password + user) + salt)
                    inner = hashlib.md5((password + settings['user']).encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
                    self._send(b'p', b'md5' + outer.encode() + b'\0')
                elif code == 10:        # SASL: the mechanisms the server offers
                    if b'SCRAM-SHA-256\0' not in payload[4:]:
                        raise PostgresError('PostgreSQL offers no SASL mechanism this client knows')
                    scram = _scram_client(password)
                    first = next(scram)
                    self._send(b'p', b'SCRAM-SHA-256\0' + struct.pack('!i', len(first)) + first)
                elif code == 11:        # SASL continue
                    self._send(b'p', scram.send(payload[4:]))
                elif code == 12:        # SASL final: the server's proof
                    with contextlib.suppress(StopIteration):
                        scram.send(payload[4:])
                        raise PostgresError('the SCRAM exchange did not end where it should')
                    proven = True
                else:
                    raise PostgresError(f'PostgreSQL asks for an authentication this client does '
                                        f'not speak (code {code}): use scram-sha-256 or md5 in pg_hba.conf')
            elif kind == b'Z':
                self.status = payload[:1]
                return
            else:
                self._other(kind, payload)

    # Messages.

    def _send(self, kind, payload):
        self._sock.sendall(kind + struct.pack('!i', len(payload) + 4) + payload)

    def _read_message(self):
        buffer = self._buffer
        while True:
            if len(buffer) >= 5:
                end = struct.unpack_from('!i', buffer, 1)[0] + 1
                if len(buffer) >= end:
                    kind, payload = bytes(buffer[:1]), bytes(buffer[5:end])
                    del buffer[:end]
                    return kind, payload
            chunk = self._sock.recv(65536)
            if not chunk:
                raise EOFError('PostgreSQL closed the connection')
            buffer += chunk

    def _other(self, kind, payload):
        """A message any exchange may bring: an error (raised), a notice, a parameter."""
        if kind == b'E':
            raise self._error(payload)
        if kind == b'S':
            name, _, value = payload[:-1].partition(b'\0')
            self.parameters[name.decode()] = value.decode()
        elif kind == b'N':
            fields = self._fields(payload)
            log.debug('PostgreSQL: %s', fields.get('M', ''))
        # BackendKeyData (K) and NotificationResponse (A) are not used.

    @staticmethod
    def _fields(payload):
        return {chr(item[0]): item[1:].decode(errors='replace')
                for item in payload.split(b'\0') if item}

    @staticmethod
    def _error(payload):
        """An ErrorResponse -> the exception its SQLSTATE calls for."""
        fields = PgConnection._fields(payload)
        state = fields.get('C', '')
        cls = PostgresIntegrityError if state.startswith('23') else \
            PostgresUnavailable if state in _PG_GONE_STATES or state.startswith('08') else PostgresError
        return cls(fields.get('M', 'unknown error'), state, fields.get('D', ''))

    # Statements.

    def _exchange(self, messages):
        """Send ``messages``, then read until ReadyForQuery: (rows, rowcount, names)."""
        if self._sock is None:
            raise PostgresUnavailable('the connection to PostgreSQL is closed')
        waits = 1 + len(self._deferred)         # a ReadyForQuery ends each Query, and the Sync
        if self._deferred:
            messages = b''.join(self._query(sql) for sql in self._deferred) + messages
            self._deferred = []
        try:
            self._sock.sendall(messages)
            rows, rowcount, names, types, failure = [], -1, None, (), None
            while True:
                kind, payload = self._read_message()
                if kind in b'DTC' and waits > 1:      # a deferred statement's rows: not ours
                    continue
                if kind == b'D':
                    rows.append(_pg_row(payload, types, names))
                elif kind == b'T':
                    names, types = _pg_description(payload)
                elif kind == b'C':
                    tag = payload.rstrip(b'\0').split()
                    if tag[0] in (b'INSERT', b'UPDATE', b'DELETE', b'MERGE', b'COPY') and tag[-1].isdigit():
                        rowcount = int(tag[-1])
                elif kind == b'1' and self._parsing:    # ParseComplete: the name exists now
                    self._statements[self._parsing[0]] = self._parsing[1]
                elif kind == b'Z':
                    self.status = payload[:1]
                    waits -= 1
                    if not waits:
                        break
                elif kind == b'E':
                    # The first error is the one to tell (a deferred statement's, then the
                    # aborted transaction's); read on to the last ReadyForQuery.
                    failure = failure or self._error(payload)
                elif kind in b'GH':     # COPY: its data would need a protocol of its own
                    failure = failure or PostgresError('COPY FROM STDIN and TO STDOUT are not '
                                                       'supported: use INSERT and SELECT')
                    if kind == b'G':
                        # The server waits for data, and ignored the Sync sent before: refuse
                        # the data, then Sync again for the ReadyForQuery.
                        self._sock.sendall(self._message(b'f', b'not supported\0') + b'S\0\0\0\x04')
                elif kind not in b'23nIsdc':    # *Complete, NoData, EmptyQuery, Suspended, COPY's
                    self._other(kind, payload)
        except (OSError, EOFError, struct.error) as exc:
            self.close()
            raise PostgresUnavailable(f'lost the connection to PostgreSQL: {exc}') from None
        except BaseException:
            # Whatever stopped the reading (a server gone, a value no converter knew)
            # left the reply half read: the connection cannot be trusted with another.
            self.close()
            raise
        if failure is not None:
            raise failure
        return rows, rowcount, names

    def execute(self, sql, params=(), _retry=False):
        if self._sock is None:
            raise PostgresUnavailable('the connection to PostgreSQL is closed')
        if ' '.join(sql.split()).upper() == 'BEGIN IMMEDIATE':
            # Sent with the next statement, which runs once the lock is this transaction's.
            self.defer(f'BEGIN; SELECT pg_advisory_xact_lock({_PG_WRITE_LOCK})')
            return PgCursor([], -1, None)
        text, count = _pg_sql(sql)
        params = tuple(params)
        if len(params) != count:
            raise sqlite3.ProgrammingError(f'the statement has {count} placeholders, '
                                           f'and {len(params)} values were given')
        encoded = [_pg_param(value) for value in params]
        types = tuple(p[0] for p in encoded)
        # A statement met before (with these parameter types) was parsed and planned once,
        # under its name; a new one is parsed now, named if there is room.
        name = self._statements.get((text, types))
        parse = b''
        if name is None:
            name = b''
            if len(self._statements) < PG_STATEMENTS_KEPT:
                name = b's%d' % next(self._names)
            parse = self._message(b'P', name + b'\0' + text.encode() + b'\0'
                                  + struct.pack(f'!h{count}i', count, *types))
            self._parsing = ((text, types), name) if name else None
        bind = [b'\0', name, b'\0', struct.pack(f'!h{count}h', count, *(p[1] for p in encoded)),
                struct.pack('!h', count)]
        for _, _, data in encoded:
            bind.append(struct.pack('!i', -1) if data is None else struct.pack('!i', len(data)) + data)
        bind.append(b'\0\0')        # results: every column in text form
        messages = b''.join((parse, self._message(b'B', b''.join(bind)),
                             self._message(b'D', b'P\0'), self._message(b'E', b'\0\0\0\0\0'),
                             b'S\0\0\0\x04'))
        try:
            rows, rowcount, names = self._exchange(messages)
        except PostgresError as exc:
            # A kept statement the server no longer has (DISCARD ALL, a pooler), or whose
            # table changed under its plan: prepared anew, and run again unless a transaction
            # (which the failure ended) was under way.
            if not parse and exc.sqlstate in ('26000', '0A000'):
                if exc.sqlstate == '26000':
                    self._statements.clear()
                else:
                    del self._statements[(text, types)]
                    if self.status == b'I':     # in a failed transaction it would fail too
                        self.defer(f'DEALLOCATE {name.decode()}')
                if self.status == b'I' and not _retry:
                    return self.execute(sql, params, _retry=True)
            raise
        finally:
            self._parsing = None
        return PgCursor(rows, rowcount, names)

    def defer(self, sql):
        """Send ``sql`` (no parameters, no rows: a SAVEPOINT, a RELEASE) in the same write
        as the next statement, a round trip saved; an error it meets is raised there."""
        self._deferred.append(sql)

    def executemany(self, sql, seq_of_params):
        total = 0
        for params in seq_of_params:
            total += max(self.execute(sql, params).rowcount, 0)
        return PgCursor([], total, None)

    def executescript(self, script):
        """Run several statements (no parameters), in the simple query protocol. The server
        answers once all have run, each within statement_timeout: the socket waits as long."""
        timeout = self._sock.gettimeout() if self._sock is not None else None
        try:
            if self._sock is not None:
                self._sock.settimeout(None)
            self._exchange(self._query(script))
        finally:
            if self._sock is not None:
                self._sock.settimeout(timeout)

    @staticmethod
    def _message(kind, payload):
        return kind + struct.pack('!i', len(payload) + 4) + payload

    def _query(self, sql):
        return self._message(b'Q', sql.encode() + b'\0')

    @property
    def in_transaction(self):
        return self.status != b'I' or bool(self._deferred)

    def usable(self):
        """Idle and not closed by the server meanwhile (a restart ends idle connections with
        an error and EOF, which wait unread): worth handing to the next call."""
        if self._sock is None or self.status != b'I' or self._buffer:
            return False
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def commit(self):
        if self.status == b'I' and self._sock is not None:
            self._deferred = []     # a BEGIN not sent yet: nothing to commit, no lock to take
        elif self.status == b'E' and self._sock is not None:
            # A statement failed and its error was caught: PostgreSQL ended the transaction
            # (its COMMIT would quietly roll back), where SQLite would commit the rest.
            self._exchange(self._query('ROLLBACK'))
            raise PostgresError('a statement failed in this transaction, so PostgreSQL ended it: '
                                'nothing of it was committed', '25P02')
        elif self.in_transaction:
            self._exchange(self._query('COMMIT'))

    def rollback(self):
        if self.status == b'I':
            self._deferred = []
        # A connection lost in a transaction has nothing left to roll back: the server did.
        elif self._sock is not None:
            self._exchange(self._query('ROLLBACK'))

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if self._sock is None:
            if kind is None and self.in_transaction:
                raise PostgresUnavailable('the connection to PostgreSQL was lost before the commit')
            return
        if kind is None:
            self.commit()
        else:
            with contextlib.suppress(PostgresError):
                self.rollback()

    def close(self):
        sock, self._sock = self._sock, None
        self._deferred = []
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(b'X\0\0\0\x04')        # Terminate
            sock.close()


class Database:
    """SQLite on one dedicated thread, or PostgreSQL on a few, so the event loop never waits on it.

    ``path`` is the SQLite file, or a ``postgresql://`` URL (see parse_database_url): then
    PG_POOL_SIZE threads each keep a connection, opened again when the server restarted
    or went away (meanwhile each call is an HTTPError 503 with Retry-After). The same SQL
    runs on both (the README's "Beyond one machine" says what it must respect): '?'
    placeholders, and migration scripts whose types PostgreSQL reads as SQLite does.

    WAL journal, ``busy_timeout``, foreign keys, ``synchronous=FULL`` (a commit that was
    acknowledged survives a crash). ``migrations`` is a list of SQL scripts, each one or more
    statements (the last ``;`` optional): script N of the app called ``name`` runs once, in a
    transaction with its row in ``server_migrations``, so apps sharing a database keep their
    counts apart. Every call takes parameters; a lock held too long by another process
    becomes HTTPError 503 with Retry-After.

    ``await db.execute(sql, params)`` -> ``Executed``, an int (the last row id) whose
    ``.rowcount`` is the number of rows changed; ``await db.fetchall(...)`` -> list of dicts;
    ``await db.fetchone(...)`` -> a dict or None; ``await db.run(fn, *args)`` runs ``fn(conn, *args)``
    in the database thread (``with conn:`` makes it one transaction); ``await
    db.grouped(fn, *args)`` runs it in a transaction shared with the grouped calls of the
    moment (group commit: one fsync for many inserts). From a plain def handler use
    ``db.run_sync(fn, *args)``.
    """

    #: Tables the framework itself needs; created if missing, never dropped.
    FRAMEWORK_SCHEMA = '''
        CREATE TABLE IF NOT EXISTS sessions (
            id TEXT PRIMARY KEY,          -- sha256 of the cookie value, never the value itself
            data TEXT NOT NULL,
            expires REAL NOT NULL
        );
        CREATE INDEX IF NOT EXISTS sessions_expires ON sessions (expires);
    '''

    #: Which app's script N has run, and when: the record migrations are applied by.
    MIGRATIONS_SCHEMA = '''
        CREATE TABLE IF NOT EXISTS server_migrations (
            app TEXT NOT NULL,
            number INTEGER NOT NULL,
            applied REAL NOT NULL,
            PRIMARY KEY (app, number)
        );
    '''

    #: What PostgreSQL adds: the secret that keys session ids and CSRF tokens, shared by
    #: every host (on SQLite it is data/secret.key).
    POSTGRES_SCHEMA = '''
        CREATE TABLE IF NOT EXISTS server_secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    '''

    def __init__(self, path, migrations=(), name='app', source=None):
        self.path = path
        self.migrations = list(migrations)
        self.name = name
        self.source = source        # where the scripts are written, for the message if one fails
        self._executor = None
        self._conn = None
        self._local = threading.local()     # PostgreSQL: each database thread's connection
        self._pg_conns = set()
        self._migrated = False
        self._lock = threading.Lock()
        self._migrating = threading.Lock()     # the first connection's migrations, once
        self._outage = None         # PostgreSQL: since when it could not be reached, if now
        self._groups = weakref.WeakKeyDictionary()   # event loop -> _Group (a test may run several)

    @property
    def path(self):
        """The SQLite file, or the PostgreSQL URL (an App on another --data or --database
        sets it before it starts)."""
        return self._path

    @path.setter
    def path(self, path):
        self._path = path
        # Which backend it names, told once here, not on every call.
        self.kind = 'postgresql' if path.lower().startswith(('postgresql:', 'postgres:')) else 'sqlite'

    @property
    def where(self):
        """The database, for messages: the file, or the URL without its password."""
        return redact_url(self.path)

    def _ensure_executor(self):
        with self._lock:
            if self._executor is None:
                threads = PG_POOL_SIZE if self.kind == 'postgresql' else 1
                self._executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=self.kind)
            return self._executor

    def _connect(self):
        # Workers starting together on a new database meet locks that SQLite reports at once,
        # without waiting out busy_timeout (switching the file to WAL is one): try again for a
        # while, in this thread, before calling the database busy.
        deadline = time.monotonic() + DB_BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return self._connect_once()
            except sqlite3.OperationalError as exc:
                if time.monotonic() > deadline or not _is_busy(exc):
                    raise
                time.sleep(0.05)

    def _connect_once(self):
        os.makedirs(os.path.dirname(self.path), mode=DATA_DIR_MODE, exist_ok=True)
        _private_database_files(self.path)
        conn = sqlite3.connect(self.path, timeout=DB_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f'PRAGMA busy_timeout = {int(DB_BUSY_TIMEOUT_MS)}')
            conn.execute('PRAGMA journal_mode = WAL')
            conn.execute('PRAGMA synchronous = FULL')
            conn.execute('PRAGMA foreign_keys = ON')
            conn.executescript(self.FRAMEWORK_SCHEMA)
            if self.migrations:
                self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _sqlite_error_is(exc, (_SQLITE_NOTADB,), ('not a database',)):
                raise StartupError(f'{self.path} is not an SQLite database: move it away (a new '
                                   f'one is made) or use the data folder it belongs in') from None
            if _sqlite_error_is(exc, (_SQLITE_CORRUPT,), ('malformed',)):
                raise StartupError(f'{self.path} is damaged ({exc}): restore a backup, or '
                                   f'move it away to start a new one') from None
            raise
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _migrate(self, conn):
        """Run this app's scripts that its rows in server_migrations do not list yet."""
        conn.execute('BEGIN IMMEDIATE')
        try:
            tracked = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'server_migrations'").fetchone()
            legacy = 0 if tracked else conn.execute('PRAGMA user_version').fetchone()[0]
            conn.execute(self.MIGRATIONS_SCHEMA)
            if legacy:
                # Before this table, one count in user_version stood for the scripts of
                # whichever app used the database: the app that made it, and opens it first
                # now. user_version is left as it was: taking over rewrites nothing.
                self._check_not_newer(legacy, f'schema {legacy}')
                conn.executemany('INSERT INTO server_migrations VALUES (?, ?, ?)',
                                 [(self.name, n, time.time()) for n in range(1, legacy + 1)])
            applied = conn.execute('SELECT MAX(number) FROM server_migrations WHERE app = ?',
                                   (self.name,)).fetchone()[0] or 0
            self._check_not_newer(applied, f'app {self.name!r} at migration {applied}')
            conn.execute('COMMIT')
        except BaseException:
            if conn.in_transaction:
                conn.execute('ROLLBACK')
            raise
        for number, script in enumerate(self.migrations, 1):
            if number > applied:
                self._apply(conn, number, script)

    def _check_not_newer(self, applied, what):
        if applied > len(self.migrations):
            # Its tables are not the ones this code knows: writing would damage them.
            raise StartupError(f'{self.where} was written by a newer server.py ({what}, this one '
                               f'knows {len(self.migrations)}): upgrade server.py or restore a backup')

    def _apply(self, conn, number, script):
        """Script ``number`` and its row in server_migrations, committed together or not at all."""
        try:
            # executescript commits a transaction it finds open; one it leaves open goes on.
            # The record is its own statement, never text joined to the script's last one
            # (which may lack its ';').
            conn.executescript(f'BEGIN IMMEDIATE;\n{script}')
            conn.execute('INSERT INTO server_migrations VALUES (?, ?, ?)', (self.name, number, time.time()))
            conn.execute('COMMIT')
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute('ROLLBACK')
            # Workers starting together on a new database: another one may have run this
            # script between our reading the count and our taking the lock.
            if conn.execute('SELECT 1 FROM server_migrations WHERE app = ? AND number = ?',
                            (self.name, number)).fetchone():
                return
            if _is_busy(exc) or _sqlite_error_is(exc, (_SQLITE_NOTADB, _SQLITE_CORRUPT),
                                                 ('not a database', 'malformed')):
                raise
            where = f'fix the script in {self.source}' if self.source else 'fix the script'
            raise StartupError(f'migration {number} of app {self.name!r} failed: '
                               f'{" ".join(str(exc).split())}: {where}') from None

    def _call(self, fn, args):
        if self.kind == 'postgresql':
            return self._call_postgres(fn, args)
        try:
            if self._conn is None:
                self._connect()
            return fn(self._conn, *args)
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise HTTPError(503, 'the database is busy; try again', {'Retry-After': '2'}) from exc
            raise

    def _call_postgres(self, fn, args):
        conn = getattr(self._local, 'conn', None)
        try:
            if conn is None or not conn.usable():
                self._drop(conn)
                conn = self._local.conn = PgConnection(parse_database_url(self.path, '')[1])
                self._pg_conns.add(conn)
                if not self._migrated:
                    with self._migrating:
                        if not self._migrated:
                            _migrate_postgres(self, conn)
                            self._migrated = True
            if self._outage is not None:
                outage, self._outage = self._outage, None
                log.warning('database reachable again after %.1f s', time.monotonic() - outage)
            try:
                return fn(conn, *args)
            finally:
                conn.rollback()     # what a call left open (it raised) is undone, not kept
        except PostgresUnavailable as exc:
            self._drop(conn)
            if self._migrated and self._outage is None:     # before, open() says why, once
                self._outage = time.monotonic()
                log.warning('database unavailable: %s (requests get 503 until it is back)', exc)
            raise HTTPError(503, 'the database is unavailable; try again',
                            {'Retry-After': str(PG_RETRY_AFTER_S)}) from exc
        except PostgresError as exc:
            if exc.sqlstate in _PG_BUSY_STATES:
                raise HTTPError(503, 'the database is busy; try again',
                                {'Retry-After': str(PG_RETRY_AFTER_S)}) from exc
            raise

    def _drop(self, conn):
        if conn is not None:
            conn.close()
            self._pg_conns.discard(conn)
        self._local.conn = None

    async def open(self):
        """Connect and migrate now: at start, a script that fails or a database that cannot be
        reached stops the start (StartupError naming it) instead of failing every request."""
        try:
            await self.run(_no_statement)
        except BaseException as exc:
            await self.close()       # a failed start leaves no database thread behind
            cause = exc.__cause__ if isinstance(exc, HTTPError) else exc
            if isinstance(cause, PostgresError):
                fix = 'start it, or fix' if isinstance(cause, PostgresUnavailable) else 'fix'
                raise StartupError(f'PostgreSQL at {self.where}: {cause.message}: {fix} '
                                   f'--database (SERVER_DATABASE)') from None
            if isinstance(exc, HTTPError):      # busy: another process holds the lock
                raise StartupError(f'{self.path} is locked by another process: stop it, '
                                   f'or try again') from exc
            raise

    def load_secret(self, path):
        """The key of session ids and CSRF tokens -- blocking: the file ``path`` (made if
        missing) on SQLite; on PostgreSQL a row every host shares, so a session begun on one
        goes on on any other."""
        if self.kind == 'sqlite':
            return _load_secret(path)
        return self.run_sync(_shared_secret)

    async def run(self, fn, *args):
        """Run ``fn(conn, *args)`` in a database thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._ensure_executor(), self._call, fn, args)

    async def grouped(self, fn, *args):
        """Run ``fn(conn, *args)`` in one transaction with the other grouped calls made
        meanwhile (group commit), and return its result once that transaction is durable.

        Each call runs in a savepoint of its own: one that raises is undone alone and its
        request gets the exception, the others commit. ``fn`` must not begin or commit a
        transaction itself. Calls made in one turn of the loop go together, and those
        made while a group commits go with the next one: N inserts cost one fsync, not N.
        A call whose request was cancelled before its group left is not run.
        """
        loop = asyncio.get_running_loop()
        state = self._groups.get(loop)
        if state is None:
            state = self._groups[loop] = _Group()
        done = loop.create_future()
        state.calls.append((fn, args, done))
        if len(state.calls) == 1 and not state.committing:
            loop.call_soon(self._commit_group, state)
        return await done

    def _commit_group(self, state):
        group = [call for call in state.calls if not call[2].cancelled()]
        state.calls = []
        if not group:
            return
        state.committing = True
        commit = asyncio.ensure_future(self.run(_run_group, [call[:2] for call in group]))

        def committed(commit):
            try:
                if commit.cancelled():         # the loop is being shut down
                    outcomes = [(False, None)] * len(group)
                elif commit.exception() is not None:
                    outcomes = [(False, commit.exception())] * len(group)
                else:
                    outcomes = commit.result()
                for (_, _, done), (ok, value) in zip(group, outcomes):
                    if done.done():
                        continue
                    if ok:
                        done.set_result(value)
                    elif value is None:
                        done.cancel()
                    else:
                        done.set_exception(value)
            finally:
                state.committing = False
                if state.calls:                # made while this group committed: the next one
                    self._commit_group(state)
        commit.add_done_callback(committed)

    def run_sync(self, fn, *args):
        """The same as ``run`` for plain def handlers (worker threads); blocks until done."""
        return self._ensure_executor().submit(self._call, fn, args).result()

    async def execute(self, sql, params=()):
        return await self.run(_db_execute, sql, params)

    async def fetchall(self, sql, params=()):
        return await self.run(_db_fetchall, sql, params)

    async def fetchone(self, sql, params=()):
        rows = await self.run(_db_fetchall, sql, params)
        return rows[0] if rows else None

    async def close(self):
        """Close the connection (if one was ever opened) and stop the database thread."""
        executor = self._executor
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._close_connection)
        executor.shutdown(wait=True)
        self._executor = None

    def _close_connection(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        for conn in list(self._pg_conns):
            conn.close()
        self._pg_conns.clear()
        self._migrated = False


def _migrate_postgres(db, conn):
    """Database._migrate for PostgreSQL: each script and its row in one transaction, under
    the write lock, so hosts starting together run each script once."""
    with conn:
        conn.execute('BEGIN IMMEDIATE')
        conn.executescript(postgres_schema(db.FRAMEWORK_SCHEMA + db.MIGRATIONS_SCHEMA
                                           + db.POSTGRES_SCHEMA))
        applied = conn.execute('SELECT MAX(number) FROM server_migrations WHERE app = ?',
                               (db.name,)).fetchone()[0] or 0
    db._check_not_newer(applied, f'app {db.name!r} at migration {applied}')
    for number, script in enumerate(db.migrations, 1):
        if number <= applied:
            continue
        try:
            with conn:
                conn.execute('BEGIN IMMEDIATE')
                if not conn.execute('SELECT 1 FROM server_migrations WHERE app = ? AND number = ?',
                                    (db.name, number)).fetchone():
                    conn.executescript(postgres_schema(script))
                    conn.execute('INSERT INTO server_migrations VALUES (?, ?, ?)',
                                 (db.name, number, time.time()))
        except PostgresError as exc:
            if isinstance(exc, PostgresUnavailable):
                raise
            where = f'fix the script in {db.source}' if db.source else 'fix the script'
            raise StartupError(f'migration {number} of app {db.name!r} failed on PostgreSQL: '
                               f'{" ".join(exc.message.split())}: {where}') from None


class _Group:
    """One event loop's grouped calls: those waiting for the next commit, and whether one
    is in the database thread now."""

    __slots__ = ('calls', 'committing')

    def __init__(self):
        self.calls = []          # (fn, args, future)
        self.committing = False


def _run_group(conn, calls):
    """Database.grouped's transaction: each call in a savepoint; [(ok, result or exception)]."""
    outcomes = []
    # PostgreSQL sends a savepoint's statements with the call's next one: a round trip each.
    quietly = getattr(conn, 'defer', conn.execute)
    conn.execute('BEGIN IMMEDIATE')
    try:
        for fn, args in calls:
            quietly('SAVEPOINT call')
            try:
                value = fn(conn, *args)
                if getattr(conn, 'status', None) == b'E':
                    # It caught a statement's error and went on: on PostgreSQL that error
                    # ended the transaction, so what the call wrote cannot be kept.
                    raise PostgresError('a statement of this call failed and the call went on; on '
                                        'PostgreSQL a failed statement ends the transaction', '25P02')
            except Exception as exc:
                try:
                    conn.execute('ROLLBACK TO call')
                except Exception:
                    # The transaction itself failed (its write lock, its connection): that is
                    # every call's error.
                    raise exc from None
                if isinstance(exc, StopIteration):    # a future refuses it, as a coroutine would
                    exc = RuntimeError('a grouped call raised StopIteration')
                outcomes.append((False, exc))
            else:
                outcomes.append((True, value))
            quietly('RELEASE call')
        conn.execute('COMMIT')
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):    # the error that got here is the one to tell
                conn.execute('ROLLBACK')
        raise
    return outcomes


class Executed(int):
    """What ``db.execute`` returns: the last row id (an int, as it always was), with the
    number of rows the statement changed as ``.rowcount`` (-1 for a statement that changes
    none, such as a SELECT) and the id again as ``.lastrowid``."""

    def __new__(cls, lastrowid, rowcount):
        executed = super().__new__(cls, lastrowid or 0)
        executed.rowcount = rowcount
        return executed

    @property
    def lastrowid(self):
        return int(self)

    def __repr__(self):
        return f'Executed(lastrowid={int(self)}, rowcount={self.rowcount})'


def _no_statement(conn):
    """Database.open's call: the connection and migrations are all it needs."""


def _shared_secret(conn):
    conn.execute('INSERT INTO server_secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING',
                 ('session', secrets.token_bytes(32)))
    return bytes(conn.execute("SELECT value FROM server_secrets WHERE name = 'session'").fetchone()[0])


def _db_execute(conn, sql, params):
    cursor = conn.execute(sql, params)
    cursor.fetchall()       # sqlite3 counts the rows of an INSERT ... RETURNING once they are read
    return Executed(cursor.lastrowid, cursor.rowcount)


def _db_fetchall(conn, sql, params):
    return [dict(row) for row in conn.execute(sql, params).fetchall()]


class Session(dict):
    """Server-side session data for one browser (dict-like, JSON-serialisable values).

    ``id`` is the cookie's value, None until something needs one (``ensure_id()``); a row
    is written only once something is stored. ``rotate()`` gives it a new id (do it at
    login: no session fixation, and a new CSRF token); ``destroy()`` deletes it at the
    end of the request. Keys are strings and values what JSON holds: anything else is a
    TypeError where it is assigned, not a failed save after the handler returned. A list
    or dict changed in place is saved too (``should_save`` compares the row's JSON).
    """

    def __init__(self, data=None, sid=None, expires=0.0, stored=False, mint=None, row_json=None):
        super().__init__(data or {})
        self.row_json = _nested_json(row_json)
        self.id = sid
        self.mint = mint or _random_session_id   # makes a new id (SessionStore.mint)
        self.old_id = None
        self.expires = expires
        self.stored = stored         # a row holds it; else at most the cookie exists
        self.send_cookie = False     # the response sets the cookie even with nothing to store
        self.modified = False
        self.destroyed = False

    def ensure_id(self):
        """The session's id, made now (and sent as the cookie) if it has none."""
        if self.id is None:
            self.id = self.mint()
            self.send_cookie = True
        return self.id

    def __setitem__(self, key, value):
        _check_session_value(key, value)
        super().__setitem__(key, value)
        self.modified = True

    def __delitem__(self, key):
        super().__delitem__(key)
        self.modified = True

    def pop(self, *args):
        self.modified = True
        return super().pop(*args)

    def setdefault(self, key, default=None):
        if key not in self:
            _check_session_value(key, default)
            self.modified = True
        return super().setdefault(key, default)

    def update(self, *args, **kwargs):
        items = dict(*args, **kwargs)
        for key, value in items.items():
            _check_session_value(key, value)
        super().update(items)
        self.modified = True

    def __ior__(self, other):
        self.update(other)
        return self

    def popitem(self):
        self.modified = True
        return super().popitem()

    def clear(self):
        super().clear()
        self.modified = True

    def rotate(self):
        """Move the data to a fresh id; the old one is deleted when the session is saved."""
        if self.id is not None and self.old_id is None:
            self.old_id = self.id
        self.id = None
        self.stored = False
        self.modified = True

    def destroy(self):
        self.clear()
        self.destroyed = True
        if self.id is not None:
            self.old_id = self.id

    def lifetime(self):
        return SESSION_LIFETIME_S if self else ANON_SESSION_LIFETIME_S

    def should_save(self):
        if not self.modified and self.row_json is not None and json.dumps(self) != self.row_json:
            self.modified = True        # a list or dict in it was changed in place
        if self.modified:
            return bool(self) or self.stored or self.old_id is not None
        # Sliding expiry: push the expiry forward at most once per tenth of the lifetime.
        lifetime = self.lifetime()
        return self.stored and self.expires - time.time() < lifetime * 0.9


def _nested_json(row_json):
    """A session row's JSON if it may hold a list or dict, else None. Only such a session can
    change without an assignment (``session['cart'].append(x)``), so only its JSON is kept,
    to compare at save time; one that holds scalars alone costs no comparison."""
    return row_json if row_json and ('[' in row_json or row_json.count('{') > 1) else None


def _check_session_value(key, value):
    """Refuse what a session row cannot hold, naming the key (TypeError)."""
    if not isinstance(key, str):
        raise TypeError(f'session keys are strings, not {type(key).__name__} ({key!r})')
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f'session[{key!r}] cannot be stored: {exc} (a session holds what JSON '
                        f'holds: str, int, float, bool, None, lists and dicts of them)') from exc


#: The data folder's secret key (CSRF tokens, and App.keyed_hash for the app): made at first
#: start, mode 0600; deleting it signs everyone out.
SECRET_FILE = 'secret.key'
SECRET_BYTES = 32


def _load_secret(path):
    """The secret key in ``path``, made first if there is none -- blocking.

    It is written whole under a temporary name and linked into place, which fails if
    the name exists (as O_EXCL does): processes starting together (workers, a second
    app on the folder) all end up reading the one that was linked first, never half of one.
    """
    try:
        with open(path, 'rb') as f:
            secret = f.read()
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=DATA_DIR_MODE, exist_ok=True)
        temporary = f'{path}.{secrets.token_hex(8)}.tmp'
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(SECRET_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
        with open(path, 'rb') as f:
            secret = f.read()
    if len(secret) < SECRET_BYTES:
        raise StartupError(f'{path}: too short to be a secret key (delete it to make a new one, '
                           f'which signs everyone out)')
    return secret


def _session_key(sid):
    return hashlib.sha256(sid.encode('utf-8', 'replace')).hexdigest()


def _session_cookie_name(request):
    # Over HTTPS the __Host- prefix makes browsers refuse the cookie unless it is Secure,
    # Path=/ and has no Domain, so a sibling subdomain or a plain-HTTP answer cannot plant
    # one (RFC 6265bis 4.1.3.2). Each scheme reads only its own name.
    return '__Host-sid' if request.is_secure else 'sid'


# The shape of our session ids (SessionStore.mint): any other cookie value is not one.
_SESSION_ID_RE = re.compile(r'[A-Za-z0-9_-]{43}')


def _random_session_id():
    """An id no server key vouches for: a Session made outside an App keeps it only in a row."""
    return secrets.token_urlsafe(32)


class SessionStore:
    """Sessions as rows keyed by the sha256 of their id, the cookie's value.

    An id is 128 random bits and a tag: a keyed hash of them under the data folder's
    secret (``mint``). A cookie value that is not one of these is never adopted: the
    visitor gets a fresh, empty session with a new id. An id this server minted but that
    has no row (a visitor who has only seen a form, or one whose session expired) carries
    on, empty, and gets its row when something is stored in it; one a client made up has
    no valid tag and is replaced, so nobody can choose the id a victim's browser will use.
    """

    def __init__(self, db, keyed_hash=None):
        self.db = db
        if keyed_hash is None:        # a store of its own: a key of its own, for this process
            key = secrets.token_bytes(32)

            def keyed_hash(purpose, value):
                return hmac.new(key, f'{purpose}\0{value}'.encode(), hashlib.sha256).hexdigest()
        self._keyed_hash = keyed_hash
        self._last_purge = 0.0

    def _tag(self, nonce):
        digest = bytes.fromhex(self._keyed_hash('session id', nonce))
        return base64.urlsafe_b64encode(digest).decode('ascii')[:21]

    def mint(self):
        """A new session id: 22 random characters, then 21 of their tag."""
        nonce = secrets.token_urlsafe(16)
        return nonce + self._tag(nonce)

    def minted(self, sid):
        """Did this server (a process sharing its data folder's secret) make ``sid``?"""
        return hmac.compare_digest(sid[22:], self._tag(sid[:22]))

    def new(self):
        """A fresh, empty session; its id is minted when something needs it."""
        return Session(mint=self.mint)

    async def load(self, sid):
        if not _SESSION_ID_RE.fullmatch(sid):
            return self.new()
        row = await self.db.fetchone('SELECT data, expires FROM sessions WHERE id = ? AND expires > ?',
                                     (_session_key(sid), time.time()))
        if row is None:
            return Session(None, sid, mint=self.mint) if self.minted(sid) else self.new()
        try:
            data = json.loads(row['data'])
        except ValueError:
            data = {}
        return Session(data, sid, row['expires'], stored=True, mint=self.mint, row_json=row['data'])

    async def load_for(self, request):
        """Give ``request`` the session its cookie names: a database read only for a request
        that brings one; others get an empty session on first use (Request.session)."""
        sid = request.cookies.get(_session_cookie_name(request))
        if sid:
            request._session = await self.load(sid)
        request._session_ready = True

    async def save_for(self, request, response):
        """Store ``request``'s session if it changed, and set or delete its cookie on ``response``."""
        session = request.session
        name, secure = _session_cookie_name(request), request.is_secure
        if session.destroyed:
            if session.old_id:
                await self.delete(session.old_id)
            response.delete_cookie(name, secure=secure)
            return
        if session.should_save():
            if not await self.save(session):
                # deleted meanwhile (a logout in another tab): never brought back
                response.delete_cookie(name, secure=secure)
                return
        elif not session.send_cookie:
            return
        response.set_cookie(name, session.id, max_age=session.lifetime(),
                            secure=secure, httponly=True, samesite='Lax')

    async def save(self, session):
        """Store the session; False if a loaded session's row was deleted meanwhile.

        A session first stored (new or rotated) is inserted; one loaded from the database
        is only ever updated, so a request still in flight cannot resurrect a session that
        a logout deleted.
        """
        key = _session_key(session.ensure_id())
        session.expires = time.time() + session.lifetime()
        data = json.dumps(dict(session))
        if not session.stored and session.old_id is None:
            # A first write shares its transaction (and fsync) with the others of the moment.
            stored = await self.db.grouped(_create_session, key, data, session.expires, time.time())
        else:
            stored = await self.db.run(_save_session, key,
                                       _session_key(session.old_id) if session.old_id else None,
                                       data, session.expires, not session.stored)
        session.stored = stored
        session.row_json = _nested_json(data)
        session.modified = False
        session.old_id = None
        if time.monotonic() - self._last_purge > 600:
            self._last_purge = time.monotonic()
            await self.purge()
        return stored

    async def claim(self, session, key, value):
        """Store ``key`` in the session's row now unless the row holds one already, and return
        the value kept (also put in ``session``): requests of one session that claim at once
        (two tabs) all get the same one. None if the session's row was deleted meanwhile (a
        logout): it is never brought back. ``value`` is JSON and not None."""
        expires = time.time() + SESSION_LIFETIME_S
        kept = await self.db.run(_claim_session_key, _session_key(session.ensure_id()), key,
                                 json.dumps({**session, key: value}), expires, session.stored, time.time())
        if kept is not None:
            if session.row_json is not None:    # the row as loaded, with the claimed key
                session.row_json = _nested_json(json.dumps({**json.loads(session.row_json), key: kept}))
            dict.__setitem__(session, key, kept)
            session.stored = True
            session.expires = expires
            session.send_cookie = True      # with the row's lifetime
        return kept

    async def delete(self, sid):
        await self.db.execute('DELETE FROM sessions WHERE id = ?', (_session_key(sid),))

    async def purge(self):
        """Delete expired sessions."""
        await self.db.execute('DELETE FROM sessions WHERE expires < ?', (time.time(),))

    async def delete_holding(self, key):
        """Delete every session that holds ``key`` (signs out everyone it marks); how many."""
        return await self.db.run(_delete_sessions_holding, key)


def _delete_sessions_holding(conn, key):
    doomed = []
    # Only rows whose text contains the key as JSON writes it are decoded.
    pattern = '%' + re.sub(r'([\\%_])', r'\\\1', json.dumps(key)) + '%'
    for row_key, data in conn.execute("SELECT id, data FROM sessions WHERE data LIKE ? ESCAPE '\\'",
                                      (pattern,)):
        with contextlib.suppress(json.JSONDecodeError):
            if key in json.loads(data):
                doomed.append((row_key,))
    if doomed:
        with conn:
            conn.execute('BEGIN IMMEDIATE')
            conn.executemany('DELETE FROM sessions WHERE id = ?', doomed)
    return len(doomed)


def _create_session(conn, key, data, expires, now):
    """Insert a session's first row. Requests of one visitor that store something at once
    (two tabs, one cookie) all come here with the same id: the first inserts, the others
    add what they stored to its row instead of failing or overwriting it."""
    row = conn.execute('SELECT data, expires FROM sessions WHERE id = ?', (key,)).fetchone()
    if row is None:
        conn.execute('INSERT INTO sessions (id, data, expires) VALUES (?, ?, ?)', (key, data, expires))
        return True
    if row[1] > now:
        try:
            merged = json.loads(row[0])
        except ValueError:
            merged = {}
        merged.update(json.loads(data))
        data = json.dumps(merged)
    # else: the row of an expired session with this id, whose data is never brought back
    conn.execute('UPDATE sessions SET data = ?, expires = ? WHERE id = ?', (data, expires, key))
    return True


def _claim_session_key(conn, row_key, key, data, expires, stored, now):
    ours = json.loads(data)
    with conn:
        conn.execute('BEGIN IMMEDIATE')
        row = conn.execute('SELECT data, expires FROM sessions WHERE id = ?', (row_key,)).fetchone()
        if row is not None and row[1] > now:
            try:
                theirs = json.loads(row[0])
            except ValueError:
                theirs = {}
            if key in theirs:
                return theirs[key]
            theirs[key] = ours[key]
            conn.execute('UPDATE sessions SET data = ? WHERE id = ?', (json.dumps(theirs), row_key))
        elif stored:
            return None
        else:       # the first row of this id (one that expired is replaced, not revived)
            conn.execute('INSERT INTO sessions (id, data, expires) VALUES (?, ?, ?) ON CONFLICT (id) '
                         'DO UPDATE SET data = excluded.data, expires = excluded.expires',
                         (row_key, data, expires))
        return ours[key]


def _save_session(conn, key, old_key, data, expires, new):
    with conn:
        conn.execute('BEGIN IMMEDIATE')
        if old_key:
            conn.execute('DELETE FROM sessions WHERE id = ?', (old_key,))
        if new:
            conn.execute('INSERT INTO sessions (id, data, expires) VALUES (?, ?, ?)', (key, data, expires))
            return True
        return conn.execute('UPDATE sessions SET data = ?, expires = ? WHERE id = ?',
                            (data, expires, key)).rowcount == 1


# -- CSRF --

_STATE_CHANGING = frozenset({'POST', 'PUT', 'PATCH', 'DELETE'})
# Content types a cross-site form or a no-CORS fetch can send (the CORS-safelisted ones);
# anything else needs a preflight, so CSRF checks only these.
_CSRF_CONTENT_TYPES = frozenset({'', 'application/x-www-form-urlencoded', 'multipart/form-data', 'text/plain'})


def check_csrf(request, keyed_hash):
    """403 unless the request sends its session's token (``X-CSRF-Token`` or the form field
    ``csrf_token``): a keyed hash of the session id, compared in constant time."""
    session = request.session
    if session is None:
        raise HTTPError(403, 'CSRF check needs sessions')
    sent = request.headers.get('x-csrf-token') or request.form.get('csrf_token') or ''
    if not session.id or not hmac.compare_digest(keyed_hash('csrf', session.id).encode(),
                                                 sent.encode('utf-8', 'replace')):
        raise HTTPError(403, 'CSRF token missing or invalid; reload the form and try again')


class _LazyCSRFToken:
    """Creates the session's CSRF token only when a template prints it, so pages without a
    form set no cookie and write no session row."""

    __slots__ = ('request',)

    def __init__(self, request):
        self.request = request

    def __str__(self):
        return self.request.csrf_token

    def __bool__(self):
        return True


# === 8. Static files ===

_COMPRESSIBLE = ('text/', 'application/javascript', 'application/json', 'image/svg+xml',
                 'application/xml', 'application/manifest+json', 'image/x-icon')
#: Cache-Control of a static URL whose ``?v=`` is the file's content hash (static_url): its
#: content never changes, so browsers keep it a year without asking again (RFC 8246).
STATIC_VERSIONED_CACHE_CONTROL = 'public, max-age=31536000, immutable'
#: Content hashes StaticFiles.version remembers (paths the templates link: a handful).
STATIC_VERSIONS = 1024


class StaticEntry:
    """What we know of one file: where it is, its validators, and (if small) its bytes."""

    __slots__ = ('path', 'mtime_ns', 'size', 'ino', 'etag', 'last_modified', 'content_type',
                 'body', 'gzipped', 'checked_at', 'fields', 'gzip_fields', 'version')


class StaticFiles:
    """Files under ``root``, behind the file jail, with ETag/304, Range and gzip.

    Small files are answered from memory and revalidated with stat() (in a thread) at most
    once a second, and so is a missing file's 404; large ones are streamed by the
    connection (sendfile over plain TCP).
    Folders serve their index.html; there are no listings. ``exclude`` names top-level
    folders that are never served (templates).
    """

    def __init__(self, root, exclude=()):
        self.root = os.path.realpath(root)
        self._excluded = [os.path.realpath(os.path.join(self.root, name)) for name in exclude]
        self._cache = collections.OrderedDict()   # url path -> StaticEntry
        self._cached_bytes = 0
        # url path -> when it was found missing: a 404 is known for a second without a stat()
        # in a thread each time (a scanner's probes, a missing favicon), as a file is.
        self._missing = collections.OrderedDict()
        # url path -> ((mtime_ns, size, ino) or None if missing, content hash, checked_at):
        # version() runs where templates render, on the loop or in a handler thread.
        self._versions = {}
        self._versions_lock = threading.Lock()

    def resolve(self, url_path):
        """The jail: a decoded URL path -> a real file path inside the root (blocking).

        Raises HTTPError 403 for traversal attempts, 404 for dotfiles, excluded folders,
        paths that leave the root through a symlink, and missing files; 301 adds the
        slash to a folder's URL.
        """
        if '\x00' in url_path or '\\' in url_path:
            raise HTTPError(403, 'forbidden path')
        segments = [s for s in url_path.split('/') if s]     # '//templates' is '/templates'
        for segment in segments:
            if segment in ('.', '..'):
                raise HTTPError(403, 'forbidden path')
            if segment.startswith('.'):
                raise HTTPError(404, 'hidden file')
        candidate = os.path.join(self.root, *segments)
        real = os.path.realpath(candidate)
        if real != self.root and os.path.commonpath([real, self.root]) != self.root:
            raise HTTPError(404, 'outside the web root')
        # Judged on the real path, so no spelling of the URL and no symlink reaches them.
        for excluded in self._excluded:
            if real == excluded or os.path.commonpath([real, excluded]) == excluded:
                raise HTTPError(404, 'not a public file')
        if os.path.isdir(real):
            if not url_path.endswith('/'):
                # One leading slash only: '//host/' would send the browser to another site.
                raise HTTPError(301, headers={'Location': urllib.parse.quote('/' + url_path.lstrip('/') + '/')})
            real = os.path.join(real, 'index.html')
        elif url_path.endswith('/'):
            raise HTTPError(404)     # '/site.css/' names a folder, and there is none (ENOTDIR)
        if not os.path.isfile(real):
            raise HTTPError(404)
        return real

    async def exists(self, url_path):
        if self._known_missing(url_path):
            return False
        try:
            await asyncio.to_thread(self.resolve, url_path)
        except HTTPError:
            return False
        return True

    def _load(self, url_path):
        """Resolve and stat a file, reading it whole when small (blocking; runs in a thread)."""
        path = self.resolve(url_path)
        st = os.stat(path)
        entry = StaticEntry()
        entry.path = path
        entry.mtime_ns = st.st_mtime_ns
        entry.size = st.st_size
        entry.ino = st.st_ino
        entry.etag = file_etag(st)
        entry.last_modified = http_date(st.st_mtime)
        entry.content_type = guess_type(path)
        entry.body = None
        entry.gzipped = None
        entry.version = None        # the content hash, once a ?v= asks for it
        entry.checked_at = time.monotonic()
        fields = [('Content-Type', entry.content_type), ('ETag', entry.etag),
                  ('Last-Modified', entry.last_modified), ('Cache-Control', 'no-cache'),
                  ('Accept-Ranges', 'bytes'), ('X-Content-Type-Options', 'nosniff')]
        gzip_fields = None
        if st.st_size <= STATIC_CACHE_FILE_BYTES:
            with open(path, 'rb') as f:
                entry.body = f.read()
            if len(entry.body) != st.st_size:   # changed under us: treat as uncacheable
                entry.size = len(entry.body)
            if entry.size >= 256 and entry.content_type.startswith(_COMPRESSIBLE):
                packed = gzip.compress(entry.body, 6, mtime=0)
                if len(packed) < entry.size * 0.9:
                    entry.gzipped = packed
                    fields.append(('Vary', 'Accept-Encoding'))
                    gzip_fields = [(name, entry.etag[:-1] + '-gz"' if name == 'ETag' else value)
                                   for name, value in fields]
                    gzip_fields.append(('Content-Encoding', 'gzip'))
        # Indexed and encoded once here; each response gets a copy-on-write view (serve).
        entry.fields = _frozen_fields(fields)
        entry.gzip_fields = gzip_fields and _frozen_fields(gzip_fields)
        return entry

    def _still_valid(self, entry):
        try:
            st = os.stat(entry.path)
        except OSError:
            return False
        return st.st_mtime_ns == entry.mtime_ns and st.st_size == entry.size and st.st_ino == entry.ino

    async def _entry(self, url_path):
        entry = self._cache.get(url_path)
        if entry is not None:
            now = time.monotonic()
            if now - entry.checked_at < 1.0:
                return entry
            if await asyncio.to_thread(self._still_valid, entry):
                entry.checked_at = now
                return entry
            self._forget(url_path)
        elif self._known_missing(url_path):
            raise HTTPError(404)
        try:
            entry = await asyncio.to_thread(self._load, url_path)
        except HTTPError as exc:
            if exc.status in (403, 404) and exc.detail:
                log.warning('static: refused %s (%s)', log_escape(url_path), exc.detail)
            elif exc.status == 404:
                self._note_missing(url_path)
            raise
        except OSError:      # vanished meanwhile, or unreadable: not remembered
            raise HTTPError(404) from None
        self._missing.pop(url_path, None)
        self._remember(url_path, entry)   # large files too: their validators, not their bytes
        return entry

    def _known_missing(self, url_path):
        since = self._missing.get(url_path)
        return since is not None and time.monotonic() - since < 1.0

    def _note_missing(self, url_path):
        missing = self._missing
        missing[url_path] = time.monotonic()
        missing.move_to_end(url_path)
        if len(missing) > 1024:
            missing.popitem(last=False)

    def _remember(self, url_path, entry):
        self._cache[url_path] = entry
        self._cached_bytes += _entry_bytes(entry)
        while (self._cached_bytes > STATIC_CACHE_BYTES or len(self._cache) > 4096) and self._cache:
            self._forget(next(iter(self._cache)))

    def _forget(self, url_path):
        entry = self._cache.pop(url_path, None)
        if entry is not None:
            self._cached_bytes -= _entry_bytes(entry)

    def version(self, url_path):
        """The content hash of the file at ``url_path`` for its versioned URL (static_url),
        or None if there is none.

        Blocking, as rendering a template is (Templates.get): a stat() at most once a second
        per file, as the cache revalidates, and a read of a file that changed.
        """
        with self._versions_lock:
            known = self._versions.get(url_path)
            now = time.monotonic()
            if known is not None and now - known[2] < 1.0:
                return known[1]
            try:
                path = self.resolve(url_path)
                st = os.stat(path)
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                # The stamp is taken before the read: a file changing meanwhile is read again.
                version = known[1] if known is not None and known[0] == stamp else content_version(path)
            except (HTTPError, OSError):
                stamp = version = None
            if len(self._versions) >= STATIC_VERSIONS and url_path not in self._versions:
                self._versions.clear()
            self._versions[url_path] = (stamp, version, now)
            return version

    async def serve(self, request, url_path):
        """The Response for a GET or HEAD of ``url_path``; cached for a year when its ``?v=``
        is the file's current content hash. A stale one gets today's file, cached as usual."""
        response = await self._serve(request, url_path)
        if request.query_string and response.status in (200, 206, 304):
            version = request.query.get('v')
            entry = self._cache.get(url_path)
            if version and entry is not None:
                if entry.version is None:
                    entry.version = await asyncio.to_thread(content_version, entry.path, entry.body)
                if version == entry.version:
                    response.headers['Cache-Control'] = STATIC_VERSIONED_CACHE_CONTROL
        return response

    async def _serve(self, request, url_path):
        entry = self._cache.get(url_path)
        if entry is None or time.monotonic() - entry.checked_at >= 1.0:
            entry = await self._entry(url_path)    # new, or time to stat() it again
        headers = entry.fields._view()
        status, span = file_conditions(request, entry.etag, entry.mtime_ns, entry.size)
        gzipped = entry.gzipped is not None and accepts_gzip(request.headers.get('accept-encoding', ''))
        if status == 304:
            if gzipped:
                # RFC 9110 15.4.5: the ETag the 200 would have carried, the gzip one here (but
                # no Content-Encoding: a 304 has no content to describe).
                headers = entry.gzip_fields._view()
                del headers['Content-Encoding']
            return Response(b'', 304, headers)
        if status == 206:
            start, end = span
            headers.add('Content-Range', f'bytes {start}-{end}/{entry.size}')
            resp = Response(b'', 206, headers)
            if entry.body is not None:
                resp.body = entry.body[start:end + 1]
            else:
                resp.file = (entry.path, start, end - start + 1)
            return resp

        if gzipped:
            return Response(entry.gzipped, 200, entry.gzip_fields._view())
        if entry.body is not None:
            return Response(entry.body, 200, headers)
        resp = Response(b'', 200, headers)
        resp.file = (entry.path, 0, entry.size)
        return resp


_WHOLE_FILE = (200, None)


def file_conditions(request, etag, mtime_ns, size):
    """How to answer a GET or HEAD of a file with these validators: (304, None) when the
    client's copy is current (RFC 9110 13.2.2), (206, (start, end)) for one satisfiable range
    of a GET whose If-Range holds (14.2, 13.1.5), else (200, None) for the whole file.

    Raises HTTPError 416 (``Content-Range: bytes */size``) for a range it cannot satisfy.
    Static files and ``Response.send_file`` both answer through it.
    """
    req_headers = request.headers
    sent = req_headers._index       # the names sent: most requests send none of the ones below
    if ('if-none-match' in sent or 'if-modified-since' in sent) and \
            not_modified(req_headers, etag, mtime_ns / 1e9):
        return 304, None
    if 'range' in sent and request.method == 'GET':
        if_range = req_headers.get('if-range')
        if if_range is None or if_range_holds(if_range, etag, mtime_ns / 1e9):
            span = parse_range(req_headers.get('range'), size)
            if span is not None:
                return 206, span
    return _WHOLE_FILE


def content_version(path, body=None):
    """The short content hash of a file (of ``body``, its bytes, when already read) that
    versions its URL: the same in every worker and after a restart, new with any change."""
    digest = hashlib.blake2b(digest_size=8)
    if body is not None:
        digest.update(body)
    else:
        with open(path, 'rb') as f:
            while chunk := f.read(STATIC_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


def file_etag(st):
    """A strong ETag for a file's ``os.stat()`` result: it changes whenever the modification time
    (to the nanosecond), the size or the inode does (a same-second edit, a file replaced by
    rename), yet shows none of them: a hash, stable across restarts and workers."""
    validators = f'{st.st_mtime_ns}:{st.st_size}:{st.st_ino}'.encode('ascii')
    return '"' + hashlib.blake2b(validators, digest_size=8).hexdigest() + '"'


def _entry_bytes(entry):
    return len(entry.body or b'') + len(entry.gzipped or b'') + 512


def not_modified(headers, etag, mtime):
    """RFC 9110 13.2.2: If-None-Match wins over If-Modified-Since."""
    inm = headers.get('if-none-match')
    if inm is not None:
        gz = etag[:-1] + '-gz"'
        return etag_matches(inm, etag) or etag_matches(inm, gz)
    ims = headers.get('if-modified-since')
    if ims is not None:
        since = parse_http_date(ims)
        return since is not None and int(mtime) <= since
    return False


def if_range_holds(value, etag, mtime):
    """RFC 9110 13.1.5: the range applies if the validator is our strong ETag or exactly our date."""
    value = value.strip()
    if value.startswith(('"', 'W/')):
        return value == etag and not etag.startswith('W/')
    since = parse_http_date(value)
    return since is not None and since == int(mtime)


def accepts_gzip(accept_encoding):
    for item in accept_encoding.lower().split(','):
        coding, _, params = item.partition(';')
        if coding.strip() in ('gzip', '*', 'x-gzip'):
            q = params.strip()
            if q.startswith('q='):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


async def finish_file_response(request, response):
    """Complete a ``send_file`` response, whatever handler or hook made it: stat the file
    (in a thread: a handler made the response without touching the disk) for its length,
    and give a 200 to a GET or HEAD the validators, 304 and Range answers that static
    files get, through the same ``file_conditions``."""
    path, offset, _ = response.file
    try:
        st = await asyncio.to_thread(os.stat, path)
    except OSError:
        log.error('file to send is missing: %s', log_escape(path))
        raise HTTPError(404, 'file not found') from None
    size = max(0, st.st_size - offset)
    response.file = (path, offset, size)
    if offset or response.status != 200 or request.method not in ('GET', 'HEAD'):
        return
    headers = response.headers
    etag = headers.get('etag')
    if etag is None:            # one the app set itself is the one compared
        etag = headers['ETag'] = file_etag(st)
    if 'last-modified' not in headers:
        headers['Last-Modified'] = http_date(st.st_mtime)
    headers['Accept-Ranges'] = 'bytes'
    status, span = file_conditions(request, etag, st.st_mtime_ns, size)
    if status == 304:
        response.status, response.file = 304, None
    elif status == 206:
        start, end = span
        headers['Content-Range'] = f'bytes {start}-{end}/{size}'
        response.status, response.file = 206, (path, start, end - start + 1)


# === 9. Router and App ===

# Converters: name -> (regex, to_python, to_url). The default converter is one path segment.
CONVERTERS = {
    'str': (r'[^/]+', str, lambda v: urllib.parse.quote(str(v), safe='')),
    # At most 18 digits: every value fits SQLite's 64-bit integers, and int() never sees a
    # number long enough to hit Python's digit limit.
    'int': (r'[0-9]{1,18}', int, lambda v: str(int(v))),
    'path': (r'.+', str, lambda v: urllib.parse.quote(str(v), safe='/')),
}
_PLACEHOLDER_RE = re.compile(r'<(?:([a-zA-Z_]\w*):)?([a-zA-Z_]\w*)>')
class Route:
    """One registered handler: its pattern, methods and options."""

    def __init__(self, pattern, handler, methods, name, max_body, stream, csrf, defer_body=False):
        self.pattern = pattern
        self.handler = handler
        self.methods = frozenset(m.upper() for m in methods)
        self.name = name
        self.max_body = max_body
        self.stream = stream
        self.csrf = csrf
        self.defer_body = defer_body
        self.converters = {}
        self.builder = None
        if isinstance(pattern, re.Pattern):
            self.regex = pattern
            self.is_static = False
            self.key = pattern.pattern
            self.first_segment = None
        else:
            if not pattern.startswith('/'):
                raise ValueError(f'route pattern must start with /: {pattern!r}')
            self.key = pattern
            parts, regex, pos = [], [], 0
            for m in _PLACEHOLDER_RE.finditer(pattern):
                literal = pattern[pos:m.start()]
                regex.append(re.escape(literal))
                parts.append((literal, None, None))
                kind, pname = m.group(1) or 'str', m.group(2)
                if kind not in CONVERTERS:
                    raise ValueError(f'unknown converter {kind!r} in {pattern!r}')
                rx, to_python, to_url = CONVERTERS[kind]
                regex.append(f'(?P<{pname}>{rx})')
                parts.append(('', pname, to_url))
                self.converters[pname] = to_python
                pos = m.end()
            regex.append(re.escape(pattern[pos:]))
            parts.append((pattern[pos:], None, None))
            self.builder = parts
            self.is_static = not self.converters
            self.regex = re.compile(''.join(regex))
            first = pattern[1:].split('/', 1)[0]
            self.first_segment = None if '<' in first else first

    def match(self, path):
        m = self.regex.fullmatch(path)
        if m is None:
            return None
        params = m.groupdict()
        for key, convert in self.converters.items():
            params[key] = convert(params[key])
        return params

    def build(self, params):
        """The URL of this route with ``params`` filled in; leftovers become the query."""
        if self.builder is None:
            raise ValueError(f'cannot build a URL for the regular-expression route {self.key!r}')
        params = dict(params)
        out = []
        for literal, pname, to_url in self.builder:
            out.append(literal)
            if pname is not None:
                if pname not in params:
                    raise KeyError(f'url_for({self.name!r}) needs {pname!r}')
                out.append(to_url(params.pop(pname)))
        url = ''.join(out)
        if params:
            url += '?' + urllib.parse.urlencode(params, doseq=True)
        return url


class Router:
    """Finds the route of a path in time that does not grow with the number of routes.

    Static paths are a dictionary lookup. Dynamic patterns are grouped by their first
    literal segment; each group is one combined regular expression whose matching
    alternative is named by ``lastgroup``. Patterns whose first segment is variable form a
    catch-all group tried after the specific one; compiled regular expressions given by the
    app come last, each matched alone so that its flags hold.
    """

    def __init__(self):
        self.static = {}      # path -> {method: Route}
        self.dynamic = {}     # first segment or None -> [(key, {method: Route}, sample Route)]
        self.raw = []         # [(key, {method: Route}, sample Route)] for compiled regexes
        self._compiled = {}   # first segment or None -> combined regex
        self.by_name = {}
        self.methods = set()

    def add(self, route):
        self.methods |= route.methods
        self.by_name.setdefault(route.name, route)
        if route.is_static:
            table = self.static.setdefault(route.pattern, {})
        else:
            # A user's compiled regex keeps its own flags, so it is matched on its own.
            group = self.raw if route.builder is None else self.dynamic.setdefault(route.first_segment, [])
            for key, table, _ in group:
                if key == route.key:
                    break
            else:
                table = {}
                group.append((route.key, table, route))
            if route.builder is not None:
                self._compiled.pop(route.first_segment, None)
        for method in route.methods:
            table[method] = route

    def _combined(self, segment):
        """(regex, params) for a group: one regular expression whose alternative ``r<i>``
        is the group's i-th pattern, and per alternative the (group name, parameter,
        converter) triples that read its parameters from a match of it."""
        combined = self._compiled.get(segment)
        if combined is None:
            alts, params = [], []
            for i, (_, _, sample) in enumerate(self.dynamic[segment]):
                # Group names must differ between alternatives: each parameter's group is
                # prefixed with its alternative's name, any other named group made anonymous.
                def rename(m, i=i, names=sample.converters):
                    name = m.group(1)
                    return f'(?P<r{i}_{name}>' if name in names else '(?:'
                alts.append(f'(?P<r{i}>{_NAMED_GROUP_RE.sub(rename, sample.regex.pattern)})')
                params.append([(f'r{i}_{name}', name, convert)
                               for name, convert in sample.converters.items()])
            combined = self._compiled[segment] = (re.compile('|'.join(alts)), params)
        return combined

    def _candidates(self, path):
        """Yield (table, params) for every pattern matching ``path``, most specific first."""
        table = self.static.get(path)
        if table is not None:
            yield table, {}
        segment = path[1:].split('/', 1)[0]
        for key in (segment, None):
            group = self.dynamic.get(key)
            if not group:
                continue
            m = self._combined(key)[0].fullmatch(path)
            if m is None:
                continue
            first = int(m.lastgroup[1:])
            for _, table, sample in group[first:]:
                params = sample.match(path)
                if params is not None:
                    yield table, params
        for _, table, sample in self.raw:
            params = sample.match(path)
            if params is not None:
                yield table, params

    def match(self, method, path):
        """(Route, params) for a request; raises 404, 405 (with Allow) or 501."""
        route, params = self.lookup(method, path)
        if params is None:
            raise HTTPError(404)
        return route, params

    def lookup(self, method, path):
        """Like match, but (None, None) where no route has the path: the static files' turn."""
        table = self.static.get(path)
        if table is not None:
            route = table.get(method)
            if route is not None:
                return route, {}
            return self._lookup_patterns(method, path)
        segment = path[1:].partition('/')[0]
        group = self.dynamic.get(segment)
        if group is None:
            if not self.raw and None not in self.dynamic:
                self._refuse_unknown_method(method)   # no pattern can match: most static files
                return None, None
        else:
            # The usual dynamic path: the first pattern of its segment that matches has the
            # method, and one match of the group's regex gives its parameters too.
            regex, params = self._combined(segment)
            m = regex.fullmatch(path)
            if m is not None:
                first = int(m.lastgroup[1:])
                table = group[first][1]
                route = table.get(method) or (table.get('GET') if method == 'HEAD' else None)
                if route is not None:
                    return route, {name: convert(m.group(key)) for key, name, convert in params[first]}
        return self._lookup_patterns(method, path)

    def _lookup_patterns(self, method, path):
        allowed = set()
        for table, params in self._candidates(path):
            route = table.get(method) or (table.get('GET') if method == 'HEAD' else None)
            if route is not None:
                return route, params
            allowed |= table.keys()
        if allowed:
            if method == 'OPTIONS':
                return None, {'allow': allowed}
            self._refuse_unknown_method(method)
            raise HTTPError(405, headers={'Allow': format_allow(allowed)})
        self._refuse_unknown_method(method)
        return None, None

    def _refuse_unknown_method(self, method):
        """501 for a method no route and no static file answers."""
        if method not in self.methods and method not in ('GET', 'HEAD', 'OPTIONS'):
            raise HTTPError(501, f'method {method} is not implemented')


_NAMED_GROUP_RE = re.compile(r'\(\?P<([^>]+)>')


def format_allow(methods):
    methods = set(methods)
    if 'GET' in methods:
        methods.add('HEAD')
    methods.add('OPTIONS')
    return ', '.join(sorted(methods))


class HandlerThreads:
    """Worker threads for plain ``def`` handlers and hooks, handing results back in batches.

    asyncio.to_thread wakes the event loop once for every call that finishes (a write to
    its self-pipe, then a turn of the loop for that one result); under load that wake-up
    costs more than a quick handler. Here a finished call joins its loop's batch, only the
    first call of a batch wakes the loop, and one callback settles the whole batch. The
    threads are shared by every event loop of the process (the server's, each test
    client's) and started as they are needed, up to ``max_threads`` (as many as
    asyncio's default executor would start); each call runs in a copy of the caller's
    contextvars context, as with asyncio.to_thread.
    """

    def __init__(self, max_threads=min(32, (os.cpu_count() or 1) + 4)):
        self.max_threads = max_threads
        self._reset()
        os.register_at_fork(after_in_child=self._reset)   # a forked worker has no threads

    def _reset(self):
        self.jobs = queue.SimpleQueue()
        self.idle = threading.Semaphore(0)     # released by each thread waiting for a job
        self.threads = 0
        self.lock = threading.Lock()
        self.batches = {}                      # loop -> [(future, ok, value)] not yet settled

    async def run(self, fn, *args, **kwargs):
        """``await threads.run(fn, *args, **kwargs)``: fn(*args, **kwargs) in a worker thread."""
        if kwargs:      # a route's path parameters
            fn = functools.partial(fn, **kwargs)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.jobs.put((loop, future, contextvars.copy_context(), fn, args))
        if not self.idle.acquire(blocking=False):
            with self.lock:
                start = self.threads < self.max_threads
                self.threads += start
            if start:
                threading.Thread(target=self._work, name='server-handler', daemon=True).start()
        return await future

    def _work(self):
        jobs, lock, batches = self.jobs, self.lock, self.batches
        while True:
            loop, future, context, fn, args = jobs.get()
            try:
                item = (future, True, context.run(fn, *args))
            except BaseException as exc:          # handed to the awaiting task, as to_thread does
                item = (future, False, exc)
            with lock:
                batch = batches.get(loop)
                if batch is None:
                    batches[loop] = [item]
                else:
                    batch.append(item)
            if batch is None:
                try:
                    loop.call_soon_threadsafe(self._settle, loop)
                except RuntimeError:              # that loop is closed: nobody waits any more
                    with lock:
                        batches.pop(loop, None)
            del loop, future, context, fn, args, item, batch
            self.idle.release()

    def _settle(self, loop):
        with self.lock:
            batch = self.batches.pop(loop, ())
        for future, ok, value in batch:
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


_HANDLER_THREADS = HandlerThreads()


def _runner(fn):
    """What to call, and await, in place of a handler, hook or error handler ``fn``.

    An ``async def`` is called as it is: it runs in the request's own task. A plain ``def``
    runs in a worker thread (HandlerThreads), so a blocking call never stalls the loop.
    """
    runner = _RUNNERS.get(fn)
    if runner is None:
        if inspect.iscoroutinefunction(fn):
            runner = fn
        else:
            runner = functools.partial(_HANDLER_THREADS.run, fn)
        runner = _RUNNERS[fn] = runner
    return runner


_RUNNERS = {}   # handlers, hooks and error handlers -> what _runner calls for each


def _caller_folder():
    """The folder of the file whose code calls ``App(...)`` (for a subclass, the file of its
    ``__init__``): its module's ``__file__``, or the current folder for code that has none
    (``python3 -c``, the REPL)."""
    path = sys._getframe(2).f_globals.get('__file__')
    return os.path.dirname(os.path.abspath(path)) if path else os.getcwd()


class App:
    """A web application: routes, hooks, error handlers, templates, sessions and a database.

    ``root`` holds static files and ``templates/``; ``data`` holds ``app.db`` and ``uploads/``.
    A relative ``root`` or ``data`` is taken from the folder of the file that makes the App,
    as server.py takes ``www/`` and ``data/`` from beside itself: the app runs from any folder.
    ``trusted_proxy`` is a comma-separated list of addresses whose X-Forwarded-* headers count.
    ``migrations`` are SQL scripts run once each, in order, at start; the database records
    them under ``name``: by default the name of the file that creates the App (``notes``
    for ``notes.py``, as Flask's ``app.name``; ``app`` when there is no file), so apps
    sharing a data folder (the site's is ``site``) keep their counts apart. Give ``name``
    when the file may be renamed: a new name runs the scripts again. ``database`` is
    ``sqlite:`` (``app.db`` in ``data``) or a ``postgresql://`` URL that several hosts share.
    """

    _default = None

    def __init__(self, root=None, data='data', *, trusted_proxy='127.0.0.1,::1', sessions=True,
                 csrf=True, static=True, migrations=(), name=None, database='sqlite:'):
        source = sys._getframe(1).f_globals.get('__file__')     # the module creating the App
        if name is None:
            name = os.path.splitext(os.path.basename(source))[0] if source else 'app'
        if not isinstance(name, str) or not name:
            raise TypeError(f'App(name=...) must be a non-empty str, not {name!r}')
        self.name = name
        here = _caller_folder()
        self.root = os.path.abspath(os.path.join(here, root)) if root else None
        self.data = os.path.abspath(os.path.join(here, data))
        self.upload_dir = os.path.join(self.data, 'uploads')
        self.router = Router()
        self.before_hooks = []
        self.after_hooks = []
        self.claim_hooks = []
        self.startup_hooks = []
        self.shutdown_hooks = []
        self.error_handlers = {}
        self.sessions_enabled = sessions
        self.csrf_enabled = csrf
        self.static_enabled = static
        self.trusted = _parse_trusted(trusted_proxy)
        self._trusted_answers = (list(self.trusted), {})   # config_trusted: address -> bool
        self.database = database
        self.db = Database(database_path(database, self.data), migrations, name, source)
        self.sessions = SessionStore(self.db, self.keyed_hash)
        self._secret = None
        self.templates = Templates(os.path.join(self.root, 'templates') if self.root else None)
        self.template_globals = {}
        self.static = StaticFiles(self.root, exclude=('templates',)) if (self.root and static) else None
        App._default = self

    # -- registration --
    def route(self, pattern, methods=('GET',), *, name=None, max_body=MAX_BODY_BYTES,
              stream=False, csrf=None, defer_body=False):
        """Register a handler: ``@app.route('/item/<int:id>', methods=['GET', 'POST'])``.

        ``pattern`` may also be a compiled regular expression whose named groups become
        keyword arguments. ``max_body`` is the body limit (413 past it), ``stream=True``
        leaves the body to ``request.stream()``, ``csrf=False`` turns the CSRF check off.
        ``defer_body=True`` runs the handler before the body is read: it checks what needs
        no body, then ``await request.read_body()`` (which checks CSRF) before acting.
        """
        if isinstance(methods, str):
            methods = (methods,)

        def decorator(handler):
            route = Route(pattern, handler, methods, name or handler.__name__, max_body, stream,
                          self.csrf_enabled if csrf is None else csrf, defer_body)
            self.router.add(route)
            return handler
        return decorator

    def get(self, pattern, **options):
        return self.route(pattern, ('GET',), **options)

    def post(self, pattern, **options):
        return self.route(pattern, ('POST',), **options)

    def put(self, pattern, **options):
        return self.route(pattern, ('PUT',), **options)

    def patch(self, pattern, **options):
        return self.route(pattern, ('PATCH',), **options)

    def delete(self, pattern, **options):
        return self.route(pattern, ('DELETE',), **options)

    def before_request(self, fn):
        """``fn(request)`` runs before each handler; a non-None return value is the response."""
        self.before_hooks.append(fn)
        return fn

    def after_request(self, fn):
        """``fn(request, response)`` runs after each request; it may return a new response."""
        self.after_hooks.append(fn)
        return fn

    def errorhandler(self, status):
        """``@app.errorhandler(404)``: ``fn(request, error)`` renders that status."""
        def decorator(fn):
            self.error_handlers[int(status)] = fn
            return fn
        return decorator

    def on_claim(self, fn):
        """``fn(app)`` runs once when a server takes the data folder, before any request and
        before the startup hooks: the place to clear what a crashed run left behind. With
        workers it runs in their parent before the first fork, never in a worker: a restarted
        one would delete what its siblings are still writing."""
        self.claim_hooks.append(fn)
        return fn

    def on_startup(self, fn):
        self.startup_hooks.append(fn)
        return fn

    def on_shutdown(self, fn):
        self.shutdown_hooks.append(fn)
        return fn

    def url_for(self, endpoint, /, **params):
        route = self.router.by_name.get(endpoint)
        if route is None:
            raise KeyError(f'no route named {endpoint!r}')
        return route.build(params)

    def config_trusted(self, address):
        """Is ``address`` (a connection's peer) one of the trusted proxies? Asked once per
        connection; the answers are kept per address (a proxy's few, or 1,024 at most)."""
        known = self._trusted_answers
        if known[0] != self.trusted or len(known[1]) >= 1024:     # a new list, or a full cache
            known = self._trusted_answers = (list(self.trusted), {})
        answer = known[1].get(address)
        if answer is None:
            answer = known[1][address] = bool(address) and _in_networks(address, self.trusted)
        return answer

    # -- lifecycle --
    async def claim(self):
        """Run the migrations, then the claim hooks (see ``on_claim``): on SQLite, whose data
        folder is this server's alone; never on PostgreSQL, which other hosts share."""
        await self._migrate()
        for fn in self.claim_hooks if self.db.kind == 'sqlite' else ():
            await _runner(fn)(self)

    async def _migrate(self):
        if self.db.migrations or self.db.kind == 'postgresql':
            await self.db.open()

    async def startup(self, claim=True):
        """Run the migrations and the claim hooks (unless ``claim`` is false: a worker, whose
        parent ran them), then the startup hooks."""
        if claim:
            await self.claim()
        else:
            await self._migrate()
        await asyncio.to_thread(self.templates.preload)
        if self.sessions_enabled and self._secret is None:
            self._secret = await asyncio.to_thread(self.db.load_secret, os.path.join(self.data, SECRET_FILE))
        for fn in self.startup_hooks:
            await _runner(fn)(self)

    async def shutdown(self):
        for fn in self.shutdown_hooks:
            try:
                await _runner(fn)(self)
            except Exception:
                log.exception('shutdown hook failed')
        await self.db.close()

    def keyed_hash(self, purpose, value):
        """HMAC-SHA256 of ``value`` under the data folder's secret, as 64 hex digits: the same
        in every process on that folder, and unguessable without the secret.
        ``purpose`` keeps the hashes made for different uses apart."""
        secret = self._secret
        if secret is None:      # an App used without startup(): read once, here
            secret = self._secret = self.db.load_secret(os.path.join(self.data, SECRET_FILE))
        message = purpose.encode() + b'\0' + value.encode('utf-8', 'surrogatepass')
        return hmac.new(secret, message, hashlib.sha256).hexdigest()

    # -- handling: the one place where errors become responses --
    async def handle(self, request):
        """Answer ``request``; never raises. Exceptions become error responses here."""
        token = _current_request.set(request)
        try:
            try:
                response = await self._dispatch(request)
            except HTTPError as exc:
                response = await self.error_response(request, exc)
            except (ClientDisconnected, asyncio.CancelledError):
                raise       # nobody to answer; the connection is already gone
            except Exception as exc:
                if request._raise_errors:
                    raise
                log.exception('error handling %s %s', request.method, log_escape(request.target))
                response = await self.error_response(request, _internal_error(exc))
            try:
                for hook in self.after_hooks:
                    rv = await _runner(hook)(request, response)
                    if rv is not None:
                        response = make_response(rv)
                if request._session is not None:
                    await self.sessions.save_for(request, response)
                if response.file is not None and response.file[2] is None:
                    await finish_file_response(request, response)
            except HTTPError as exc:
                response = await self.error_response(request, exc)
            except Exception as exc:
                if request._raise_errors:
                    raise
                log.exception('error finishing %s %s', request.method, log_escape(request.target))
                response = await self.error_response(request, _internal_error(exc))
            return response
        finally:
            _current_request.reset(token)
            if request._cleanup:
                await asyncio.to_thread(request._discard_uploads)

    async def _dispatch(self, request):
        if request._bad_path:
            raise HTTPError(400, 'path is not valid UTF-8')
        method = request.method
        if request.path == '*':
            if method == 'OPTIONS':
                return Response(b'', 204, {'Allow': format_allow(self.router.methods | {'GET'})})
            raise HTTPError(400)
        route, params = self.router.lookup(method, request.path)
        if params is None:
            if self.static is None:
                raise HTTPError(404)
            if method == 'GET' or method == 'HEAD':
                return await self.static.serve(request, request.path)
            return await self._serve_static_other(request)
        if route is None:  # automatic OPTIONS
            return Response(b'', 204, {'Allow': format_allow(params['allow'])})
        request.route = route
        request.params = params
        for hook in self.before_hooks:
            rv = await _runner(hook)(request)
            if rv is not None:
                return make_response(rv)
        if self.sessions_enabled:
            cookies = request.headers._index.get('cookie')
            if cookies and any(_session_cookie_name(request) in value for value in cookies):
                await self.sessions.load_for(request)
            else:
                request._session_ready = True     # no session cookie, no stored session to look up
        length = request._head.body_length
        if length is not None and length > route.max_body:
            raise HTTPError(413, _too_large(route.max_body))
        csrf = route.csrf and method in _STATE_CHANGING and request.content_type in _CSRF_CONTENT_TYPES
        if csrf and (request._session is None or not request._session.id):
            # No session id, so no token to match: refuse before reading (and spooling) the body.
            raise HTTPError(403, 'CSRF token missing or invalid; reload the form and try again')
        if route.stream:
            pass
        elif route.defer_body:
            request._csrf_pending, csrf = csrf, False     # read_body() checks it
        elif request._body_source is not None:
            await request._read_body(route.max_body, csrf)
        else:
            request._body = b''
        if csrf:
            self._check_csrf(request)
        handler = _runner(route.handler)
        rv = await (handler(request, **params) if params else handler(request))
        return rv if rv.__class__ is Response else make_response(rv)

    async def _serve_static_other(self, request):
        if not await self.static.exists(request.path):
            raise HTTPError(404)
        if request.method == 'OPTIONS':
            return Response(b'', 204, {'Allow': 'GET, HEAD, OPTIONS'})
        raise HTTPError(405, headers={'Allow': 'GET, HEAD, OPTIONS'})

    def _check_csrf(self, request):
        check_csrf(request, self.keyed_hash)

    async def error_response(self, request, error):
        """The response for an HTTPError: the app's handler for that status, else plain text."""
        handler = self.error_handlers.get(error.status)
        response = None
        if handler is not None and request is not None:
            try:
                response = make_response(await _runner(handler)(request, error))
            except Exception:
                if request._raise_errors:
                    raise
                log.exception('error handler for %d failed', error.status)
        if response is None:
            response = error_page(error)
        else:
            if response.status == 200:
                response.status = error.status
            for name, value in error.headers.items():
                response.headers.setdefault(name, value)
        response.close = response.close or error.close
        return response

    # -- running --
    def test_client(self, *, raise_errors=False):
        """An in-process client: ``app.test_client().get('/')`` -> TestResponse (no sockets).

        ``raise_errors=True`` raises a handler's (or hook's) exception into the test instead
        of logging it and answering 500; HTTPErrors (``abort``) are still answered.
        """
        # Forward reference: the test client (section 10) is built on the App, so it stands after it.
        return TestClient(self, raise_errors=raise_errors)

    def run(self, host='127.0.0.1', port=8000, *, workers=1, certfile=None, keyfile=None,
            access_log=True, log_level='info', reload=False):
        """Serve this app until SIGINT or SIGTERM with these settings alone: the command line
        and SERVER_* are not read (``main`` reads them). ``reload=True`` restarts the script
        that runs the app whenever it, server.py or a file under the root changes."""
        configure_logging(log_level)
        config = Config(host=host, port=port, root=self.root, data=self.data, workers=workers,
                        certfile=certfile or '', keyfile=keyfile or '', access_log=access_log,
                        log_level=log_level, reload=reload)
        try:
            # Forward reference: the server (section 11) runs Apps, so it stands after them.
            return serve_forever(lambda: self, config)
        except StartupError as exc:
            # Its message names the culprit and the fix (a template and the one it includes,
            # a busy port): the frames inside the server would only bury it.
            raise exc.with_traceback(None) from None

    def main(self, argv=None):
        """Serve this app with server.py's flags, SERVER_* variables, ``--help`` and one-line
        startup errors (exit 1, 2 for a bad flag): ``sys.exit(app.main())``. ``argv`` defaults
        to ``sys.argv[1:]``; the defaults of --root, --data and --trusted-proxy are the App's."""
        # Forward reference: the command line (section 13) is server.py's, shared with Apps.
        return serve_command(argv, self._configured, app=self)

    def _configured(self, config):
        """This app on the command line's web root, data folder and proxies, before it starts."""
        root, data = os.path.abspath(config.root) if config.root else None, os.path.abspath(config.data)
        if data != self.data or config.database != self.database:
            self.data, self.upload_dir, self.database = data, os.path.join(data, 'uploads'), config.database
            self.db.path = database_path(config.database, data)
        if root != self.root:
            self.root = root
            self.templates = Templates(os.path.join(root, 'templates') if root else None)
            self.static = StaticFiles(root, exclude=('templates',)) if (root and self.static_enabled) else None
        self.trusted = _parse_trusted(config.trusted_proxy)
        return self


def _internal_error(exc):
    """The 500 for an exception a handler raised; an error handler finds it as ``__cause__``."""
    error = HTTPError(500)
    error.__cause__ = exc
    return error


def error_page(error):
    """A short plain-text error body; the detail is the client's text only after escaping."""
    body = f'{error.status} {error.reason}\n'
    if error.detail:
        body += f'{error.detail}\n'
    resp = Response(body.encode('utf-8'), error.status, error.headers or None,
                    'text/plain; charset=utf-8')
    resp.close = error.close
    return resp


def _in_networks(address, networks):
    """Is the IP ``address`` (a zone after '%' ignored) in one of ``networks``?"""
    try:
        ip = ipaddress.ip_address(address.split('%', 1)[0])
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _parse_trusted(value):
    nets = []
    for item in (value.split(',') if isinstance(value, str) else value or ()):
        item = item.strip()
        if item:
            nets.append(ipaddress.ip_network(item, strict=False))
    return nets


def url_for(endpoint, /, **params):
    """The URL of a named route (the handler's name by default): ``url_for('profile', name='a')``."""
    request = _current_request.get()
    app = request.app if request is not None else App._default
    if app is None:
        raise RuntimeError('url_for needs an App')
    return app.url_for(endpoint, **params)


def static_url(path):
    """A static file's URL with its content hash, ``/css/site.css?v=1f2e...``: served with a
    year's cache, and another as soon as the file changes, without a restart. In templates,
    the ``static`` filter: ``{{ '/css/site.css' | static }}``. Anything that is not a file
    under the web root (another site's URL, a missing file) is given back as it is."""
    if not isinstance(path, str) or not path.startswith('/') or path.startswith('//'):
        return path
    request = _current_request.get()
    app = request.app if request is not None else App._default
    version = app.static.version(path) if app is not None and app.static is not None else None
    return path if version is None else f'{urllib.parse.quote(path)}?v={version}'


# A filter of section 6's table, defined here because it needs the current App.
TEMPLATE_FILTERS['static'] = static_url


def render(template, /, **context):
    """Render a template of the current app to an HTML Response: ``render('page.html', x=1)``.

    ``csrf_token`` and the app's ``template_globals`` are added to the context.
    """
    request = _current_request.get()
    app = request.app if request is not None else App._default
    if app is None:
        raise RuntimeError('render needs an App')
    full = dict(app.template_globals)
    if request is not None:
        full['request'] = request
        full['path'] = request.path
        if request.session is not None:
            full['csrf_token'] = _LazyCSRFToken(request)
    full.update(context)
    return Response(app.templates.get(template).render(full), content_type='text/html; charset=utf-8')


# === 10. Test client ===
# The App answered in-process, with no sockets, through the same App.handle as the server.

class TestResponse:
    """What the test client got: ``status``, ``headers``, ``body``, ``text`` and ``json()``."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self):
        return self.body.decode('utf-8', 'replace')

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f'<TestResponse {self.status}>'


class _BytesBody:
    """A request body source for the test client: the whole body at once."""

    def __init__(self, data):
        self.data = data

    def take_all(self):
        data, self.data = self.data, b''
        return data

    async def receive(self):
        data, self.data = self.data, b''
        return data


class TestClient:
    """Calls an App in-process, through the same App.handle as the server, keeping cookies.

    ``get``, ``head``, ``post``, ``put``, ``patch``, ``delete``, ``options`` and
    ``request(method, url)`` each take ``data=`` (a dict is urlencoded), ``json=``, ``files=``
    (name -> (filename, bytes[, content type]), sent as multipart with ``data``'s fields),
    ``headers=`` and a raw ``body=``: ``client.post('/form', data={'a': '1'})``. With
    ``raise_errors=True`` an exception that would be a 500 is raised into the test instead.
    Use it as a context manager or call ``close()``.
    """

    __test__ = False   # not a unittest/pytest class

    def __init__(self, app, scheme='http', client='127.0.0.1', *, raise_errors=False):
        self.app = app
        self.raise_errors = raise_errors
        self.cookies = {}
        self.scheme = scheme
        self.client = client
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(app.startup())
        except BaseException:       # a failed start (StartupError) leaves no loop open
            self.loop.close()
            raise

    def close(self):
        self.loop.run_until_complete(self.app.shutdown())
        self.loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, method, url, *, data=None, json=None, files=None, headers=None, body=None):
        """Send one request and return its TestResponse (see the class docstring)."""
        head_headers = Headers(headers or ())
        if 'host' not in head_headers:
            head_headers.add('Host', 'testserver')
        body = _test_body(head_headers, data, json, files, body)
        if body:
            head_headers.setdefault('Content-Length', str(len(body)))
        if self.cookies:
            head_headers.add('Cookie', '; '.join(f'{k}={v}' for k, v in self.cookies.items()))
        raw = f'{method} {url} HTTP/1.1\r\n'.encode() + b''.join(
            f'{k}: {v}\r\n'.encode('latin-1') for k, v in head_headers) + b'\r\n'
        head = parse_head(raw)
        request = Request(self.app, head, self.client, self.scheme, _BytesBody(body) if body else None)
        if self.raise_errors:
            request._raise_errors = True
        response = self.loop.run_until_complete(self.app.handle(request))
        payload = self.loop.run_until_complete(_collect_body(response, method))
        for value in response.headers.get_all('set-cookie'):
            pair = value.split(';', 1)[0]
            name, _, val = pair.partition('=')
            if 'max-age=0' in value.lower():
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = val
        self._add_framing(response, method, payload)
        return TestResponse(response.status, response.headers, payload)

    @staticmethod
    def _add_framing(response, method, payload):
        """The framing field the server would send (response_head): Content-Length for a body
        of known length, chunked for a stream, none for 1xx, 204 and 304."""
        status = response.status
        if status in _NO_BODY_STATUSES or status < 200:
            return
        fields = response.headers
        for name in _FRAMING_HEADERS:
            if name in fields:
                del fields[name]
        body = response.body
        if response.file is not None:
            fields['Content-Length'] = str(response.file[2])
        elif isinstance(body, (bytes, bytearray)):
            fields['Content-Length'] = str(len(body))      # a HEAD's too: GET's length
        elif isinstance(body, str) or body is None:
            fields['Content-Length'] = str(len(payload))
        else:
            fields['Transfer-Encoding'] = 'chunked'        # a stream (HTTP/1.1)

    def get(self, url, **kw):
        return self.request('GET', url, **kw)

    def head(self, url, **kw):
        return self.request('HEAD', url, **kw)

    def post(self, url, data=None, **kw):
        return self.request('POST', url, data=data, **kw)

    def put(self, url, data=None, **kw):
        return self.request('PUT', url, data=data, **kw)

    def patch(self, url, data=None, **kw):
        return self.request('PATCH', url, data=data, **kw)

    def delete(self, url, **kw):
        return self.request('DELETE', url, **kw)

    def options(self, url, **kw):
        return self.request('OPTIONS', url, **kw)


def _test_body(headers, data, json_value, files, body):
    """A test request's body as bytes, with the Content-Type its arguments imply (unless
    ``headers`` names one): ``json=`` is JSON, ``files=`` multipart (with ``data``'s fields),
    ``data=`` urlencoded when it is a dict or pairs, sent as given when bytes or str."""
    if sum(x is not None for x in (data if files is None else None, json_value, body)) > 1:
        raise TypeError('give one of data=, json= and body= (files= may come with data=)')
    if data is not None and not isinstance(data, (bytes, str)):
        data = urllib.parse.urlencode(data, doseq=True)
    if files is not None:
        if isinstance(data, bytes):
            data = data.decode()
        fields = urllib.parse.parse_qsl(data or '', keep_blank_values=True)   # repeated keys kept
        body, ctype = encode_multipart(data_fields=fields, files=files)
        headers.setdefault('Content-Type', ctype)
    elif json_value is not None:
        body = json.dumps(json_value).encode()
        headers.setdefault('Content-Type', 'application/json')
    elif data is not None:
        body = data.encode() if isinstance(data, str) else data
        headers.setdefault('Content-Type', 'application/x-www-form-urlencoded')
    return body or b''


async def _collect_body(response, method):
    if method == 'HEAD':
        return b''
    if response.file is not None:
        path, offset, length = response.file
        data = await asyncio.to_thread(_read_whole, path)
        return data[offset:offset + length] if length is not None else data[offset:]
    body = response.body
    if isinstance(body, bytes):
        return body
    parts = []
    if hasattr(body, '__aiter__'):
        async for chunk in body:
            parts.append(chunk.encode() if isinstance(chunk, str) else chunk)
    else:
        for chunk in body:
            parts.append(chunk.encode() if isinstance(chunk, str) else chunk)
    return b''.join(parts)


def _read_whole(path):
    with open(path, 'rb') as f:
        return f.read()


def encode_multipart(data_fields=None, files=None, boundary=None):
    """A multipart/form-data body -> (bytes, content type). data_fields: a dict or (name, value)
    pairs; files: name -> (filename, bytes[, type])."""
    boundary = boundary or '----server-py-' + secrets.token_hex(12)
    out = []
    for name, value in (data_fields.items() if hasattr(data_fields, 'items') else data_fields or ()):
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.append(str(value).encode() + b'\r\n')
    for name, spec in (files or {}).items():
        filename, content = spec[0], spec[1]
        ctype = spec[2] if len(spec) > 2 else 'application/octet-stream'
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                   f'filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n'.encode())
        out.append(content + b'\r\n')
    out.append(f'--{boundary}--\r\n'.encode())
    return b''.join(out), f'multipart/form-data; boundary={boundary}'


# === 11. Connection and server ===

_CONTINUE = b'HTTP/1.1 100 Continue\r\n\r\n'
_CR_LF = (13, 10)
_EMPTY_LINES_RE = re.compile(rb'(?:\r?\n)*')


class BodyReader:
    """The body of one request as it arrives: decoded by Content-Length or chunked framing.

    The connection feeds raw bytes; the handler awaits ``receive()``. Past
    READ_HIGH_WATER_BYTES of unread body the transport stops reading (flow control).
    """

    __slots__ = ('conn', 'remaining', 'decoder', 'chunks', 'buffered', 'complete', 'error',
                 'waiter', 'expect_continue', 'continue_sent', 'received', 'discarding',
                 'started', 'arrived')

    def __init__(self, conn, head):
        self.conn = conn
        self.remaining = head.body_length     # None when chunked
        self.decoder = ChunkedDecoder() if head.chunked else None
        self.chunks = collections.deque()
        self.buffered = 0
        self.complete = False
        self.error = None
        self.waiter = None
        self.expect_continue = head.expect_continue
        self.continue_sent = False
        self.received = 0
        self.discarding = False
        self.started = time.monotonic()   # when the head was read (rate_deadline)
        self.arrived = 0                  # bytes on the wire since, framing included

    def rate_deadline(self):
        """When the body falls below MIN_BODY_RATE_BYTES_S on average, grace included."""
        return self.started + BODY_RATE_GRACE_S + self.arrived / MIN_BODY_RATE_BYTES_S

    def feed(self, data):
        """Take the body's bytes from ``data``; return what follows the body (the next request)."""
        self.arrived += len(data)
        leftover = b''
        if self.decoder is not None:
            try:
                chunk = self.decoder.feed(data)
            except HTTPError as exc:
                self.fail(exc)
                return b''
            if self.decoder.done:
                self.complete = True
                leftover = self.decoder.leftover
        else:
            if len(data) >= self.remaining:
                chunk, leftover = data[:self.remaining], data[self.remaining:]
                self.remaining = 0
                self.complete = True
            else:
                chunk = data
                self.remaining -= len(data)
        if chunk:
            self.received += len(chunk)
            if self.discarding:
                if self.received > MAX_DRAIN_BYTES:
                    self.fail(HTTPError(413, 'unread body too large to drain', close=True))
            else:
                self.chunks.append(chunk)
                self.buffered += len(chunk)
        self._wake()
        return leftover

    def fail(self, exc):
        self.error = exc
        self._wake()

    def left_to_drain(self):
        """None once the whole body arrived, else the bytes still to come (-1: they cannot be
        drained: the body failed, its length is unknown, or the client waits for a 100
        Continue it was never sent)."""
        if self.complete:
            return None
        if self.error is not None or self.decoder is not None or (
                self.expect_continue and not self.continue_sent):
            return -1
        return self.remaining

    def discard(self):
        """Drop what was read of the body and discard the rest as it comes (the handler is done)."""
        self.discarding = True
        self.chunks.clear()
        self.buffered = 0
        self.received = 0        # MAX_DRAIN_BYTES counts what is discarded from here

    def _wake(self):
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take_all(self):
        """The whole body if all of it has arrived and none was taken yet, else None."""
        if not self.complete or self.error is not None or self.received != self.buffered:
            return None
        body = b''.join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        self.conn._resume_reading_body()
        return body

    async def receive(self):
        """The next decoded chunk, or b'' at the end of the body."""
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self.buffered < READ_HIGH_WATER_BYTES:
                    self.conn._resume_reading_body()
                return chunk
            if self.error is not None:
                raise self.error
            if self.complete:
                return b''
            if self.expect_continue and not self.continue_sent:
                self.continue_sent = True
                self.conn.writer.write(_CONTINUE)
            self.waiter = self.conn.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None


class Deadline(enum.Enum):
    """What a connection waits for, each with a time limit of its own (seconds()).

    The server's reaper checks every connection's one deadline once a second, so thousands
    of connections cost no timers.
    """

    HEAD = 'head'      # the rest of a request head: slowloris
    IDLE = 'idle'      # a keep-alive connection's next request
    BODY = 'body'      # more of a request body, and its minimum average rate
    WRITE = 'write'    # the client to take what was written to it

    def seconds(self):
        """How long this wait may take; the limits are read when asked, so a change applies at once."""
        if self is Deadline.HEAD:
            return HEADER_TIMEOUT_S
        if self is Deadline.IDLE:
            return KEEPALIVE_TIMEOUT_S
        if self is Deadline.BODY:
            return BODY_TIMEOUT_S
        return WRITE_TIMEOUT_S


_HEAD_WAIT, _IDLE_WAIT, _BODY_WAIT, _WRITE_WAIT = Deadline


def sendfile_deadline(count):
    """Seconds one sendfile step of ``count`` bytes may take: what SENDFILE_MIN_RATE needs,
    but at least WRITE_TIMEOUT_S and at most four times it."""
    return min(4 * WRITE_TIMEOUT_S, max(WRITE_TIMEOUT_S, count / SENDFILE_MIN_RATE))


class ResponseWriter:
    """Puts one connection's responses on its transport: bytes, streams and files.

    Flow control: ``drain()`` waits while the transport's buffer is above its high-water
    mark (pause_writing), under a write deadline that cuts off a client that stopped
    reading. Small writes may be held back (corked) while Server._start_due gathers the
    answers to pipelined requests, and go out in one write. Files go out with
    loop.sendfile where the transport allows it, else in chunks read in a thread.
    """

    __slots__ = ('conn', 'transport', 'loop', 'paused', 'drain_waiter', 'corked', 'sending_file')

    def __init__(self, conn, transport):
        self.conn = conn
        self.transport = transport
        self.loop = conn.loop
        self.paused = False            # the transport's buffer is above its high-water mark
        self.drain_waiter = None
        self.corked = None             # small writes held back while pipelined answers are gathered
        self.sending_file = False      # loop.sendfile owns the socket right now

    def write(self, data):
        """transport.write, or held back while pipelined answers are gathered."""
        corked = self.corked
        if corked is None:
            self.transport.write(data)
        elif len(data) > CORK_BYTES:
            self.uncork()
            self.transport.write(data)
        else:
            corked.append(data)

    def uncork(self):
        """Send what was held back, in one write."""
        corked = self.corked
        if corked is not None:
            self.corked = None
            if corked:
                self.transport.write(b''.join(corked))

    async def drain(self):
        """Wait until the transport's write buffer is below its high-water mark."""
        if self.conn.closed:
            raise ClientDisconnected('client went away')
        # Held-back writes count too: the transport can only push back on what it was given.
        self.uncork()
        if self.paused:
            self.drain_waiter = self.loop.create_future()
            try:
                await self.drain_waiter
            finally:
                self.drain_waiter = None

    def wake(self, exc=None):
        """Let a drain() go on (the buffer emptied), or fail it (the client went away)."""
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    def write_bytes(self, head, response, body, keep_alive):
        """Write a response whose body is bytes; the body bytes sent, or None if a field would inject."""
        status = response.status
        fields = response._fields()
        length = len(body)
        if head.method == 'HEAD' or status in _NO_BODY_STATUSES or status < 200:
            data = response_head(head.version, status, fields, length, keep_alive)
            sent = 0
        elif length <= 65536:
            data = response_head(head.version, status, fields, length, keep_alive, body)
            sent = length
        else:        # not worth copying a large body just to save one send()
            data = response_head(head.version, status, fields, length, keep_alive)
            if data is not None:
                self.write(data)
                data = body
            sent = length
        if data is None:
            return None
        if self.corked is None:       # the usual case, without a call
            self.transport.write(data)
        else:
            self.write(data)
        return sent

    async def write_other(self, head, response, keep_alive):
        """Write a response with a file or a streamed body; the body bytes sent, or None."""
        body = response.body
        stream = None
        file_spec = response.file
        if file_spec is not None:
            length = file_spec[2]
            if length is None:
                length = (await asyncio.to_thread(os.stat, file_spec[0])).st_size - file_spec[1]
                file_spec = (file_spec[0], file_spec[1], length)
        elif body is None or isinstance(body, (str, bytes, bytearray, memoryview)):
            # Set on the response after it was made: take it as bytes, as the constructor would.
            if body is None:
                body = b''
            elif isinstance(body, str):
                body = body.encode('utf-8')
            else:
                body = bytes(body)
            response.body = body
            return self.write_bytes(head, response, body, keep_alive)
        else:
            stream, length = body, None
        status = response.status
        data = response_head(head.version, status, response._fields(), length, keep_alive)
        if data is None or head.method == 'HEAD' or status in _NO_BODY_STATUSES or status < 200:
            if stream is not None and hasattr(stream, 'close'):
                try:
                    stream.close()      # the app's own iterator, never to be read now
                except Exception:
                    log.exception('closing a response stream that was not sent')
            if data is None:
                return None
            self.write(data)
            return 0
        self.write(data)
        if file_spec is not None:
            return await self._send_file(*file_spec)
        return await self._send_stream(stream, chunked=head.version >= (1, 1))

    async def _send_stream(self, stream, chunked):
        sent = 0
        if hasattr(stream, '__aiter__'):
            async for chunk in stream:
                sent += await self._write_chunk(chunk, chunked)
        else:
            iterator = iter(stream)
            done = object()
            try:
                while True:
                    chunk = await asyncio.to_thread(next, iterator, done)
                    if chunk is done:
                        break
                    sent += await self._write_chunk(chunk, chunked)
            finally:
                if hasattr(iterator, 'close'):
                    await asyncio.to_thread(iterator.close)
        if chunked:
            self.write(b'0\r\n\r\n')
        return sent

    async def _write_chunk(self, chunk, chunked):
        if isinstance(chunk, str):
            chunk = chunk.encode('utf-8')
        if not chunk:
            return 0
        if chunked:
            self.write(b'%x\r\n%b\r\n' % (len(chunk), chunk))
        else:
            self.write(chunk)
        await self.drain()
        return len(chunk)

    async def _send_file(self, path, offset, length):
        f = await asyncio.to_thread(open, path, 'rb')
        try:
            sent = 0
            if self.conn.scheme == 'http':
                sent = await self._sendfile(f, offset, length)
            while sent < length:
                step = min(STATIC_CHUNK_BYTES, length - sent)
                data = await asyncio.to_thread(_read_at, f, offset + sent, step)
                if not data:
                    # The file shrank while we sent it; the length we promised is now a lie.
                    self.transport.abort()
                    raise ConnectionResetError('file changed while being sent')
                self.write(data)
                sent += len(data)
                await self.drain()
            return sent
        finally:
            f.close()   # a read-only regular file: closing never waits on the disk

    async def _sendfile(self, f, offset, length):
        """Zero-copy with loop.sendfile, in steps that each must finish within a write deadline.

        Steps start at 1 MiB (one call for most files: each call costs loop work of its
        own) and double up to 4 MiB while the client keeps up. A step's deadline follows
        SENDFILE_MIN_RATE (sendfile_deadline), so a slow but live client (down to ~9 KB/s) is
        not cut off and a dead one is within two minutes. A step that overruns is cancelled
        (HTTPConnection.timed_out), never aborted under sendfile's feet.
        Returns the bytes sent: fewer when sendfile is unavailable here (the caller then
        reads and writes) or the file ended early.
        """
        conn = self.conn
        sent = 0
        step = 1024 * 1024
        while sent < length:
            count = min(step, length - sent)
            started = self.loop.time()
            conn.set_deadline(_WRITE_WAIT, sendfile_deadline(count))
            self.sending_file = True
            try:
                n = await self.loop.sendfile(self.transport, f, offset + sent, count, fallback=False)
            except (asyncio.SendfileNotAvailableError, NotImplementedError):
                return sent
            finally:
                self.sending_file = False
                if conn.deadline_kind is _WRITE_WAIT:
                    conn.deadline_kind = None
            if n == 0:
                return sent
            sent += n
            if self.loop.time() - started < 0.5:
                step = min(step * 2, 4 * 1024 * 1024)
        return sent


def _read_at(f, offset, size):
    f.seek(offset)
    return f.read(size)


def _is_stream(body):
    return not (body is None or isinstance(body, (str, bytes, bytearray, memoryview)))


class Exchange:
    """One request answered on a connection: the app is asked, the answer written, and the
    connection told how it ended (HTTPConnection.finish).

    It holds what travels from one step to the next: the head, the Request, its body
    reader, the response, whether the connection stays open, and the body bytes sent.
    """

    __slots__ = ('conn', 'head', 'reader', 'request', 'response', 'keep_alive', 'sent')

    def __init__(self, conn, head, reader, response=None):
        self.conn = conn
        self.head = head
        self.reader = reader
        self.request = None
        self.response = response      # given: an answer made before any Request (a bad head)
        self.keep_alive = False
        self.sent = 0

    async def run(self):
        """Answer the request; a failure while writing cuts the connection off, nothing else."""
        conn = self.conn
        try:
            if self.response is None:
                self.request = request = Request(conn.app, self.head, conn.peer, conn.scheme, self.reader)
                request._peer_trusted = conn.peer_trusted
                self.response = await conn.app.handle(request)
            response = self.response
            if response.file is None and response.body.__class__ is bytes:
                # The common answer: written, and usually finished, without another coroutine.
                self.decide_keep_alive()
                self.sent = conn.writer.write_bytes(self.head, response, response.body, self.keep_alive)
                if self.sent is not None and not (conn.writer.paused and self.keep_alive):
                    conn.finish(self)
                    return
            else:
                self.decide_keep_alive()
                self.sent = await conn.writer.write_other(self.head, response, self.keep_alive)
            await self.complete()
        except (ConnectionError, asyncio.CancelledError):
            conn.writer.uncork()
            conn.transport.abort()
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException:    # a bug of ours, or an app's own BaseException subclass
            log.exception('error answering a request')
            # This answer may be cut short, so the connection cannot go on. What was written
            # before it still goes out if the kernel takes it now; abort drops the rest.
            conn.writer.uncork()
            conn.transport.abort()

    def decide_keep_alive(self):
        response, reader = self.response, self.reader
        self.keep_alive = keep_alive_after(
            self.head, response.close or self.conn.server.closing,
            response.file is None and _is_stream(response.body),
            None if reader is None else reader.left_to_drain())

    async def complete(self):
        """After the write: a refused field becomes a 500; then backpressure, then the next request."""
        conn = self.conn
        if self.sent is None:
            log.error('refusing a response header with CR, LF or NUL for %s', log_escape(self.head.target))
            self.response = error_page(HTTPError(500))
            self.response.close = True
            self.reader = None
            self.decide_keep_alive()
            self.sent = conn.writer.write_bytes(self.head, self.response, self.response.body, False)
        if conn.writer.paused and self.keep_alive:
            # No next request while the client has not taken this answer; the write deadline
            # set by pause_writing cuts off one that never does.
            await conn.writer.drain()
        conn.finish(self)


class HTTPConnection(asyncio.Protocol):
    """One client connection's reading side: frames requests, starts each one, and keeps
    the connection's one deadline (Deadline).

    Pipelined requests wait in the buffer and are answered in order, one at a time: the
    next head is framed only when the last answer is finished (finish).
    """

    # Slots: an idle keep-alive connection is mostly this object, and ten thousand of them
    # should cost little memory.
    __slots__ = ('server', 'app', 'loop', 'transport', 'writer', 'peer', 'peer_trusted', 'scheme',
                 'buf', 'active', 'reader', 'deadline', 'deadline_kind', 'paused_kind',
                 'paused_reading', 'closed', 'requests', 'eof', 'task', 'scanned')

    def __init__(self, server):
        self.server = server
        self.app = server.app
        self.loop = server.loop
        self.transport = None
        self.writer = None
        self.peer = ''
        self.peer_trusted = False
        self.scheme = 'http'
        self.buf = bytearray()
        self.active = False            # a request is being answered
        self.reader = None             # BodyReader of the active request
        self.deadline = 0.0
        self.deadline_kind = None      # a Deadline, or None while the app has the request
        self.paused_kind = None        # the deadline a write deadline replaced (pause_writing)
        self.paused_reading = False
        self.closed = False
        self.requests = 0
        self.eof = False
        self.task = None               # the task answering the current request
        self.scanned = 0               # how far the buffer was searched for the end of a head

    # -- asyncio.Protocol --
    def connection_made(self, transport):
        self.transport = transport
        self.writer = ResponseWriter(self, transport)
        peer = transport.get_extra_info('peername')
        self.peer = peer[0] if isinstance(peer, tuple) else ''
        self.peer_trusted = self.app.config_trusted(self.peer)   # once per connection, not per request
        if transport.get_extra_info('sslcontext') is not None:
            self.scheme = 'https'
        # TCP_NODELAY: asyncio's socket transport sets it on TCP sockets made with proto
        # IPPROTO_TCP (TLS ones included), and a second setsockopt costs a system call per
        # connection. A listening socket handed in with proto 0 gives sockets that asyncio
        # leaves alone: those get it here.
        sock = transport.get_extra_info('socket')
        if sock is not None and sock.proto != socket.IPPROTO_TCP and \
                sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.set_deadline(_HEAD_WAIT)
        self.server.connections.add(self)
        if self.server.closing:
            transport.close()

    def connection_lost(self, exc):
        self.closed = True
        self.server.connections.discard(self)
        if self.reader is not None and not self.reader.complete:
            self.reader.fail(ClientDisconnected('client went away'))
        self.writer.wake(ClientDisconnected('client went away'))

    def pause_writing(self):
        self.writer.paused = True
        if self.deadline_kind is not _WRITE_WAIT:
            self.paused_kind = self.deadline_kind
        self.set_deadline(_WRITE_WAIT)

    def resume_writing(self):
        self.writer.paused = False
        # A closing transport still holds output: the write deadline stays until it is sent.
        if self.deadline_kind is _WRITE_WAIT and not (self.transport.is_closing() or self.writer.sending_file):
            # The idle, head or body clock the write had replaced (the gathered answers of
            # _start_due are written after the next one is set) starts again, whole.
            kind, self.paused_kind = self.paused_kind, None
            if kind is None:
                self.deadline_kind = None
            else:
                self.set_deadline(kind)
        self.writer.wake()

    def data_received(self, data):
        reader = self.reader
        if reader is not None and not reader.complete and reader.error is None:
            data = reader.feed(data)
            if self.deadline_kind is _BODY_WAIT:
                self.set_deadline(_BODY_WAIT)
            if reader.buffered >= READ_HIGH_WATER_BYTES and not self.paused_reading:
                self._pause_reading()
            if reader.complete:
                if self.deadline_kind is _BODY_WAIT:
                    self.deadline_kind = None
                if reader.discarding:
                    self.reader = None
                    self.buf += data
                    self._next_request()
                    return
            elif reader.error is not None and reader.discarding:
                self.transport.close()
                return
            if not data:
                return
        self.buf += data
        if not self.active:
            self._parse()
            if not self.active and self.deadline_kind is _IDLE_WAIT:
                # The first bytes of a head that is not complete yet: its clock starts now.
                self.set_deadline(_HEAD_WAIT)
        elif len(self.buf) > READ_HIGH_WATER_BYTES and not self.paused_reading:
            self._pause_reading()

    def eof_received(self):
        # The client half-closed: answer what it already sent, then close.
        self.eof = True
        reader = self.reader
        if reader is not None and not reader.complete:
            # The body can never be completed now.
            if reader.discarding:
                return None
            reader.fail(HTTPError(400, 'connection closed before the end of the body', close=True))
        if not self.active:
            self._parse()
        return True if self.active else None

    # -- deadlines and flow control --
    def set_deadline(self, kind, seconds=None):
        """Wait for ``kind`` from now: ``seconds``, else its own limit (Deadline.seconds); a
        body's wait also ends when the body falls below its minimum average rate."""
        # time.monotonic(), as the reaper reads it: a C call, where loop.time() adds a frame.
        now = time.monotonic()
        self.deadline_kind = kind
        self.deadline = now + (kind.seconds() if seconds is None else seconds)
        if kind is _BODY_WAIT and self.reader is not None:
            self.deadline = min(self.deadline, self.reader.rate_deadline())

    def timed_out(self):
        kind = self.deadline_kind
        self.deadline_kind = None
        if kind is _HEAD_WAIT:
            if self.buf.strip(b'\r\n'):
                self._send_error(HTTPError(408, 'request head not received in time', close=True))
            else:
                self._close_now()
        elif kind is _IDLE_WAIT:
            self._close_now()
        elif kind is _BODY_WAIT:
            if self.reader is not None:
                slow = self.reader.rate_deadline() <= time.monotonic()
                self.reader.fail(HTTPError(408, 'request body too slow' if slow else 'request body stalled',
                                           close=True))
                if self.reader.discarding:
                    self.transport.close()
            else:
                self.transport.close()
        elif kind is _WRITE_WAIT:
            log.info('closing a connection from %s that stopped reading its response', self.peer)
            if self.writer.sending_file and self.task is not None:
                # Cancelling lets loop.sendfile unregister its writer; Exchange.run then aborts.
                self.task.cancel()
            else:
                self.transport.abort()

    def _close_now(self):
        """Close once what was answered is sent. A client that stopped reading would hold
        close() open forever: the write deadline then aborts it (timed_out)."""
        self.writer.uncork()
        if self.transport.get_write_buffer_size():
            self.set_deadline(_WRITE_WAIT)
        self.transport.close()

    def _pause_reading(self):
        self.paused_reading = True
        if not self.transport.is_closing():     # a closing transport reads no more anyway
            self.transport.pause_reading()

    def _resume_reading_body(self):
        if self.paused_reading and len(self.buf) < READ_HIGH_WATER_BYTES:
            self.paused_reading = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    # -- requests --
    def _parse(self):
        """Start the next request if its head is complete in the buffer."""
        if self.closed or self.active:
            return
        buf = self.buf
        if buf and buf[0] in _CR_LF:
            # RFC 9112 2.2: ignore empty lines (CRLF, or a bare LF) before a request line. A
            # lone CR ends no line: it stays, and the request line it starts is refused.
            del buf[:_EMPTY_LINES_RE.match(buf).end()]
            self.scanned = 0
        if self.scanned == 0 and len(buf) <= QUICK_HEAD_BYTES:
            # Most buffers hold one whole, well-formed head (and maybe a body): one match
            # finds where it ends and checks it at once. Tried once a head: one that comes
            # in pieces is searched for its end below, from where the last search stopped.
            m = _HEAD_RE.match(buf.decode('latin-1'))
            if m is not None:
                try:
                    head = head_from_match(m)
                except HTTPError as exc:
                    self._send_error(exc, buf[:buf.find(b'\n')].rstrip(b'\r'))
                    return
                if head is not None:
                    self._start(head, m.end())
                    return
        end = find_head_end(buf, self.scanned)
        if end == -1:
            # Resume the search where this one stopped: a head sent a byte at a time costs
            # linear time, not quadratic.
            self.scanned = max(0, len(buf) - 3)
            try:
                check_head_size(buf)
            except HTTPError as exc:
                self._send_error(exc)
            return
        self.scanned = 0
        try:
            head = parse_head(buf[:end])
        except HTTPError as exc:
            self._send_error(exc, buf[:buf.find(b'\n')].rstrip(b'\r'))
            return
        self._start(head, end)

    def _start(self, head, end):
        """Take the head (the first ``end`` bytes of the buffer) off it and answer the request."""
        buf = self.buf
        del buf[:end]
        self.scanned = 0
        self.active = True
        self.requests += 1
        if len(buf) > READ_HIGH_WATER_BYTES and not self.paused_reading:
            self._pause_reading()      # enough pipelined input waiting; read more when it is used
        reader = None
        if head.chunked or head.body_length:
            reader = self.reader = BodyReader(self, head)
            self.set_deadline(_BODY_WAIT)
            if buf:
                rest = reader.feed(bytes(buf))
                buf.clear()
                buf += rest
                if reader.complete:
                    self.deadline_kind = None
        else:
            self.deadline_kind = None
        self.server.start_soon(self, Exchange(self, head, reader).run())

    def finish(self, exchange):
        """The answer is written: log it, then close, drain the unread body, or read on."""
        if self.server.access_log_enabled:
            self.server.log_access(exchange.head, exchange.request, self.peer, exchange.response.status,
                                   exchange.sent)
        if self.closed:
            return
        if not exchange.keep_alive:
            self._close_now()
            return
        reader = exchange.reader
        if reader is not None and not reader.complete:
            # Discard the unread rest of the body, then go on with the next request.
            reader.discard()
            self.set_deadline(_BODY_WAIT)
            self._resume_reading_body()
            return
        self.reader = None
        self._next_request()

    def _next_request(self):
        self.active = False
        self._resume_reading_body()
        if self.server.closing:
            self._close_now()
            return
        if self.eof and find_head_end(self.buf) == -1:
            self._close_now()            # half-closed, and every request it sent is answered
            return
        if self.buf:
            self.set_deadline(_HEAD_WAIT)
            # The next pipelined request is only queued (start_soon), so this never recurses.
            self._parse()
        else:
            self.set_deadline(_IDLE_WAIT)

    def _send_error(self, error, request_line=b''):
        """Answer a request we could not frame, then close; the access log shows its request
        line when that much was well-formed (a bad header, a bad length)."""
        self.active = True
        self.deadline_kind = None
        response = error_page(error)
        response.close = True
        try:
            head = RequestHead(*parse_request_line(bytes(request_line)), Headers())
        except HTTPError:
            head = RequestHead('GET', '-', (1, 1), Headers())
        head.keep_alive = False
        head.path, head.query_string = '-', ''
        self.loop.create_task(Exchange(self, head, None, response).run())


def _listen_problem(exc, host, port):
    """One line for the owner: why ``host``:``port`` cannot be listened on, and what to do."""
    if exc.errno == errno.EADDRINUSE:
        return f'port {port} on {host} is in use by another program: stop it or choose another --port'
    if exc.errno in (errno.EACCES, errno.EPERM) and 0 < port < 1024:
        return (f'port {port} is below 1024, which only root may use: run server.py on a port '
                f'such as 8000 behind nginx (see nginx.conf), or choose another --port')
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f'--host {host} is not an address of this machine: use 127.0.0.1, 0.0.0.0 '
                f'or one of its own addresses')
    return f'cannot listen on {host} port {port}: {exc.strerror or exc}'


class Server:
    """Listening sockets, the set of live connections, the reaper, and graceful shutdown."""

    def __init__(self, app, config):
        self.app = app
        self.config = config
        self.loop = None
        self.servers = []
        self.connections = set()
        self.closing = False
        self.access_log_enabled = bool(config.access_log)
        self._access_lines = []
        self._reaper = None
        self.sockets = []
        self._due = []         # (connection, request coroutine) to start at the next turn
        self._start_pending = False    # _start_due is scheduled, or running

    def start_soon(self, conn, coro):
        """Start answering a request at the next turn of the loop, with the others read in this one."""
        self._due.append((conn, coro))
        if not self._start_pending:
            self._start_pending = True
            self.loop.call_soon(self._start_due)

    def _start_due(self):
        """Start each due request in a task of its own, each in a copy of the server's context.

        Requests read in one turn of the loop are started together in the next. From Python
        3.12 a task starts eagerly (asyncio's eager_start): its first step runs right here,
        and a request that never suspends (a quick handler, a cached static file) is
        answered before the task would otherwise have been scheduled; it is a task all the
        same, so current_task(), asyncio.timeout() and contextvars behave as documented.

        Pipelined requests: one answered here queues the next of its connection at once
        (_next_request), and that one is started in the next round of this same call, up
        to PIPELINE_ROUNDS; meanwhile the connection's small writes are gathered (corked)
        and go out in one write at the end, a send() saved per answer on each side.
        Nothing is corked outside this call, so a close,
        an abort or a shutdown never finds answers held back.
        """
        base = self._context
        spawn = self.spawn
        corked = []
        try:
            for _ in range(PIPELINE_ROUNDS):
                due, self._due = self._due, []
                if not due:
                    break
                for index, (conn, coro) in enumerate(due):
                    if conn.buf and conn.writer.corked is None:
                        conn.writer.corked = []
                        corked.append(conn)
                    try:
                        conn.task = base.run(spawn, coro)     # the task's context: a copy of base
                    except BaseException:
                        # KeyboardInterrupt or SystemExit from an eager first step: it stops the
                        # loop, and the requests after this one still start.
                        for rest in due[index + 1:]:
                            self.start_soon(*rest)
                        raise
        finally:
            for conn in corked:
                conn.writer.uncork()
            # Requests queued while this ran and not taken by its rounds wait for the next
            # turn, behind the loop's other callbacks: one call does at most PIPELINE_ROUNDS.
            if self._due:
                self.loop.call_soon(self._start_due)
            else:
                self._start_pending = False

    def log_access(self, head, request, peer, status, sent):
        """One line in the Combined Log Format, the one nginx writes.

        With the stock handler (configure_logging's, on stdout) lines are gathered and
        written once per turn of the event loop: a record, a format and a flush per
        request would cost more than the request, and logging's configuration is asked
        once a turn, at its first line. Any other handler (a file, syslog, a test's
        assertLogs) gets one ordinary logging record per line.
        """
        pending = self._access_lines
        if not pending:
            if not access_log.isEnabledFor(logging.INFO):
                return
            handlers = access_log.handlers
            stock = len(handlers) == 1 and getattr(handlers[0], '_server_py', False) and not access_log.propagate
        client = peer if request is None else request.client
        if client is not peer:
            client = log_escape(client)    # forwarded (_is_ip checked it): escaped all the same
        target = head.target
        line = '-' if target == '-' else f'{head.method} {log_escape(target)} {_HTTP_VERSIONS[head.version]}'
        index = head.headers._index         # lowercase names, looked up as they are
        referer = index.get('referer')
        agent = index.get('user-agent')
        CLOCK.tick()
        text = (f'{client} - - [{CLOCK.log_time}] "{line}" {status} {sent} '
                f'"{log_escape(referer[0]) if referer and referer[0] else "-"}" '
                f'"{log_escape(agent[0]) if agent and agent[0] else "-"}"')
        if pending:                       # this turn's lines go where its first one went
            pending.append(text)
        elif stock:
            pending.append(text)
            self.loop.call_soon(self._flush_access, handlers[0])
        else:
            access_log.info('%s', text)

    def _flush_access(self, handler):
        lines, self._access_lines = self._access_lines, []
        if lines:
            try:
                handler.acquire()
                try:
                    handler.stream.write('\n'.join(lines) + '\n')
                    handler.stream.flush()
                finally:
                    handler.release()
            except Exception:
                handler.handleError(logging.makeLogRecord({'msg': lines[0]}))

    def _loop_exception(self, loop, context):
        """asyncio's accept loop logs every retry when file descriptors run out; say it once a minute."""
        message = context.get('message', '')
        if 'out of system resource' in message:
            now = time.monotonic()
            if now - self._last_fd_warning < 60:
                return
            self._last_fd_warning = now
            log.error('out of file descriptors: new connections wait until some close (%s)',
                      context.get('exception'))
            return
        if self.closing and '_start_serving' in repr(context.get('handle')):
            # asyncio's accept retries, scheduled while descriptors ran out, firing after
            # the listening socket was closed: nothing is left to serve, nothing to report.
            return
        loop.default_exception_handler(context)

    def attach(self, loop):
        """Bind to ``loop``: each request's task is made straight from asyncio.Task (eagerly
        started where asyncio can) when the loop has no task factory, else through the
        factory. Asked once, when the server starts."""
        self.loop = loop
        # What each request's context starts from: the server's, never what an earlier
        # request (its pipelined predecessor, say) left in the one it ran in.
        self._context = contextvars.copy_context()
        if loop.get_task_factory() is not None:
            self.spawn = loop.create_task
        elif sys.version_info >= (3, 12):
            self.spawn = functools.partial(asyncio.Task, loop=loop, eager_start=True)
        else:
            self.spawn = functools.partial(asyncio.Task, loop=loop)

    async def start(self, sock=None, claim=True):
        """Start the app (its claim hooks too, unless ``claim`` is false) and listen."""
        self.attach(asyncio.get_running_loop())
        self._last_fd_warning = -60.0
        self.loop.set_exception_handler(self._loop_exception)
        ssl_context = make_ssl_context(self.config.certfile, self.config.keyfile)
        await self.app.startup(claim)
        self._context = contextvars.copy_context()    # with what the startup hooks set

        def factory():
            return HTTPConnection(self)
        if sock is not None:
            server = await self.loop.create_server(factory, sock=sock, ssl=ssl_context, backlog=1024)
        else:
            try:
                server = await self.loop.create_server(
                    factory, self.config.host, self.config.port, ssl=ssl_context, backlog=1024,
                    reuse_port=self.config.workers > 1 or None)
            except OSError as exc:      # App.run() has no check_listen before it
                raise StartupError(_listen_problem(exc, self.config.host, self.config.port)) from None
        self.servers.append(server)
        self.sockets = server.sockets
        self._reaper = self.loop.create_task(self._reap())
        return server

    @property
    def port(self):
        return self.sockets[0].getsockname()[1]

    async def _reap(self):
        """Enforce every connection's deadline: one timer for all connections."""
        while True:
            await asyncio.sleep(REAPER_INTERVAL_S)
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.deadline_kind is not None and now >= conn.deadline:
                    try:
                        conn.timed_out()
                    except Exception:
                        log.exception('timing out a connection')
                        conn.transport.abort()

    async def shutdown(self, grace=SHUTDOWN_GRACE_S):
        """Stop accepting, close idle connections, let requests in flight finish, close the database."""
        self.closing = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            if not conn.active:
                conn.transport.close()
        deadline = self.loop.time() + grace
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.transport.abort()
        if self._reaper is not None:
            self._reaper.cancel()
        await self.app.shutdown()


def make_ssl_context(certfile, keyfile):
    """An ssl.SSLContext for serving HTTPS, or None without a certificate."""
    if not certfile:
        if keyfile:
            raise ConfigError('--keyfile needs --certfile')
        return None
    for label, path in (('certificate', certfile), ('key', keyfile or certfile)):
        if not os.path.isfile(path):
            raise StartupError(f'TLS {label} file not found: {path}')
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(['http/1.1'])
    try:
        context.load_cert_chain(certfile, keyfile or None)
    except ssl.SSLError as exc:
        if not keyfile:
            # A certificate alone (Let's Encrypt's fullchain.pem) fails with "PEM lib", which
            # names neither the file nor what it lacks.
            with open(certfile, 'rb') as f:
                if b'PRIVATE KEY-----' not in f.read():
                    raise StartupError(f'{certfile} holds no private key: give the key file too, '
                                       f'with --keyfile (Let\'s Encrypt: privkey.pem)') from None
        raise StartupError(f'cannot load the TLS certificate or key: {exc}') from None
    except OSError as exc:
        raise StartupError(f'cannot load the TLS certificate or key: {exc}') from None
    return context


async def serve(app, config, sock=None, ready=None, worker=False, supervisor=None):
    """Serve ``app`` until SIGINT/SIGTERM, then shut down gracefully. The single-process core.

    A worker (``worker=True``) leaves SIGINT to its parent and ignores repeated SIGTERMs:
    systemd signals the whole group and the parent forwards too, so duplicates are normal;
    the parent alone turns a second signal into an immediate exit. A worker also stops when
    its ``supervisor`` (a pid) is gone, even killed outright, instead of holding the port.
    """
    server = Server(app, config)
    await server.start(sock, claim=not worker)     # the parent claimed for its workers
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal():
        nonlocal signals
        signals += 1
        if signals > 1 and not worker:
            log.warning('second signal: exiting at once')
            os._exit(1)
        stop.set()
    installed = []
    if worker:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM,) if worker else (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    watcher = None
    if supervisor is not None:
        async def watch_supervisor():
            while os.getppid() == supervisor:
                await asyncio.sleep(REAPER_INTERVAL_S)
            log.warning('worker %d: the supervisor is gone; stopping', os.getpid())
            stop.set()
        watcher = loop.create_task(watch_supervisor())
    scheme = 'https' if config.certfile else 'http'
    host = config.host if ':' not in config.host else f'[{config.host}]'
    if ready is not None:
        ready(server)
    else:
        print(f'server.py {__version__}: serving {scheme}://{host}:{server.port}/{_on_database(config)} '
              f'(pid {os.getpid()}; Ctrl+C stops)', flush=True)
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        log.info('shutting down: finishing requests in flight (at most %.0f s)', SHUTDOWN_GRACE_S)
        started = time.monotonic()
        await server.shutdown()
        for sig in installed:
            loop.remove_signal_handler(sig)
        log.info('stopped after %.1f s', time.monotonic() - started)
    return 0


#: Set in the environment of the process a reloader runs: that one serves, even though its
#: command line (the same as the reloader's, so that a script calling app.main() runs it
#: again) asks for --reload.
RELOAD_CHILD_ENV = 'SERVER_RELOAD_CHILD'


def reloaded_child():
    """Is this process the one a reloader runs (and restarts)?"""
    return os.environ.get(RELOAD_CHILD_ENV) == '1'


def run_with_reload(config):
    """Run this program again as a child process, restarted whenever its script (server.py,
    or the app's), server.py or a file under the web root changes; the data folder is not
    watched. Returns 0 on SIGINT or SIGTERM."""
    script = getattr(sys.modules.get('__main__'), '__file__', None)
    if not script:
        raise ConfigError('--reload restarts the script that runs the server, and this one has '
                          'none: save the code in a file and run python3 app.py --reload')
    prog = os.path.basename(script)
    child_argv = [sys.executable, *sys.orig_argv[1:]]
    env = dict(os.environ, **{RELOAD_CHILD_ENV: '1'})
    data = os.path.abspath(config.data) + os.sep
    watched = [os.path.abspath(script), os.path.abspath(__file__)]
    if config.root:
        watched.append(config.root)

    def snapshot():
        stamps = {}
        for base in watched:
            paths = [base] if os.path.isfile(base) else [
                os.path.join(d, f) for d, _, files in os.walk(base) for f in files]
            for p in paths:
                if os.path.abspath(p).startswith(data):   # the app's own writes are no change
                    continue
                with contextlib.suppress(FileNotFoundError):    # removed since the walk
                    stamps[p] = os.stat(p).st_mtime_ns
        return stamps
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    while True:
        child = subprocess.Popen(child_argv, env=env)
        seen = snapshot()
        while not stop and child.poll() is None and snapshot() == seen:
            time.sleep(0.5)
        if child.poll() is None:
            child.terminate()
            child.wait()
        if stop:
            return 0
        if child.returncode not in (0, -signal.SIGTERM) and snapshot() == seen:
            print(f'{prog}: the server exited; waiting for a change to restart it', file=sys.stderr)
            while not stop and snapshot() == seen:
                time.sleep(0.5)
            if stop:
                return 0
        print(f'{prog}: change detected, restarting', file=sys.stderr)


def _on_database(config):
    """The banner's word on the database: nothing for SQLite's, the URL (without its
    password) for a PostgreSQL that other hosts may share."""
    if config.database.lower().startswith(('postgresql:', 'postgres:')):
        return f' on {redact_url(config.database)}'
    return ''


def serve_forever(app_factory, config):
    """Run the server in this process, or supervise ``config.workers`` forked workers, or
    with ``config.reload`` run it in a child process restarted on changes (run_with_reload).

    The data folder is claimed first (DataFolderInUse if another server holds it) and stays
    claimed until this process and every worker it forked have exited.
    """
    if config.reload and not reloaded_child():
        return run_with_reload(config)
    # A data folder is one server's on SQLite; servers on PostgreSQL may share one (the
    # database is what they share), but never with a server on SQLite, whose start sweeps it.
    sqlite = parse_database_url(config.database, config.data)[0] == 'sqlite'
    lock = claim_data_folder(config.data, shared=not sqlite)
    try:
        if config.workers <= 1:
            return asyncio.run(serve(app_factory(), config))
        return supervise_workers(app_factory, config)
    finally:
        if lock is not None:
            os.close(lock)


def _wait_for_workers(ready_fd, count, children):
    """Wait until ``count`` workers listen: None, or the pid of one that exited first."""
    said = 0
    while said < count:
        readable, _, _ = select.select([ready_fd], [], [], 0.1)
        if readable:
            said += len(os.read(ready_fd, count - said))
            continue
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid:
            children.pop(pid, None)
            return pid
    return None


async def _claim_and_close(app):
    """The parent's share of a start with workers: the claim hooks, then no database thread
    left to fork."""
    try:
        await app.claim()
    finally:
        await app.db.close()


def supervise_workers(app_factory, config):
    """Fork N workers that each bind the port with SO_REUSEPORT; restart any that crash."""
    if not hasattr(os, 'fork') or not hasattr(socket, 'SO_REUSEPORT'):
        raise ConfigError('--workers needs fork() and SO_REUSEPORT (Linux, BSD, macOS)')
    probe = None
    if config.port == 0:        # one port for all of them, chosen here
        probe = socket.socket(socket.AF_INET6 if ':' in config.host else socket.AF_INET)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind((config.host, 0))
        config.port = probe.getsockname()[1]
    asyncio.run(_claim_and_close(app_factory()))
    workers = _Workers(app_factory, config)
    signal.signal(signal.SIGINT, workers.on_signal)
    signal.signal(signal.SIGTERM, workers.on_signal)
    for _ in range(config.workers):
        workers.spawn()
    failed = _wait_for_workers(workers.ready_r, config.workers, workers.children)
    if failed is not None:
        if workers.stopping:      # Ctrl+C or SIGTERM while they started: a quiet stop
            return 0
        workers.stop_all()
        raise StartupError(f'worker {failed} stopped before it could serve: see the log above')
    scheme = 'https' if config.certfile else 'http'
    print(f'server.py {__version__}: serving {scheme}://{config.host}:{config.port}/{_on_database(config)} '
          f'with {config.workers} workers (pid {os.getpid()}; Ctrl+C stops)', flush=True)
    if probe is not None:
        probe.close()
    workers.watch()
    return 0


class _Workers:
    """The forked workers of one supervisor: started, restarted when they crash, stopped."""

    STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}

    def __init__(self, app_factory, config):
        self.app_factory = app_factory
        self.config = config
        self.children = {}          # pid -> when it started
        self.stopping = False
        self.supervisor = os.getpid()
        # Each worker writes a byte here once it listens: the banner, which scripts read as
        # "it answers now", waits for all of them.
        self.ready_r, self.ready_w = os.pipe()
        os.set_blocking(self.ready_w, False)      # a worker restarted later never waits on it

    def tell_ready(self, server):
        with contextlib.suppress(OSError):
            os.write(self.ready_w, b'.')

    def spawn(self):
        # Signals wait (blocked) across the fork: a child must not meet SIGTERM while it still
        # has the parent's handler (it would run it, lose the signal, and live on as an
        # orphan), and the parent must know the new pid before on_signal can run.
        signal.pthread_sigmask(signal.SIG_BLOCK, self.STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._run_child()
            self.children[pid] = time.monotonic()
        finally:
            if os.getpid() == self.supervisor:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, self.STOP_SIGNALS)

    def _run_child(self):
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self.STOP_SIGNALS)   # a pending one ends it here
            code = asyncio.run(serve(self.app_factory(), self.config, ready=self.tell_ready, worker=True,
                                     supervisor=self.supervisor))
        except StartupError as exc:
            log.error('worker %d cannot start: %s', os.getpid(), exc)
        except BaseException:
            log.exception('worker %d failed', os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)

    def signal_all(self, signum):
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def on_signal(self, signum, frame):
        if self.stopping:           # a second signal: at once
            self.signal_all(signal.SIGKILL)
            os._exit(1)
        self.stopping = True
        self.signal_all(signal.SIGTERM)

    def stop_all(self):
        self.stopping = True
        self.signal_all(signal.SIGTERM)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    def watch(self):
        """Wait for workers to exit, starting another for each that crashed, until a stop."""
        children = self.children
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            started = children.pop(pid, None)
            if started is None or self.stopping:
                continue
            log.error('worker %d exited (status %d); starting another', pid, status)
            if time.monotonic() - started < 1.0:
                time.sleep(1.0)   # a worker that dies at once should not spin the CPU
            if not self.stopping:  # a stop asked for during that second must not get a new worker
                self.spawn()


# === 12. The site ===
# The portfolio, built only from the public API above, as a user's app would be.

SITE_MIGRATIONS = [
    '''
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        email TEXT NOT NULL,
        body TEXT NOT NULL,
        ip TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX messages_ip_created ON messages (ip, created);
    CREATE TABLE uploads (
        id INTEGER PRIMARY KEY,
        owner TEXT NOT NULL,              -- a random token kept in the uploader's session
        name TEXT NOT NULL,               -- the client's file name, made safe
        stored TEXT NOT NULL UNIQUE,      -- the random name under data/uploads/
        size INTEGER NOT NULL,
        content_type TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX uploads_owner ON uploads (owner);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO counters (name, value) VALUES ('visits', 0);
    ''',
    '''
    CREATE TABLE IF NOT EXISTS admin_failures (
        address TEXT PRIMARY KEY,         -- a client address (an IPv6 client's /64)
        failures INTEGER NOT NULL,
        until REAL NOT NULL               -- when the count (and any lockout) ends
    );
    CREATE INDEX IF NOT EXISTS admin_failures_until ON admin_failures (until);
    ''',
    '''
    CREATE TABLE IF NOT EXISTS page_views (
        day TEXT PRIMARY KEY,             -- a UTC date, YYYY-MM-DD: nothing about who viewed
        views INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS uploads_created ON uploads (created);
    ''',
    '''
    CREATE TABLE IF NOT EXISTS outbox (   -- the owner's notification of each contact message
        id INTEGER PRIMARY KEY,
        message INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        created REAL NOT NULL,
        next_attempt REAL NOT NULL,       -- when it is due; while one sender holds it, its lease's end
        attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'pending',   -- 'pending' (a delivered one is deleted) or 'failed'
        error TEXT NOT NULL DEFAULT ''    -- what the last attempt met
    );
    CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt);
    ''',
    '''
    CREATE TABLE IF NOT EXISTS upload_chunks (   -- on PostgreSQL, the uploaded bytes themselves
        stored TEXT NOT NULL,             -- the upload's uploads.stored (its row may not exist yet)
        seq INTEGER NOT NULL,             -- 0, 1, 2 ... in the file's order
        data BLOB NOT NULL,               -- UPLOAD_CHUNK_BYTES, the last one fewer
        created REAL NOT NULL,
        PRIMARY KEY (stored, seq)
    );
    ''',
]

#: Contact messages allowed per client address in CONTACT_WINDOW_S; more -> 429.
CONTACT_LIMIT = 5
CONTACT_WINDOW_S = 600
#: Uploads kept per visitor (files, bytes); more -> 429 with the upload page.
UPLOAD_QUOTA_FILES = 20
UPLOAD_QUOTA_BYTES = 200 * 1024 * 1024
#: All uploads together, and the free disk space always left; past either -> 507.
UPLOAD_TOTAL_BYTES = 5 * 1024 * 1024 * 1024
UPLOAD_MIN_FREE_BYTES = 256 * 1024 * 1024
#: Failed admin logins per client address before a lockout of ADMIN_LOCKOUT_S -> 429.
ADMIN_MAX_FAILURES = 5
ADMIN_LOCKOUT_S = 900
#: Addresses the failed-login table keeps at most (the ones whose window ends first go).
ADMIN_FAILURE_ADDRESSES = 10000
#: How often the site removes uploads older than --upload-days (also once at start).
UPLOAD_EXPIRY_INTERVAL_S = 3600
#: On PostgreSQL an upload's bytes go in rows of this size, streamed in and out one at a
#: time, so no upload is ever whole in memory.
UPLOAD_CHUNK_BYTES = 256 * 1024
#: Chunks this old that no upload row names (their host died before the row) are removed.
UPLOAD_ORPHAN_S = 3600
#: Days the admin chart shows, today included.
CHART_DAYS = 30
#: A notification mail that could not be sent is tried again after this long, then after
#: twice as long each time, up to NOTIFY_RETRY_MAX_S; retries go on across restarts.
NOTIFY_RETRY_MIN_S = 5.0
NOTIFY_RETRY_MAX_S = 60.0
#: A notification still undelivered this long after its message is given up, and logged.
NOTIFY_GIVE_UP_S = 3 * 24 * 3600
#: Each step of a conversation with the mail server (connect, each reply) may take this long.
NOTIFY_SMTP_TIMEOUT_S = 20.0
#: A sender that claims a notification holds it this long; if it dies meanwhile, another sends
#: it again (with the same Message-ID, so the resend is recognisable).
NOTIFY_LEASE_S = 300.0
# An address as people type theirs: a local part of letters, digits and ._%+- (no ?, & or =
# to smuggle headers into a mailto: link), then a domain of DNS labels under a real TLD.
_EMAIL_RE = re.compile(r'(?=[^@]{1,64}@)[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@'
                       r'(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+'
                       r'(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})')
# Characters that would end a header line, or hide or reorder text, in a visitor's name.
_LINE_BREAKS_RE = re.compile(r'[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]')
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                           "script-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                           "base-uri 'self'; object-src 'none'")


def human_size(size):
    for unit in ('bytes', 'KB', 'MB', 'GB'):
        if size < 1024 or unit == 'GB':
            return f'{size} {unit}' if unit == 'bytes' else f'{size:.1f} {unit}'
        size /= 1024


def _format_time(ts):
    return time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(ts))


class VisitCounter:
    """Counts page views in memory and adds them to the database once a second.

    A count is not an acknowledged write, so batching it costs nothing the user relies on
    and keeps an fsync off every home-page view. Processes that share the count (workers,
    hosts on one PostgreSQL: ``shared``) each have a memory of their own, where two would
    hand out the same numbers: there the views of one moment are added to the database
    together, in one statement whose total no other process can also see, and each visitor
    gets the next number of that batch.
    """

    def __init__(self, db, shared=False):
        self.db = db
        self.shared = shared
        self.stored = 0
        self.pending = 0
        self.flushing = 0
        self.waiting = []           # shared: the views still to count, each a future
        self.counting = None        # shared: the task adding them

    async def load(self):
        self.stored = await self.db.run(_visits)

    async def hit(self):
        """Count a view; the count with it."""
        if not self.shared:
            self.pending += 1
            return self.stored + self.flushing + self.pending
        loop = asyncio.get_running_loop()
        view = loop.create_future()
        self.waiting.append(view)
        if self.counting is None:
            self.counting = loop.create_task(self._count_waiting())
        return await view

    async def _count_waiting(self):
        """Add the waiting views in batches: those of one turn of the loop, and those that
        came while the batch before was in the database, go together."""
        try:
            while self.waiting:
                await asyncio.sleep(0)
                views, self.waiting = self.waiting, []
                try:
                    total = await self.db.run(_add_visits, len(views))
                except Exception as exc:        # the database is busy or away: each view says so
                    for view in views:
                        if not view.done():
                            view.set_exception(exc)
                    continue
                for number, view in enumerate(views, total - len(views) + 1):
                    if not view.done():
                        view.set_result(number)
        finally:
            self.counting = None
            for view in self.waiting:           # cancelled: the loop is being shut down
                view.cancel()
            self.waiting = []

    async def current(self):
        """The count, without a view."""
        if self.shared:
            return await self.db.run(_visits)
        return self.stored + self.flushing + self.pending

    async def flush(self):
        if self.pending and not self.flushing:
            self.flushing, self.pending = self.pending, 0
            try:
                self.stored = await self.db.run(_add_visits, self.flushing)
            except BaseException:
                self.pending += self.flushing
                raise
            finally:
                self.flushing = 0


def _mailto(address):
    """A mailto: link for an address the contact form would accept, else '' (no link)."""
    if len(address) > 200 or not _EMAIL_RE.fullmatch(address):
        return ''
    return 'mailto:' + urllib.parse.quote(address, safe='@')


def _store_message(conn, values, client, now, notify=False):
    """Store a contact message, and with ``notify`` its notification in the outbox (one
    transaction: neither exists without the other), unless ``client`` sent CONTACT_LIMIT in
    the window: then the time of its first one there, and nothing is stored. The check and
    the insert are one statement (a round trip to PostgreSQL), run under the write lock."""
    since = now - CONTACT_WINDOW_S
    row = conn.execute('INSERT INTO messages (name, email, body, ip, created) SELECT ?, ?, ?, ?, ? '
                       'WHERE (SELECT COUNT(*) FROM messages WHERE ip = ? AND created > ?) < ? RETURNING id',
                       (values['name'], values['email'], values['message'], client, now,
                        client, since, CONTACT_LIMIT)).fetchone()
    if row is None:
        return conn.execute('SELECT MIN(created) FROM messages WHERE ip = ? AND created > ?',
                            (client, since)).fetchone()[0]
    if notify:
        conn.execute('INSERT INTO outbox (message, created, next_attempt) VALUES (?, ?, ?)',
                     (row[0], now, now))
    return None


def _add_visits(conn, count):
    """Add ``count`` views; the total after them, which this call alone sees (RETURNING, in
    the write lock's transaction)."""
    with conn:
        conn.execute('BEGIN IMMEDIATE')
        total = conn.execute("UPDATE counters SET value = value + ? WHERE name = 'visits' RETURNING value",
                             (count,)).fetchone()[0]
        # The day's total alone: nothing about the visitor is kept.
        conn.execute('INSERT INTO page_views (day, views) VALUES (?, ?) ON CONFLICT (day) '
                     'DO UPDATE SET views = page_views.views + excluded.views', (_utc_day(time.time()), count))
    return total


def _utc_day(ts):
    return time.strftime('%Y-%m-%d', time.gmtime(ts))


def _visits(conn):
    row = conn.execute("SELECT value FROM counters WHERE name = 'visits'").fetchone()
    return row[0] if row else 0


def _sweep_uploads(conn, upload_dir):
    """Remove spool files and files no row points at: what a crash may leave behind."""
    os.makedirs(upload_dir, mode=DATA_DIR_MODE, exist_ok=True)
    known = {row[0] for row in conn.execute('SELECT stored FROM uploads')}
    removed = 0
    for name in os.listdir(upload_dir):
        if name not in known:
            try:
                os.unlink(os.path.join(upload_dir, name))
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:      # a folder, a file of another user's: left, and said
                log.warning('cannot remove %s from the uploads: %s', name, exc.strerror)
    return removed


def _delete_uploads(conn, upload_dir, where, params=()):
    """Delete the uploads ``where`` selects: their rows (and on PostgreSQL their chunks) in
    one transaction, then their files; the ids deleted. A crash between leaves files no row
    points at, which the sweep at the next start removes; never a row whose file is gone.
    Safe while a server runs."""
    with conn:
        conn.execute('BEGIN IMMEDIATE')
        rows = conn.execute(f'SELECT id, stored FROM uploads WHERE {where}', params).fetchall()
        conn.executemany('DELETE FROM uploads WHERE id = ?', [(row[0],) for row in rows])
        conn.executemany('DELETE FROM upload_chunks WHERE stored = ?', [(row[1],) for row in rows])
    for _, stored in rows:
        try:
            _unlink_quietly(os.path.join(upload_dir, stored))
        except OSError as exc:      # left for the sweep at the next start, and said
            log.warning('cannot remove upload %s: %s', stored, exc.strerror)
    return [row[0] for row in rows]


def _store_upload_chunks(conn, stored, path):
    """Copy the spooled file at ``path`` into upload_chunks as ``stored``, a chunk at a time,
    in one transaction of its own (no write lock: no other call waits on the copy)."""
    now = time.time()
    with conn, open(path, 'rb') as f:
        conn.execute('BEGIN')
        for seq in itertools.count():
            data = f.read(UPLOAD_CHUNK_BYTES)
            if not data:
                break
            conn.execute('INSERT INTO upload_chunks (stored, seq, data, created) VALUES (?, ?, ?, ?)',
                         (stored, seq, data, now))


def _delete_orphan_chunks(conn, now):
    """Chunks that no upload names: a refused upload's, or one whose host died before its row."""
    return conn.execute('DELETE FROM upload_chunks WHERE created < ? AND stored NOT IN '
                        '(SELECT stored FROM uploads)', (now - UPLOAD_ORPHAN_S,)).rowcount


async def _keep_upload(app, upload, stored):
    """Keep the spooled ``upload`` as ``stored``: a file on SQLite, made durable under its final
    name before its row commits; rows of chunks on PostgreSQL, which every host reads."""
    if app.db.kind == 'postgresql':
        await app.db.run(_store_upload_chunks, stored, upload.path)
    else:
        await asyncio.to_thread(upload.save, os.path.join(app.upload_dir, stored))


async def _drop_upload(app, stored):
    """Remove what _keep_upload kept, for an upload whose row was refused."""
    if app.db.kind == 'postgresql':
        await app.db.execute('DELETE FROM upload_chunks WHERE stored = ?', (stored,))
    else:
        await asyncio.to_thread(_unlink_quietly, os.path.join(app.upload_dir, stored))


def _upload_response(app, row):
    """An upload (its row: name, stored, size) as a download: the file on SQLite, its chunks
    read one at a time on PostgreSQL (Range is a file's alone)."""
    if app.db.kind == 'sqlite':
        return _attachment(os.path.join(app.upload_dir, row['stored']), row['name'])

    async def chunks():
        sent = 0
        for seq in itertools.count():
            chunk = await app.db.fetchone('SELECT data FROM upload_chunks WHERE stored = ? AND seq = ?',
                                          (row['stored'], seq))
            if chunk is None:
                break
            sent += len(chunk['data'])
            yield chunk['data']
        if sent != row['size']:
            # Deleted (or expired) while it was read: the connection is cut, so the client
            # never takes a part for the whole file.
            raise RuntimeError(f'upload {row["stored"]} ended after {sent} of {row["size"]} bytes')
    return _attachment(None, row['name'], chunks())     # sent chunked: a stream's length is not framed


def _delete_by_ids(conn, upload_dir, kind, ids):
    """Delete the messages or uploads (``kind``) with these ids; the ids that were there."""
    ids = list(ids)
    marks = ','.join('?' * len(ids))
    if kind == 'upload':
        return _delete_uploads(conn, upload_dir, f'id IN ({marks})', ids)
    with conn:
        conn.execute('BEGIN IMMEDIATE')
        found = [row[0] for row in conn.execute(f'SELECT id FROM messages WHERE id IN ({marks})', ids)]
        conn.execute(f'DELETE FROM messages WHERE id IN ({marks})', ids)
    return found


def _daily_counts(conn, now, days=CHART_DAYS):
    """[{'day', 'views', 'messages'}] for the ``days`` UTC days up to the one of ``now``."""
    first = (int(now) // 86400 - days + 1) * 86400
    names = [_utc_day(first + i * 86400) for i in range(days)]
    views = dict(conn.execute('SELECT day, views FROM page_views WHERE day >= ?', (names[0],)).fetchall())
    # Counted here, not by the SQL: CAST truncates on SQLite and rounds on PostgreSQL.
    messages = collections.Counter(int((row[0] - first) // 86400) for row in conn.execute(
        'SELECT created FROM messages WHERE created >= ?', (first,)))
    return [{'day': name, 'views': views.get(name, 0), 'messages': messages.get(i, 0)}
            for i, name in enumerate(names)]


def bar_chart_svg(days, key, label):
    """One series of _daily_counts as an inline SVG bar chart: no script and no style
    attribute (the CSP allows neither), scaled by its viewBox to any width. Only numbers
    and dates go into it; the caller gives the same numbers as text (the chart's table)."""
    values = [day[key] for day in days]
    top = max(values) or 1
    slot, plot_top, plot_h = 300 / len(values), 15, 58
    peak = values.index(max(values))
    summary = (f'{label} per day, {days[0]["day"]} to {days[-1]["day"]}: {sum(values)} in all, '
               f'at most {max(values)} (on {days[peak]["day"]})')
    parts = [f'<svg class="chart" viewBox="0 0 300 90" width="100%" role="img" aria-label="{summary}" '
             f'xmlns="http://www.w3.org/2000/svg">',
             f'<text class="chart-label" x="0" y="10" font-size="11" fill="#4d5a69">{max(values)}</text>',
             f'<line class="chart-axis" x1="0" y1="{plot_top + plot_h}" x2="300" y2="{plot_top + plot_h}" '
             f'stroke="#d5dce3" stroke-width="1"/>']
    for i, (day, value) in enumerate(zip(days, values)):
        h = round(value / top * plot_h, 1)
        parts.append(f'<rect class="chart-bar" x="{i * slot + 1:.1f}" y="{plot_top + plot_h - h}" '
                     f'width="{slot - 2:.1f}" height="{h}" fill="#0f766e">'
                     f'<title>{day["day"]}: {value}</title></rect>')
    parts.append(f'<text class="chart-label" x="0" y="88" font-size="11" fill="#4d5a69">{days[0]["day"]}</text>')
    parts.append(f'<text class="chart-label" x="300" y="88" font-size="11" fill="#4d5a69" '
                 f'text-anchor="end">{days[-1]["day"]}</text>')
    parts.append('</svg>')
    return Markup(''.join(parts))


def _upload_usage(conn, owner, upload_dir):
    """(this owner's files, their bytes, every upload's bytes, free disk bytes) -- blocking."""
    # CAST: PostgreSQL's SUM of integers is a numeric (a Decimal); SQLite's an integer.
    n, size = conn.execute('SELECT COUNT(*), CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM uploads '
                           'WHERE owner = ?', (owner,)).fetchone()
    total = conn.execute('SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM uploads').fetchone()[0]
    return n, size, total, shutil.disk_usage(upload_dir).free


def _upload_refusal(files, size, total, free, adding):
    """429 past a visitor's quota, 507 past the space for all, else None, if ``adding`` more
    bytes in one more file joined ``files`` files of ``size`` bytes (``total`` for all)."""
    if files + 1 > UPLOAD_QUOTA_FILES or size + adding > UPLOAD_QUOTA_BYTES:
        return 429
    if total + adding > UPLOAD_TOTAL_BYTES or free - adding < UPLOAD_MIN_FREE_BYTES:
        return 507
    return None


def _record_upload(conn, owner, upload, stored, upload_dir):
    """Check the quotas and record an upload already saved as ``stored``, in one
    transaction (Database.grouped): two workers or processes cannot both pass the last
    place. The refusing status, or None once recorded."""
    n, size, total, free = _upload_usage(conn, owner, upload_dir)
    refusal = _upload_refusal(n, size, total, free, upload.size)
    if refusal is None:
        conn.execute(
            'INSERT INTO uploads (owner, name, stored, size, content_type, created) VALUES (?, ?, ?, ?, ?, ?)',
            (owner, upload.filename, stored, upload.size, upload.content_type[:100], time.time()))
    return refusal


class UploadsInFlight:
    """Uploads still arriving, counted against the quotas with the stored ones.

    An upload reserves its Content-Length before its body is read, in the same turn of the
    loop as the check, and gives it back when it ends: uploads sent at once cannot each
    pass a quota that together they exceed, nor fill the disk while they arrive. Each
    worker counts its own; the final check and the insert are one transaction, which holds
    across workers and processes.
    """

    def __init__(self):
        self.files = collections.Counter()     # visitor -> uploads arriving
        self.bytes = collections.Counter()     # visitor -> bytes reserved
        self.total = 0                         # bytes reserved for every visitor

    def refusal(self, visitor, usage, size):
        """The refusing status, or None, for ``size`` more bytes from ``visitor`` given the
        stored ``usage`` (_upload_usage) and what is arriving. Reserve in the same turn of
        the loop, with no await between, or another upload may take the room meanwhile."""
        n, used, total, free = usage
        return _upload_refusal(n + self.files[visitor], used + self.bytes[visitor],
                               total + self.total, free - self.total, size)

    def reserve(self, visitor, size):
        """Count an upload of at most ``size`` bytes as arriving; the function that ends that
        (once, however often it is called)."""
        self.files[visitor] += 1
        self.bytes[visitor] += size
        self.total += size
        released = False

        def release():
            nonlocal released
            if not released:
                released = True
                self.files[visitor] -= 1
                self.bytes[visitor] -= size
                self.total -= size
                if not self.files[visitor]:
                    del self.files[visitor], self.bytes[visitor]
        return release


def _admin_attempt(conn, address, now):
    """Count a sign-in attempt from ``address`` before its password is checked, so attempts
    sent at once (or to other workers) cannot all pass the limit; the seconds its lockout
    has left if it already used its ADMIN_MAX_FAILURES, else None."""
    with conn:
        conn.execute('BEGIN IMMEDIATE')
        conn.execute('DELETE FROM admin_failures WHERE until <= ?', (now,))
        row = conn.execute('SELECT failures, until FROM admin_failures WHERE address = ?', (address,)).fetchone()
        if row is not None and row[0] >= ADMIN_MAX_FAILURES:
            return row[1] - now
        if row is None:
            conn.execute('INSERT INTO admin_failures (address, failures, until) VALUES (?, 1, ?)',
                         (address, now + ADMIN_LOCKOUT_S))
            conn.execute('DELETE FROM admin_failures WHERE address NOT IN (SELECT address FROM admin_failures '
                         'ORDER BY until DESC LIMIT ?)', (ADMIN_FAILURE_ADDRESSES,))
        else:
            conn.execute('UPDATE admin_failures SET failures = failures + 1 WHERE address = ?', (address,))
        return None


def _admin_failure_address(client):
    """The key of the failed-login table: the address, or an IPv6 client's /64, which one
    client can hold whole."""
    try:
        address = ipaddress.ip_address(client.split('%', 1)[0])
    except ValueError:
        return client
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f'{address}/64', strict=False))
    return str(address)


#: The templates the site's routes render: a web root without them is not the site's.
SITE_TEMPLATES = ('index.html', 'contact.html', 'thanks.html', 'upload.html', 'profile.html',
                  'admin.html', 'admin_login.html', 'admin_confirm.html', '404.html', 'error.html')
#: An owner's page: /NAME is templates/pages/NAME.html. No dot, slash or percent, so no URL
#: names a file outside that folder, and a partial such as _card.html is never a page.
PAGE_NAME_RE = re.compile(r'[A-Za-z0-9-]{1,64}')
#: The longest title a page's navigation link may have.
MAX_PAGE_TITLE_CHARS = 60


def load_person(root):
    """The details the pages show, from ``templates/person.json`` under the web root, after
    checking the root holds the site's templates -- blocking. Raises StartupError naming the
    file (and the line and column of bad JSON)."""
    folder = os.path.join(root, 'templates')
    missing = [name for name in SITE_TEMPLATES if not os.path.isfile(os.path.join(folder, name))]
    if len(missing) == len(SITE_TEMPLATES):
        raise StartupError(f'{root} is not the site\'s web root (it has no templates/index.html): '
                           f'use --root www beside server.py, or leave --root out')
    if missing:
        raise StartupError(f'{os.path.join(folder, missing[0])} is missing: the site renders it; '
                           f'restore it from the www/templates/ that came with server.py')
    path = os.path.join(folder, 'person.json')
    try:
        with open(path, encoding='utf-8') as f:
            person = json.load(f)
    except FileNotFoundError:
        raise StartupError(f'{path} is missing: it holds the name and details the pages show; '
                           f'restore it from the www/templates/ that came with server.py') from None
    except json.JSONDecodeError as exc:
        raise StartupError(f'{path} line {exc.lineno}, column {exc.colno}: {exc.msg}: '
                           f'fix the JSON there') from None
    except UnicodeDecodeError:
        raise StartupError(f'{path} is not UTF-8 text: save it as UTF-8') from None
    except OSError as exc:
        raise StartupError(f'{path}: {exc.strerror}') from None
    if not isinstance(person, dict):
        raise StartupError(f'{path} must hold one JSON object, {{"name": ...}}: '
                           f'it holds a {type(person).__name__}')
    person['pages'] = _checked_pages(person.get('pages', []), path, folder)
    return person


def _checked_pages(pages, path, folder):
    """person.json's ``"pages": [{"name": "talks", "title": "Talks"}]``, the navigation's
    links to owner pages, each with its ``url``; raises StartupError naming what is wrong."""
    shape = '"pages": [{"name": "talks", "title": "Talks"}]'
    if not isinstance(pages, list):
        raise StartupError(f'{path}: "pages" must be a list, as in {shape}')
    checked, seen = [], set()
    for page in pages:
        if not isinstance(page, dict) or not isinstance(page.get('name'), str) \
                or not isinstance(page.get('title'), str):
            raise StartupError(f'{path}: each of "pages" needs a "name" and a "title", as in {shape}')
        name, title = page['name'], page['title'].strip()
        if not PAGE_NAME_RE.fullmatch(name):
            raise StartupError(f'{path}: the page name {name!r} may have only letters, digits and -, '
                               f'at most 64 (it is the URL /NAME and the file templates/pages/NAME.html)')
        if not title or len(title) > MAX_PAGE_TITLE_CHARS:
            raise StartupError(f'{path}: the page {name!r} needs a title of 1 to {MAX_PAGE_TITLE_CHARS} characters')
        if name in seen:
            raise StartupError(f'{path}: the page {name!r} is listed twice')
        seen.add(name)
        if not os.path.isfile(os.path.join(folder, 'pages', name + '.html')):
            raise StartupError(f'{path} lists the page {name!r}, but {os.path.join(folder, "pages", name)}.html '
                               f'is missing: add it (extending base.html), or take the page out of "pages"')
        checked.append(dict(page, title=title, url='/' + name))
    return checked


def build_site(config):
    """The portfolio site as an App: one function per area registers its routes and hooks."""
    # --root and --data are taken from the current folder, as any command's paths are.
    app = App(root=os.path.abspath(config.root), data=os.path.abspath(config.data),
              trusted_proxy=config.trusted_proxy, migrations=SITE_MIGRATIONS, name='site',
              database=config.database)
    app.template_globals['person'] = load_person(config.root)
    # Processes that share the count (workers, hosts on one PostgreSQL) count in the database.
    counter = VisitCounter(app.db, shared=config.workers > 1 or app.db.kind == 'postgresql')
    admin_password = os.environ.get('ADMIN_PASSWORD', '')
    _site_lifecycle(app, counter, admin_password)
    _site_pages(app, counter)
    _site_contact(app, _site_notify(app, notify_settings(os.environ)))
    _site_uploads(app, UploadsInFlight())
    _site_upload_expiry(app, config.upload_days)
    _site_admin(app, admin_password)
    _site_owner_pages(app)
    return app


def _site_lifecycle(app, counter, admin_password):
    """What the site does when it starts and stops."""
    background = []

    @app.on_startup
    async def start(app):
        await app.db.execute('SELECT 1')     # creates data/app.db and migrates it
        await app.sessions.purge()
        if not admin_password:
            # /admin is off: its sessions end, so a password set again (even the same one)
            # is asked for again.
            await app.sessions.delete_holding('admin')
        await counter.load()
        app.template_globals['year'] = time.gmtime().tm_year

        async def flush_forever():
            while True:
                await asyncio.sleep(1.0)
                try:
                    await counter.flush()
                except Exception:
                    log.exception('saving the visit count')
        background.append(asyncio.get_running_loop().create_task(flush_forever()))

    @app.on_shutdown
    async def stop(app):
        for task in background:
            task.cancel()
        await counter.flush()


def _site_pages(app, counter):
    """The pages: home with its visit count, profiles, the health check; the security
    headers and error pages every response of the site gets."""

    @app.after_request
    async def security_headers(request, response):
        headers = response.headers
        headers.setdefault('X-Content-Type-Options', 'nosniff')
        if headers.get('content-type', '').startswith('text/html'):
            headers.setdefault('Content-Security-Policy', CONTENT_SECURITY_POLICY)
            headers.setdefault('X-Frame-Options', 'DENY')
            headers.setdefault('Referrer-Policy', 'strict-origin-when-cross-origin')
            headers.setdefault('Permissions-Policy', 'camera=(), microphone=(), geolocation=(), interest-cohort=()')
        if request.is_secure:
            headers.setdefault('Strict-Transport-Security', 'max-age=31536000; includeSubDomains')

    @app.errorhandler(404)
    async def not_found(request, error):
        return render('404.html', path=request.path)

    for status in (400, 403, 405, 408, 413, 429, 500, 503):
        app.errorhandler(status)(_error_view)

    @app.get('/')
    async def home(request):
        # A HEAD (a monitor, a link checker) is not a visit.
        visits = await (counter.hit() if request.method == 'GET' else counter.current())
        return render('index.html', VISIT_COUNT=visits)

    @app.get('/profile/<name>')
    async def profile(request, name):
        if len(name) > 100:
            abort(404, 'That name is too long.')
        return render('profile.html', name=name)

    @app.get('/healthz')
    async def healthz(request):
        try:
            await app.db.fetchone('SELECT 1 AS ok')
        except HTTPError:           # unavailable or busy: the database's calls log that, once
            return Response.text('database unavailable\n', 503, {'Retry-After': str(PG_RETRY_AFTER_S)})
        except Exception as exc:
            log.error('health check: database unavailable: %s', exc)
            return Response.text('database unavailable\n', 503, {'Retry-After': '5'})
        return Response.text('ok\n')


def _site_owner_pages(app):
    """The owner's pages: templates/pages/NAME.html at /NAME, found when first asked for,
    so a new file needs no restart. The site's own routes come first: a page cannot hide one."""
    for page in app.template_globals['person']['pages']:
        try:
            taken = app.router.lookup('GET', page['url'])[0] is not None
        except HTTPError:       # a route of other methods only
            taken = True
        if taken:
            raise StartupError(f'the page {page["name"]!r} in person.json has the URL of the site\'s own '
                               f'{page["url"]}: give it another name')

    @app.get(re.compile(r'/(?P<name>' + PAGE_NAME_RE.pattern + ')'))
    async def owner_page(request, name):
        template = f'pages/{name}.html'
        if not app.templates.exists(template):
            # Not a page: what the path is without this route (a folder's redirect, or 404).
            return await app.static.serve(request, request.path)
        return render(template, page=name)


def _error_view(request, error):
    return render('error.html', status=error.status, title=error.reason, detail=error.detail)


def _site_contact(app, notifier=None):
    """The contact form: checked, limited per client address, stored (with the owner's
    notification when ``notifier`` sends them), then a thank-you page."""

    @app.route('/contact', methods=['GET', 'POST'])
    async def contact(request):
        values = {'name': '', 'email': '', 'message': ''}
        if request.method != 'POST':    # GET, or HEAD: never a message, whatever body it brings
            return render('contact.html', values=values, errors={})
        form = request.form
        values = {key: form.get(key, '').strip() for key in values}
        if form.get('website'):       # the honeypot: only bots fill it; they get a quiet "thanks"
            log.info('contact: honeypot filled by %s', request.client)
            return redirect('/contact/thanks')
        errors = _contact_errors(values)
        if errors:
            return render('contact.html', values=values, errors=errors), 400
        # Checked and stored in one step (no two requests both pass a full limit), committed
        # with the other messages and new sessions of the moment (Database.grouped).
        first = await app.db.grouped(_store_message, values, request.client, time.time(),
                                     notifier is not None)
        if notifier is not None and first is None:
            notifier.wake()
        if first is not None:
            retry = max(1, int(first + CONTACT_WINDOW_S - time.time()) + 1)
            errors = {'form': f'You have sent {CONTACT_LIMIT} messages in the last '
                              f'{CONTACT_WINDOW_S // 60} minutes. Your message is kept below: '
                              f'please send it again in about {max(1, round(retry / 60))} minutes.'}
            resp = render('contact.html', values=values, errors=errors)
            resp.status = 429
            resp.headers['Retry-After'] = str(retry)
            return resp
        return redirect('/contact/thanks')

    @app.get('/contact/thanks')
    async def thanks(request):
        return render('thanks.html')


def _contact_errors(values):
    """What is wrong with a contact form's stripped ``values``, by field; empty if nothing."""
    errors = {}
    if not values['name']:
        errors['name'] = 'Please enter your name.'
    elif len(values['name']) > 100:
        errors['name'] = 'Your name can be at most 100 characters.'
    elif _LINE_BREAKS_RE.search(values['name']):
        # It becomes part of a mail header (the notification's From and Subject).
        errors['name'] = 'Please write your name on one line.'
    if not values['email']:
        errors['email'] = 'Please enter your email address.'
    elif len(values['email']) > 200 or not _EMAIL_RE.fullmatch(values['email']):
        errors['email'] = 'Please enter an email address like name@example.com.'
    if not values['message']:
        errors['message'] = 'Please write a message.'
    elif len(values['message']) > 5000:
        errors['message'] = 'Your message can be at most 5000 characters.'
    elif '\0' in values['message']:
        # No text a person types holds one, and PostgreSQL's text cannot.
        errors['message'] = 'Your message holds a character that cannot be kept (NUL).'
    return errors


# -- notifications: each contact message mailed to the owner, by a sender off the request path --

class MailSettings:
    """Where the owner's notifications go: SERVER_SMTP_URL and SERVER_NOTIFY_EMAIL, checked.

    ``smtp://user:password@host:587`` upgrades with STARTTLS and refuses to send the password
    if the server does not offer it; ``smtps://user:password@host:465`` speaks TLS from the
    start; ``smtp://host:25`` without credentials suits a local relay. User and password are
    percent-decoded (a password with @ / ? # or % must have them percent-encoded). Raises
    ValueError with a one-line reason that never repeats the password.
    """

    def __init__(self, url, owner):
        if not url.isascii() or not url.isprintable() or ' ' in url:
            raise ValueError('SERVER_SMTP_URL: only printable ASCII, no spaces '
                             '(percent-encode other characters of the password)')
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ('smtp', 'smtps'):
            raise ValueError('SERVER_SMTP_URL must start with smtp:// (STARTTLS, port 587) or '
                             'smtps:// (TLS, port 465)')
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname or port == -1 or parts.path not in ('', '/') or parts.query or parts.fragment:
            raise ValueError('SERVER_SMTP_URL must look like smtp://user:password@host:587 '
                             '(percent-encode @ / ? # : in the user or password)')
        self.tls = parts.scheme == 'smtps'
        self.host = parts.hostname
        self.port = port or (465 if self.tls else 25)
        self.user = urllib.parse.unquote(parts.username or '')
        self.password = urllib.parse.unquote(parts.password or '')
        if bool(self.user) != bool(self.password):
            raise ValueError('SERVER_SMTP_URL: give both user and password '
                             '(smtp://user:password@host:587), or neither for a relay')
        if not (self.user + self.password).isascii():
            raise ValueError('SERVER_SMTP_URL: the user and password must be ASCII once decoded')
        if len(owner) > 200 or not _EMAIL_RE.fullmatch(owner):
            raise ValueError(f'SERVER_NOTIFY_EMAIL must be one address like you@example.com, '
                             f'not {owner!r}')
        self.owner = owner

    def __repr__(self):
        scheme = 'smtps' if self.tls else 'smtp'
        return f'<MailSettings {scheme}://{self.user + "@" if self.user else ""}{self.host}:{self.port} to {self.owner}>'


def notify_settings(environ):
    """MailSettings from SERVER_SMTP_URL and SERVER_NOTIFY_EMAIL, or None with neither set;
    ConfigError (one line) for a bad or lone one."""
    url = environ.get('SERVER_SMTP_URL', '')
    owner = environ.get('SERVER_NOTIFY_EMAIL', '')
    if not url and not owner:
        return None
    if not url or not owner:
        missing = 'SERVER_NOTIFY_EMAIL' if url else 'SERVER_SMTP_URL'
        raise ConfigError(f'{missing} is not set: notifications need SERVER_SMTP_URL and '
                          f'SERVER_NOTIFY_EMAIL (or neither)')
    try:
        return MailSettings(url, owner)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class MailRefused(Exception):
    """A mail the sender will not send as configured (a password without TLS)."""


class MailAbort:
    """Lets another thread cut a send_mail short, at whatever step it is (connecting too)."""

    def __init__(self):
        self.aborted = False
        self.smtp = None
        self._lock = threading.Lock()

    def watch(self, smtp):
        """``smtp`` has its socket: cut it now if an abort came first."""
        with self._lock:
            self.smtp = smtp
            if self.aborted:
                self._cut()

    def abort(self):
        with self._lock:
            self.aborted = True
            self._cut()

    def _cut(self):
        sock = getattr(self.smtp, 'sock', None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def send_mail(settings, msg, abort=None):
    """Send ``msg`` through the settings' server -- blocking: call it in a thread; another
    thread may cut it short with ``abort`` (a MailAbort). Raises OSError,
    smtplib.SMTPException or MailRefused."""
    context = ssl.create_default_context()
    base = smtplib.SMTP_SSL if settings.tls else smtplib.SMTP

    class Connection(base):
        def _get_socket(self, host, port, timeout):
            self.sock = super()._get_socket(host, port, timeout)
            if abort is not None:
                abort.watch(self)
            return self.sock

    kwargs = {'context': context} if settings.tls else {}
    with Connection(settings.host, settings.port, timeout=NOTIFY_SMTP_TIMEOUT_S, **kwargs) as smtp:
        smtp.ehlo()
        if not settings.tls and smtp.has_extn('starttls'):
            smtp.starttls(context=context)
            if abort is not None:
                abort.watch(smtp)           # the TLS socket now
            smtp.ehlo()
        elif not settings.tls and settings.user:
            raise MailRefused(f'{settings.host}:{settings.port} does not offer STARTTLS: the password '
                              f'is not sent in clear (use smtps:// and port 465, or port 587)')
        if settings.user:
            smtp.login(settings.user, settings.password)
        smtp.send_message(msg)


def mail_problem(exc, settings):
    """What a failed send met, on one line, without the password."""
    where = f'{settings.host}:{settings.port}'
    if isinstance(exc, MailRefused):
        return str(exc)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return (f'{where} refused the user or password ({exc.smtp_code}): check SERVER_SMTP_URL '
                f'(many providers want an app password)')
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return f'{where} refused {settings.owner} as the sender ({exc.smtp_code}): use your account\'s address'
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return f'{where} refused the recipient {settings.owner}'
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode('utf-8', 'replace') if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f'{where} answered {exc.smtp_code} {log_escape(text)}'
    if isinstance(exc, socket.gaierror):
        return f'cannot resolve {settings.host}: {exc.strerror}'
    if isinstance(exc, ssl.SSLError):
        return f'TLS with {where} failed: {log_escape(getattr(exc, "verify_message", None) or exc.reason or exc)}'
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f'{where} did not answer within {NOTIFY_SMTP_TIMEOUT_S:g} s'
    if isinstance(exc, OSError) and exc.strerror:
        return f'cannot talk to {where}: {exc.strerror}'
    return f'{where}: {log_escape(exc) or type(exc).__name__}'


def notification_mail(settings, row):
    """The owner's mail about one contact message ``row`` (id, name, email, body, created).

    From and To are the owner's address (providers accept only their account's own address
    as the sender); Reply-To is the visitor's, so answering answers them. Their name goes
    through email.headerregistry, which quotes and encodes it, on one line whatever the row
    holds. The Message-ID comes from the row: a resend after a crash is recognisable.
    """
    name = ' '.join(_LINE_BREAKS_RE.sub(' ', row['name']).split())[:100] or 'someone'
    domain = settings.owner.rpartition('@')[2]
    msg = email.message.EmailMessage()
    msg['From'] = email.headerregistry.Address(f'{name} via the contact form', addr_spec=settings.owner)
    msg['To'] = email.headerregistry.Address(addr_spec=settings.owner)
    if len(row['email']) <= 200 and _EMAIL_RE.fullmatch(row['email']):
        msg['Reply-To'] = email.headerregistry.Address(name, addr_spec=row['email'])
    msg['Subject'] = f'Contact form: {name}'
    msg['Date'] = email.utils.formatdate(row['created'])
    msg['Message-ID'] = f'<contact-{row["id"]}.{int(row["created"])}@{domain}>'
    msg.set_content(f'{name} <{row["email"]}> wrote on {_format_time(row["created"])}:\n\n'
                    f'{row["body"]}\n\n-- \nAnswer by replying to this mail. Message #{row["id"]} '
                    f'is also in /admin and in `python3 server.py messages`.\n')
    return msg


def _claim_notification(conn, now):
    """The due notification with its message, held for NOTIFY_LEASE_S by this sender (so no
    other worker sends it meanwhile); or None and when the next one is due (None: none)."""
    with conn:
        conn.execute('BEGIN IMMEDIATE')
        # A notification whose message the owner deleted is not sent.
        conn.execute("DELETE FROM outbox WHERE message NOT IN (SELECT id FROM messages)")
        row = conn.execute("SELECT o.id AS outbox, o.attempts, m.id, m.name, m.email, m.body, m.created "
                           "FROM outbox o JOIN messages m ON m.id = o.message "
                           "WHERE o.state = 'pending' AND o.next_attempt <= ? "
                           "ORDER BY o.next_attempt LIMIT 1", (now,)).fetchone()
        if row is None:
            due = conn.execute("SELECT MIN(next_attempt) FROM outbox WHERE state = 'pending'").fetchone()[0]
            return None, due
        conn.execute('UPDATE outbox SET next_attempt = ?, attempts = attempts + 1 WHERE id = ?',
                     (now + NOTIFY_LEASE_S, row['outbox']))
        return dict(row), None


def _notification_failed(conn, row, now, problem):
    """Note a failed attempt: due again after the backoff, or given up once too old (True)."""
    with conn:
        if now - row['created'] >= NOTIFY_GIVE_UP_S:
            conn.execute("UPDATE outbox SET state = 'failed', error = ? WHERE id = ?", (problem, row['outbox']))
            return True
        delay = min(NOTIFY_RETRY_MAX_S, NOTIFY_RETRY_MIN_S * 2 ** min(row['attempts'], 16))
        conn.execute('UPDATE outbox SET next_attempt = ?, error = ? WHERE id = ?',
                     (now + delay, problem, row['outbox']))
        return False


class Notifier:
    """Delivers the outbox: one background task per process, claiming each notification in
    a transaction, so workers sharing the data folder never send one twice."""

    def __init__(self, db, settings):
        self.db = db
        self.settings = settings
        self.task = None
        self.wakeup = None
        self.sending = None         # the MailAbort of the send in progress

    def start(self):
        self.wakeup = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.run())

    def wake(self):
        """A new notification is in the outbox: deliver it now."""
        if self.wakeup is not None:
            self.wakeup.set()

    async def stop(self):
        if self.task is not None:
            self.task.cancel()
            if self.sending is not None:
                self.sending.abort()          # the thread's send ends now, not at its timeout
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def run(self):
        while True:
            self.wakeup.clear()
            try:
                due = await self.deliver_due()
            except Exception:
                log.exception('contact notifications')
                due = None
            wait = NOTIFY_RETRY_MAX_S if due is None else max(0.0, min(NOTIFY_RETRY_MAX_S, due - time.time()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), wait)

    async def deliver_due(self):
        """Send every notification due now; when the next one is due (None: none waiting)."""
        while True:
            row, due = await self.db.run(_claim_notification, time.time())
            if row is None:
                return due
            self.sending = MailAbort()
            try:
                await asyncio.to_thread(send_mail, self.settings, notification_mail(self.settings, row),
                                        self.sending)
            except Exception as exc:
                problem = mail_problem(exc, self.settings)
                if await self.db.run(_notification_failed, row, time.time(), problem):
                    log.error('contact message #%d: notification given up: %s', row['id'], problem)
                elif row['attempts'] == 0:
                    log.warning('contact message #%d: notification not sent, will retry: %s',
                                row['id'], problem)
            else:
                await self.db.execute('DELETE FROM outbox WHERE id = ?', (row['outbox'],))
                log.info('contact message #%d: notification sent to %s', row['id'], self.settings.owner)


def _site_notify(app, settings):
    """The owner's notifications, when ``settings`` (MailSettings) says where: the sender
    runs from startup to shutdown. Returns the Notifier, or None."""
    if settings is None:
        return None
    notifier = Notifier(app.db, settings)

    @app.on_claim
    async def retry_now(app):
        # A start is often a fix of the settings: what waits is tried at once. No other
        # process holds the folder now, so no lease is anyone's.
        await app.db.execute("UPDATE outbox SET next_attempt = 0 WHERE state = 'pending'")

    @app.on_startup
    async def start_sender(app):
        notifier.start()

    @app.on_shutdown
    async def stop_sender(app):
        await notifier.stop()
    return notifier


def _site_uploads(app, uploads_in_flight):
    """Uploads: a visitor's files, kept within quotas, listed and served to their session only."""

    @app.on_claim
    async def sweep(app):
        # Only while no other process can be writing uploads: see App.on_claim.
        removed = await app.db.run(_sweep_uploads, app.upload_dir)
        if removed:
            log.info('removed %d unfinished or orphaned upload files', removed)

    # defer_body: the quotas are checked before the body is read, so a visitor past theirs,
    # or a full disk, costs no file written; read_body() then checks the CSRF token.
    @app.route('/upload', methods=['GET', 'POST'], max_body=MAX_UPLOAD_BYTES, defer_body=True)
    async def upload(request):
        if request.method != 'POST':    # GET, or HEAD: never an upload, whatever body it brings
            message = 'Your file was uploaded.' if request.query.get('done') else ''
            return await _upload_page(app, request, message=message)
        owner = request.session.get('upload_owner')
        # Before a first upload has an owner, its session stands for the visitor.
        visitor = owner or request.session.id or request.client
        # The body bounds the file; one of unknown length (chunked) may be the largest.
        size = request.content_length
        size = MAX_UPLOAD_BYTES if size is None else size
        usage = await app.db.run(_upload_usage, owner, app.upload_dir)
        refusal = uploads_in_flight.refusal(visitor, usage, size)
        if refusal is not None:
            return await _upload_refused(app, request, refusal)
        release = uploads_in_flight.reserve(visitor, size)
        try:
            await request.read_body()
            upload = request.files.get('file')
            if upload is None or not upload.filename or upload.size == 0:
                return await _upload_page(app, request, error='Please choose a non-empty file to upload.',
                                          status=400)
            if not owner:
                # Stored in the session's row before the file is: first uploads sent at once
                # (two tabs) all get the token the first of them stored. Random, not derived
                # from the session id, so a sign-in's new id or a sign-out cuts the old cookie off.
                owner = await app.sessions.claim(request.session, 'upload_owner', secrets.token_urlsafe(24))
                if owner is None:
                    abort(403, 'Your session has ended; reload the page and try again.')
            # The file is durable under its final name before its row commits; if the
            # process dies between, the startup sweep removes the file no row points at.
            stored = secrets.token_hex(16)
            await _keep_upload(app, upload, stored)
            # Given back before the row is counted, so that no check counts this upload
            # twice (arriving and stored); the transaction below has the last word.
            release()
            refusal = await app.db.grouped(_record_upload, owner, upload, stored, app.upload_dir)
            if refusal is not None:
                await _drop_upload(app, stored)
                return await _upload_refused(app, request, refusal)
        finally:
            release()
        return redirect('/upload?done=1')

    @app.get('/upload/<int:upload_id>')
    async def download(request, upload_id):
        owner = request.session.get('upload_owner')
        row = await app.db.fetchone('SELECT name, stored, size, owner FROM uploads WHERE id = ?', (upload_id,))
        if row is None or not owner or not hmac.compare_digest(row['owner'], owner):
            abort(404)
        return _upload_response(app, row)


def _site_upload_expiry(app, upload_days):
    """Uploads older than ``upload_days`` (0: none) go with their rows, at start and then
    every UPLOAD_EXPIRY_INTERVAL_S; on PostgreSQL, chunks no upload names go too."""
    background = []

    async def expire():
        try:
            if upload_days > 0:
                removed = await app.db.run(_delete_uploads, app.upload_dir, 'created < ?',
                                           (time.time() - upload_days * 86400,))
                if removed:
                    log.info('removed %d uploads older than %d days', len(removed), upload_days)
            if app.db.kind == 'postgresql':
                await app.db.run(_delete_orphan_chunks, time.time())
        except HTTPError as exc:        # the database is unavailable: the next round tries again
            log.warning('removing expired uploads: %s', exc.detail)
        except Exception:
            log.exception('removing expired uploads')

    async def expire_forever():
        while True:
            await asyncio.sleep(UPLOAD_EXPIRY_INTERVAL_S)
            await expire()

    @app.on_startup
    async def start_expiry(app):
        # Each worker runs it too: the rows go in one transaction, so only one removes each.
        if upload_days > 0 or app.db.kind == 'postgresql':
            await expire()
            background.append(asyncio.get_running_loop().create_task(expire_forever()))

    @app.on_shutdown
    async def stop_expiry(app):
        for task in background:
            task.cancel()


async def _upload_page(app, request, error='', message='', status=200):
    """The upload page with the visitor's own uploads listed."""
    owner = request.session.get('upload_owner')
    rows = await app.db.fetchall('SELECT id, name, size, created FROM uploads WHERE owner = ? '
                                 'ORDER BY id DESC', (owner,)) if owner else []
    return render('upload.html', uploads=_upload_list(rows), error=error, message=message,
                  max_upload_mb=MAX_UPLOAD_BYTES // (1024 * 1024)), status


async def _upload_refused(app, request, status):
    """The upload page saying why an upload was refused: 429 (the visitor's quota) or 507."""
    if status == 429:
        return await _upload_page(app, request, status=429, error=(
            f'You have reached the limit of {UPLOAD_QUOTA_FILES} files or '
            f'{UPLOAD_QUOTA_BYTES // (1024 * 1024)} MB for this session.'))
    log.error('upload refused: the upload space is full')
    return await _upload_page(app, request, status=507, error='The server has no room for more '
                              'uploads right now. Please try again later.')


def _upload_list(rows):
    """Upload rows as the templates list them."""
    return [{'id': r['id'], 'name': r['name'], 'size_h': human_size(r['size']),
             'created': _format_time(r['created'])} for r in rows]


def _site_admin(app, admin_password):
    """The owner's pages: messages and uploads behind ADMIN_PASSWORD; 404 while it is unset."""

    def admin_enabled():
        if not admin_password:
            abort(404)

    def admin_mark():
        # Kept in an admin's session and compared on each request: a new ADMIN_PASSWORD
        # signs every admin out.
        return app.keyed_hash('admin password', admin_password)

    def is_admin(request):
        mark = request.session.get('admin')
        return isinstance(mark, str) and hmac.compare_digest(mark, admin_mark())

    @app.get('/admin')
    async def admin(request):
        admin_enabled()
        if not is_admin(request):
            return render('admin_login.html', error='')
        messages = await app.db.fetchall('SELECT id, name, email, body, ip, created FROM messages ORDER BY id DESC')
        for m in messages:
            m['created'] = _format_time(m['created'])
            m['mailto'] = _mailto(m['email'])
        rows = await app.db.fetchall('SELECT id, name, size, created FROM uploads ORDER BY id DESC')
        days = await app.db.run(_daily_counts, time.time())
        resp = render('admin.html', messages=messages, uploads=_upload_list(rows), days=days,
                      views_chart=bar_chart_svg(days, 'views', 'Page views'),
                      messages_chart=bar_chart_svg(days, 'messages', 'Messages'),
                      views_total=sum(d['views'] for d in days),
                      messages_total=sum(d['messages'] for d in days))
        resp.headers['Cache-Control'] = 'private, no-store'
        return resp

    @app.get('/admin/upload/<int:upload_id>')
    async def admin_download(request, upload_id):
        admin_enabled()
        if not is_admin(request):
            abort(404)
        row = await app.db.fetchone('SELECT name, stored, size FROM uploads WHERE id = ?', (upload_id,))
        if row is None:
            abort(404)
        return _upload_response(app, row)

    @app.post('/admin/login')
    async def admin_login(request):
        admin_enabled()
        address = _admin_failure_address(request.client)
        # In the database, so every worker and process on the data folder counts together.
        locked = await app.db.run(_admin_attempt, address, time.time())
        if locked is not None:
            raise HTTPError(429, 'Too many failed sign-in attempts; try again later.',
                            headers={'Retry-After': str(int(locked) + 1)})
        given = request.form.get('password', '')
        if hmac.compare_digest(hashlib.sha256(given.encode('utf-8', 'replace')).digest(),
                               hashlib.sha256(admin_password.encode('utf-8')).digest()):
            await app.db.execute('DELETE FROM admin_failures WHERE address = ?', (address,))
            request.session.rotate()            # a new id (and CSRF token) at login: no fixation
            request.session['admin'] = admin_mark()
            return redirect('/admin')
        log.warning('admin: failed sign-in from %s', log_escape(request.client))
        return render('admin_login.html', error='That password is not right.'), 403

    @app.post('/admin/logout')
    async def admin_logout(request):
        admin_enabled()
        request.session.destroy()
        return redirect('/')

    _site_admin_delete(app, admin_enabled, is_admin)


def _site_admin_delete(app, admin_enabled, is_admin):
    """Deleting a message or an upload from /admin."""

    # GET asks (a page that changes nothing), POST deletes: a confirm step without script.
    @app.route('/admin/delete/<kind>/<int:item_id>', methods=['GET', 'POST'])
    async def admin_delete(request, kind, item_id):
        admin_enabled()
        if not is_admin(request) or kind not in ('message', 'upload'):
            abort(404)
        if request.method == 'POST':
            await app.db.run(_delete_by_ids, app.upload_dir, kind, [item_id])
            log.info('admin: deleted %s #%d', kind, item_id)
            return redirect('/admin')
        if kind == 'message':
            item = await app.db.fetchone('SELECT id, name, email, body, created FROM messages WHERE id = ?',
                                         (item_id,))
        else:
            item = await app.db.fetchone('SELECT id, name, size, created FROM uploads WHERE id = ?', (item_id,))
        if item is None:
            abort(404, f'There is no {kind} #{item_id}: it may be deleted already.')
        item['created'] = _format_time(item['created'])
        item['size_h'] = human_size(item.get('size', 0))
        resp = render('admin_confirm.html', kind=kind, item=item)
        resp.headers['Cache-Control'] = 'private, no-store'
        return resp


def _attachment(path, name, chunks=None):
    """An uploaded file (at ``path``, or its ``chunks``) as a download that the browser never
    renders in the site's origin."""
    if chunks is None:
        resp = Response.send_file(path, 'application/octet-stream', download_name=name)
    else:
        resp = Response(chunks, headers={'Content-Disposition': content_disposition(name)},
                        content_type='application/octet-stream')
    resp.headers['Content-Security-Policy'] = "default-src 'none'; sandbox"
    resp.headers['X-Content-Type-Options'] = 'nosniff'
    resp.headers['Cache-Control'] = 'private, no-store'
    return resp


def _unlink_quietly(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# === 13. CLI and main ===

class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        # One line, not usage plus error: bad values say what is wrong and nothing else.
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def build_parser(defaults, prog='server.py', app=False):
    """The serve command's flags: server.py's for the site, and the same for an app (App.main)."""
    parser = _ArgumentParser(
        prog=prog,
        description=('Serve this app on server.py' if app else
                     'Serve the portfolio site (or `messages` to print the contact messages)') +
                    '. Every option can also be set as an environment variable SERVER_<NAME>, '
                    'e.g. SERVER_PORT=9000; a flag wins over the environment.',
        epilog=None if app else 'ADMIN_PASSWORD in the environment enables /admin; SERVER_SMTP_URL and '
                                'SERVER_NOTIFY_EMAIL mail each contact message to the owner. Owner commands, '
                                'each with its own --help: messages, uploads, backup DEST, notify-test.')
    parser.add_argument('--host', default=defaults.host, help='address to listen on (default: %(default)s)')
    parser.add_argument('--port', type=int, default=defaults.port,
                        help='TCP port, 0 picks a free one (default: %(default)s)')
    parser.add_argument('--root', default=defaults.root,
                        help='web root: static files and templates/ (default: %(default)s)')
    parser.add_argument('--data', default=defaults.data,
                        help='data folder: app.db and uploads/, created if missing (default: %(default)s)')
    parser.add_argument('--database', default=defaults.database, metavar='URL',
                        help='sqlite: (app.db in the data folder, the default) or '
                             'postgresql://user:password@host:port/dbname?sslmode=require, '
                             'shared by several app hosts')
    parser.add_argument('--workers', type=int, default=defaults.workers,
                        help='worker processes sharing the port with SO_REUSEPORT (default: %(default)s)')
    parser.add_argument('--certfile', default=defaults.certfile, help='TLS certificate (PEM): serve HTTPS')
    parser.add_argument('--keyfile', default=defaults.keyfile, help='TLS private key (PEM)')
    parser.add_argument('--trusted-proxy', default=defaults.trusted_proxy,
                        help='comma-separated addresses or networks whose X-Real-IP, X-Forwarded-For '
                             'and X-Forwarded-Proto are believed (default: %(default)s)')
    parser.add_argument('--log-level', default=defaults.log_level,
                        choices=['debug', 'info', 'warning', 'error'], help='how much to log (default: %(default)s)')
    parser.add_argument('--no-access-log', dest='access_log', action='store_false',
                        default=defaults.access_log, help='do not write the access log (it is on by default)')
    parser.add_argument('--reload', action='store_true', default=defaults.reload,
                        help=f'restart when {"this script, " if app else ""}server.py or a file '
                             f'under the web root changes (development)')
    parser.add_argument('--version', action='version', version=f'server.py {__version__}')
    parser.add_argument('--upload-days', type=int, default=defaults.upload_days,
                        help='days an upload is kept before the site removes it, 0 for ever (default: %(default)s)')
    return parser


def config_from_args(argv, environ=None, *, prog='server.py', app=None):
    """Config from defaults <- environment <- argv; raises ConfigError or exits 2 on bad input.
    For an ``app`` (App.main) its own root, data folder and proxies are the defaults."""
    own = {} if app is None else {
        'root': app.root, 'data': app.data, 'database': app.database,
        'trusted_proxy': ','.join(str(net.network_address) if net.num_addresses == 1 else str(net)
                                  for net in app.trusted)}
    try:
        defaults = Config.from_env(environ, **own)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    args = build_parser(defaults, prog, app is not None).parse_args(argv)
    config = Config(**vars(args))
    if not 0 <= config.port <= 65535:
        raise ConfigError(f'--port must be 0 to 65535, not {config.port}')
    if config.workers < 1 or config.workers > 64:
        raise ConfigError(f'--workers must be 1 to 64, not {config.workers}')
    if not 0 <= config.upload_days <= 36500:
        raise ConfigError(f'--upload-days must be 0 (for ever) to 36500, not {config.upload_days}')
    if config.root is not None and not os.path.isdir(config.root):    # an app may have none
        raise StartupError(f'web root not found: {config.root} (use --root)')
    try:
        _parse_trusted(config.trusted_proxy)
    except ValueError as exc:
        raise ConfigError(f'--trusted-proxy: {exc}') from None
    try:
        parse_database_url(config.database, config.data)
    except ValueError as exc:
        raise ConfigError(f'--database: {exc}') from None
    make_ssl_context(config.certfile, config.keyfile)
    notify_settings(os.environ if environ is None else environ)
    check_data_folder(config.data)
    return config


def check_data_folder(data):
    if os.path.exists(data) and not os.path.isdir(data):
        raise StartupError(f'the data folder {data} is a file: give --data a folder (it is '
                           f'made if missing), or move the file away')
    try:
        # Messages, addresses and uploads: private to the user running the server.
        os.makedirs(data, mode=DATA_DIR_MODE, exist_ok=True)
        os.makedirs(os.path.join(data, 'uploads'), mode=DATA_DIR_MODE, exist_ok=True)
        probe = os.path.join(data, f'.write-test-{os.getpid()}')
        with open(probe, 'w') as f:
            f.write('ok')
        os.unlink(probe)
    except OSError as exc:
        raise StartupError(f'the data folder {data} is not writable: {exc.strerror}') from None


def check_listen(config):
    """Bind where the server will listen, as asyncio will, and let go: a host that does not
    resolve, a port in use and one that needs privileges are named before the data folder is
    claimed or a startup hook runs. Raises StartupError."""
    host, port = config.host, config.port
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f'cannot resolve --host {host}: {exc.strerror}: give an address such '
                           f'as 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)') from None
    for family, kind, proto, _, address in set(infos):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if config.workers > 1 and hasattr(socket, 'SO_REUSEPORT'):
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and hasattr(socket, 'IPPROTO_IPV6'):
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise StartupError(_listen_problem(exc, host, port)) from None


def print_messages(argv):
    """``server.py messages [--csv] [--delete ID...] [--data DIR]``: the contact messages,
    newest first, or delete some."""
    parser = _ArgumentParser(prog='server.py messages', description='Print the contact messages, newest '
                             'first, or delete some (safe while the server runs).')
    parser.add_argument('--csv', action='store_true', help='CSV for a spreadsheet')
    parser.add_argument('--delete', type=int, nargs='+', metavar='ID', help='delete these messages')
    _owner_flags(parser)
    args = parser.parse_args(argv)
    if args.delete:
        return _delete_command(args, 'message', args.delete)
    with contextlib.suppress(ValueError):       # a bad URL: _open_site_database says so
        path = database_path(args.database, args.data)
        if path == os.path.join(args.data, 'app.db') and not os.path.exists(path):
            print(f'server.py: no database at {path} yet: no messages', file=sys.stderr)
            return 0
    conn = _open_site_database(args, readonly=True)
    if conn is None:
        return 1
    try:
        try:
            rows = conn.execute('SELECT id, created, name, email, ip, body FROM messages ORDER BY created DESC, id DESC').fetchall()
        except sqlite3.Error as exc:
            if getattr(exc, 'sqlstate', '') == '42P01':     # no server has started on it yet
                print('server.py: the database has no messages table yet: no messages', file=sys.stderr)
                return 0
            print(f'server.py: cannot read messages: {exc}', file=sys.stderr)
            return 1
    finally:
        conn.close()
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(['id', 'created_utc', 'name', 'email', 'ip', 'message'])
        for id_, created, name, email_, ip, body in rows:
            writer.writerow([id_, _format_time(created)] + [_csv_safe(v) for v in (name, email_, ip, body)])
        return 0
    if not rows:
        print('No messages yet.')
    for id_, created, name, email_, ip, body in rows:
        print(f'#{id_}  {_format_time(created)}  {_terminal_safe(name)} <{_terminal_safe(email_)}>  '
              f'from {_terminal_safe(ip)}')
        for line in body.split('\n'):
            print(f'    {_terminal_safe(line.rstrip(chr(13)))}')
        print()
    return 0


def _owner_flags(parser):
    """--data and --database, defaulting as the server's do (SERVER_DATA, SERVER_DATABASE)."""
    try:
        defaults = Config.from_env()
    except ValueError:      # another SERVER_* setting is bad: not this command's business
        defaults = Config()
    parser.add_argument('--data', default=defaults.data, help='data folder')
    parser.add_argument('--database', default=defaults.database, metavar='URL',
                        help='sqlite: (app.db in the data folder, the default) or postgresql://...')


def _open_site_database(args, readonly=False):
    """The site's database for an owner command (``args.data``, ``args.database``), or None
    once the reason is printed. Never created: a wrong --data is said, not given an empty
    database."""
    try:
        kind, where = parse_database_url(args.database, args.data)
    except ValueError as exc:
        print(f'server.py: --database: {exc}', file=sys.stderr)
        return None
    if kind == 'postgresql':
        try:
            return PgConnection(where)
        except PostgresError as exc:
            print(f'server.py: cannot open {redact_url(args.database)}: {exc.message}', file=sys.stderr)
            return None
    if not os.path.exists(where):
        print(f'server.py: no database at {where}: give the data folder with --data', file=sys.stderr)
        return None
    mode = 'ro' if readonly else 'rw'
    conn = sqlite3.connect(f'file:{urllib.parse.quote(os.path.abspath(where))}?mode={mode}', uri=True,
                           timeout=DB_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.execute(f'PRAGMA busy_timeout = {int(DB_BUSY_TIMEOUT_MS)}')
    conn.execute('PRAGMA foreign_keys = ON')
    return conn


def _delete_command(args, kind, ids):
    """Delete messages or uploads by id, through the database, so a running server is no
    obstacle; 1 if some id was not there."""
    conn = _open_site_database(args)
    if conn is None:
        return 1
    try:
        found = _delete_by_ids(conn, os.path.join(args.data, 'uploads'), kind, ids)
    except sqlite3.Error as exc:
        print(f'server.py: cannot delete: {exc}', file=sys.stderr)
        return 1
    finally:
        conn.close()
    missing = sorted(set(ids) - set(found))
    print(f'deleted {len(found)} {kind}{"s" * (len(found) != 1)}' +
          (': ' + ' '.join(f'#{i}' for i in sorted(found)) if found else ''))
    if missing:
        print(f'server.py: no {kind} ' + ' '.join(f'#{i}' for i in missing), file=sys.stderr)
        return 1
    return 0


def uploads_command(argv):
    """``server.py uploads [--delete ID...] [--data DIR]``: the uploads, newest first, or delete some."""
    parser = _ArgumentParser(prog='server.py uploads', description='List the uploads, newest first, or '
                             'delete some with their files (safe while the server runs).')
    parser.add_argument('--delete', type=int, nargs='+', metavar='ID', help='delete these uploads')
    _owner_flags(parser)
    args = parser.parse_args(argv)
    if args.delete:
        return _delete_command(args, 'upload', args.delete)
    conn = _open_site_database(args, readonly=True)
    if conn is None:
        return 1
    try:
        rows = conn.execute('SELECT id, created, size, name FROM uploads ORDER BY created DESC, id DESC').fetchall()
    except sqlite3.Error as exc:
        print(f'server.py: cannot read uploads: {exc}', file=sys.stderr)
        return 1
    finally:
        conn.close()
    if not rows:
        print('No uploads.')
    for id_, created, size, name in rows:
        print(f'#{id_}  {_format_time(created)}  {human_size(size):>10}  {_terminal_safe(name)}')
    return 0


def backup_command(argv):
    """``server.py backup DEST [--data DIR]``: a consistent copy of the data folder."""
    parser = _ArgumentParser(prog='server.py backup', description='Copy the data folder (database, '
                             'uploads, secret key) into DEST, a new folder, consistently even while '
                             'the server runs. DEST is a data folder: start a server on it to restore. '
                             'A PostgreSQL database is dumped by pg_dump into DEST/database.dump instead.')
    parser.add_argument('dest', help='the folder to write (must not exist yet, or be empty)')
    _owner_flags(parser)
    args = parser.parse_args(argv)
    try:
        if parse_database_url(args.database, args.data)[0] == 'postgresql':
            dump = dump_postgres(args.database, args.dest)
            print(f'backup written to {dump} (pg_dump\'s custom format): restore it with '
                  f'pg_restore --clean --if-exists --dbname URL {dump}')
            return 0
        counts = backup_data(args.data, args.dest)
    except (StartupError, OSError, sqlite3.Error, ValueError) as exc:
        print(f'server.py: backup failed: {exc}', file=sys.stderr)
        return 1
    print(f'backup written to {args.dest}: {counts[0]} message{"s" * (counts[0] != 1)}, '
          f'{counts[1]} upload{"s" * (counts[1] != 1)}')
    return 0


def backup_data(data, dest):
    """Copy ``data`` into the new folder ``dest``: the database through SQLite's backup API
    (one snapshot, however the server writes meanwhile), then the upload files its rows name,
    and the secret key (sessions and CSRF tokens stay valid after a restore). Built under a
    temporary name and renamed into place, so a ``dest`` that exists is whole. Returns
    (messages, uploads); raises StartupError, OSError or sqlite3.Error."""
    path = os.path.join(data, 'app.db')
    if not os.path.isfile(path):
        raise StartupError(f'no database at {path}: give the data folder with --data')
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise StartupError(f'{dest} exists and is not an empty folder: give a new one')
    dest = os.path.abspath(dest)
    partial = f'{dest}.partial-{os.getpid()}'
    os.makedirs(partial, mode=DATA_DIR_MODE)
    try:
        os.makedirs(os.path.join(partial, 'uploads'), mode=DATA_DIR_MODE)
        copy_path = os.path.join(partial, 'app.db')
        os.close(os.open(copy_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DATA_FILE_MODE))
        source = sqlite3.connect(f'file:{urllib.parse.quote(os.path.abspath(path))}?mode=rw', uri=True,
                                 timeout=DB_BUSY_TIMEOUT_MS / 1000)
        copy = sqlite3.connect(copy_path, isolation_level=None)
        try:
            source.backup(copy)        # all pages in one step: one consistent snapshot
            counts = _copy_uploads(copy, os.path.join(data, 'uploads'), os.path.join(partial, 'uploads'))
            copy.execute('PRAGMA journal_mode = DELETE')    # one file; the server turns WAL on
        finally:
            copy.close()
            source.close()
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(os.path.join(data, SECRET_FILE), os.path.join(partial, SECRET_FILE))
            os.chmod(os.path.join(partial, SECRET_FILE), DATA_FILE_MODE)
        for folder, _, files in os.walk(partial):
            for name in files:
                with open(os.path.join(folder, name), 'rb') as f:
                    os.fsync(f.fileno())
            fsync_dir(folder)
        os.rename(partial, dest)
        fsync_dir(os.path.dirname(dest))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return counts


def dump_postgres(url, dest):
    """``pg_dump --format=custom`` of the database at ``url`` into ``dest``/database.dump (a
    new folder, made whole under a temporary name): one consistent snapshot, taken while the
    servers run. The password goes in pg_dump's environment, never on its command line."""
    pg_dump = shutil.which('pg_dump')
    if pg_dump is None:
        raise StartupError('a PostgreSQL backup needs pg_dump: install it (Debian: apt-get install '
                           'postgresql-client)')
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise StartupError(f'{dest} exists and is not an empty folder: give a new one')
    settings = parse_database_url(url, '')[1]
    env = dict(os.environ, PGHOST=settings['host'], PGPORT=str(settings['port']), PGUSER=settings['user'],
               PGDATABASE=settings['dbname'], PGSSLMODE=settings['sslmode'],
               PGCONNECT_TIMEOUT=str(max(1, round(settings['connect_timeout']))))
    for name, key in (('PGPASSWORD', 'password'), ('PGSSLROOTCERT', 'sslrootcert')):
        if settings[key]:
            env[name] = settings[key]
    dest = os.path.abspath(dest)
    partial = f'{dest}.partial-{os.getpid()}'
    os.makedirs(partial, mode=DATA_DIR_MODE)
    try:
        done = subprocess.run([pg_dump, '--format=custom', '--file', os.path.join(partial, 'database.dump')],
                              env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode:
            # pg_dump's own "pg_dump: error: ..." line says why; a hint may follow it.
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            why = next((line.split('error: ', 1)[1] for line in lines if 'error: ' in line),
                       lines[-1] if lines else f'exit status {done.returncode}')
            raise StartupError(f'pg_dump failed: {why}')
        os.chmod(os.path.join(partial, 'database.dump'), DATA_FILE_MODE)     # messages, addresses
        os.rename(partial, dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return os.path.join(dest, 'database.dump')


def _copy_uploads(copy, source_dir, dest_dir):
    """Copy the files the backup's upload rows name; a row whose file was deleted since the
    snapshot goes too (no row without its file). (messages, uploads) in the backup."""
    tables = {row[0] for row in copy.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    messages = copy.execute('SELECT COUNT(*) FROM messages').fetchone()[0] if 'messages' in tables else 0
    if 'uploads' not in tables:
        return messages, 0
    gone = []
    for id_, stored in copy.execute('SELECT id, stored FROM uploads').fetchall():
        target = os.path.join(dest_dir, stored)
        try:
            shutil.copyfile(os.path.join(source_dir, stored), target)
        except FileNotFoundError:
            gone.append((id_,))
            continue
        os.chmod(target, DATA_FILE_MODE)
    with copy:
        copy.executemany('DELETE FROM uploads WHERE id = ?', gone)
    return messages, copy.execute('SELECT COUNT(*) FROM uploads').fetchone()[0]


def notify_test(argv):
    """``server.py notify-test``: send one mail as the notifications are sent; say what failed."""
    parser = _ArgumentParser(prog='server.py notify-test',
                             description='Send one test mail through SERVER_SMTP_URL to SERVER_NOTIFY_EMAIL.')
    parser.parse_args(argv)
    try:
        settings = notify_settings(os.environ)
    except ConfigError as exc:
        print(f'server.py: notify-test: {exc}', file=sys.stderr)
        return 1
    if settings is None:
        print('server.py: notify-test: set SERVER_SMTP_URL and SERVER_NOTIFY_EMAIL first (see the README)',
              file=sys.stderr)
        return 1
    msg = email.message.EmailMessage()
    msg['From'] = msg['To'] = settings.owner
    msg['Subject'] = 'Test of the contact form notifications'
    msg['Date'] = email.utils.formatdate()
    msg['Message-ID'] = email.utils.make_msgid('notify-test', settings.owner.rpartition('@')[2])
    msg.set_content('This test mail came through SERVER_SMTP_URL: contact messages will arrive like it.\n')
    try:
        send_mail(settings, msg)
    except Exception as exc:
        print(f'server.py: notify-test: {mail_problem(exc, settings)}', file=sys.stderr)
        return 1
    print(f'sent a test mail to {settings.owner} through {settings.host}:{settings.port}')
    return 0


_TERMINAL_CONTROLS_RE = re.compile(r'[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]')


def _terminal_safe(text):
    """Visitors' text for the owner's terminal: escape sequences and controls shown, not obeyed."""
    return _TERMINAL_CONTROLS_RE.sub(lambda m: m.group().encode('unicode_escape').decode('ascii'), str(text))


def _csv_safe(value):
    """A cell of visitors' text that neither a spreadsheet nor the terminal it is printed on obeys.

    Controls and escape sequences are shown as in the plain view, line breaks kept (CSV quotes
    them); a cell that would start a formula gets a leading ' (OWASP's CSV injection advice),
    which spreadsheets read as "this is text".
    """
    text = '\n'.join(_terminal_safe(line.rstrip('\r')) for line in str(value).split('\n'))
    return "'" + text if text[:1] in ('=', '+', '-', '@') else text


def serve_command(argv, build, *, app=None):
    """Serve ``build(config)`` with the Config from ``argv`` (default ``sys.argv[1:]``): the
    command line of server.py for the site, and of an app's script for an ``app`` (App.main).
    The one place a failed start is reported: one line on stderr; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = 'server.py'
    if app is not None:
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] not in ('', '-c') else 'app'
    try:
        try:
            config = config_from_args(argv, prog=prog, app=app)
        except SystemExit as exc:       # --help, or a bad flag (already said on stderr)
            return exc.code
        configure_logging(config.log_level)
        check_listen(config)
        return serve_forever(lambda: build(config), config)
    except StartupError as exc:
        print(f'{prog}: error: {exc}', file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 0


def main(argv=None):
    """The command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {'messages': print_messages, 'uploads': uploads_command, 'backup': backup_command,
                'notify-test': notify_test}
    if argv and argv[0] in commands:
        try:
            return commands[argv[0]](argv[1:])
        except BrokenPipeError:
            # Its reader went away (`| head`): stop quietly, and let no flush at exit complain.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    if argv == ['--version']:     # also where a bad SERVER_* setting would stop the parser
        print(f'server.py {__version__}')
        return 0
    return serve_command(argv, build_site)


if __name__ == '__main__':
    sys.exit(main())
