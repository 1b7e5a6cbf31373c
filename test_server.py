"""Tests for server.py: python3 -m unittest -v

Pure functions are fed real inputs; the server is started on an ephemeral port and driven
over real sockets. Every test gets a fresh temporary data folder and leaves nothing running.
"""

import asyncio
import contextlib
import gzip
import http.client
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

import server

HERE = os.path.dirname(os.path.abspath(__file__))
WWW = os.path.join(HERE, 'www')


# --- helpers -------------------------------------------------------------------------------

class LiveServer:
    """A real server on 127.0.0.1:<free port>, on its own event loop in a thread."""

    def __init__(self, app=None, *, certfile='', keyfile='', access_log=False, root=WWW):
        self.tmp = tempfile.mkdtemp(prefix='server-test-')
        self.data = os.path.join(self.tmp, 'data')
        self.config = server.Config(host='127.0.0.1', port=0, root=root, data=self.data,
                                    certfile=certfile, keyfile=keyfile, access_log=access_log)
        self.app = app if app is not None else server.build_site(self.config)
        self.loop = asyncio.new_event_loop()
        self.error = None
        started = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            try:
                self.server = server.Server(self.app, self.config)
                self.loop.run_until_complete(self.server.start())
            except BaseException as exc:  # surfaced to the test below
                self.error = exc
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(10)
        if self.error:
            raise self.error
        self.port = self.server.port

    def call(self, coro, timeout=15):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        if self.thread.is_alive():
            self.call(self.server.shutdown(grace=2))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def connect(self, timeout=5):
        sock = socket.create_connection(('127.0.0.1', self.port), timeout=timeout)
        return sock


def read_response(f, method='GET'):
    """Read one HTTP/1.1 response from a buffered binary file -> (status, headers dict, body)."""
    line = f.readline()
    if not line:
        return None
    while line.startswith(b'HTTP/1.1 1'):        # skip interim responses
        while f.readline() not in (b'\r\n', b''):
            pass
        line = f.readline()
    status = int(line.split()[1])
    headers = {}
    while True:
        h = f.readline()
        if h in (b'\r\n', b''):
            break
        name, _, value = h.decode('latin-1').partition(':')
        key = name.strip().lower()
        headers[key] = headers[key] + ', ' + value.strip() if key in headers else value.strip()
    body = b''
    if method == 'HEAD' or status in (204, 304) or status < 200:
        return status, headers, body
    if headers.get('transfer-encoding') == 'chunked':
        while True:
            size = int(f.readline().split(b';')[0], 16)
            if size == 0:
                while f.readline() not in (b'\r\n', b''):
                    pass
                break
            body += f.read(size)
            f.readline()
    elif 'content-length' in headers:
        body = f.read(int(headers['content-length']))
    else:
        body = f.read()
    return status, headers, body


def exchange(port, data, timeout=5):
    """Send raw bytes, half-close, and read every response until the server closes."""
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as sock:
        sock.sendall(data)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        f = sock.makefile('rb')
        responses = []
        while True:
            try:
                r = read_response(f)
            except (ConnectionError, ValueError, IndexError):
                break
            if r is None:
                break
            responses.append(r)
        return responses


def status_of(port, data):
    responses = exchange(port, data)
    return responses[0][0] if responses else None


class LiveTestCase(unittest.TestCase):
    """A site server per test class (fresh data folder), stopped afterwards."""

    app_factory = None

    @classmethod
    def setUpClass(cls):
        cls.live = LiveServer(cls.app_factory() if cls.app_factory else None)
        cls.port = cls.live.port

    @classmethod
    def tearDownClass(cls):
        cls.live.stop()

    def get(self, path, headers=None, method='GET', body=None):
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=5)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


@contextlib.contextmanager
def patched(**values):
    """Temporarily lower server limits (module constants) for a test."""
    old = {name: getattr(server, name) for name in values}
    for name, value in values.items():
        setattr(server, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(server, name, value)


def feed_three_ways(test, parse, data):
    """h11's habit: feed a reader whole, byte by byte, and with the next request's bytes after."""
    results = []
    results.append(parse([data]))
    results.append(parse([data[i:i + 1] for i in range(len(data))]))
    results.append(parse([data + b'GET /next HTTP/1.1\r\nHost: x\r\n\r\n']))
    return results


# --- 3. HTTP/1.1 parsing (pure) -------------------------------------------------------------

class ParseHeadTest(unittest.TestCase):

    def parse(self, raw):
        return server.parse_head(raw)

    def assertStatus(self, raw, status):
        with self.assertRaises(server.HTTPError) as ctx:
            server.parse_head(raw)
        self.assertEqual(ctx.exception.status, status, raw)

    def test_simple_get(self):
        req = self.parse(b'GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\nx-a: 2\r\n\r\n')
        self.assertEqual((req.method, req.path, req.query_string, req.version), ('GET', '/a/b', 'x=1&y=2', (1, 1)))
        self.assertEqual(req.headers['HOST'], 'example.com')
        self.assertEqual(req.headers.get_all('x-a'), ['1', '2'])
        self.assertTrue(req.keep_alive)
        self.assertEqual(req.body_length, 0)

    def test_bare_lf_lines_are_accepted(self):
        req = self.parse(b'GET / HTTP/1.1\nHost: a\n\n')
        self.assertEqual(req.headers['host'], 'a')

    def test_http10_keep_alive_rules(self):
        self.assertFalse(self.parse(b'GET / HTTP/1.0\r\n\r\n').keep_alive)
        self.assertTrue(self.parse(b'GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n').keep_alive)
        self.assertFalse(self.parse(b'GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n').keep_alive)

    def test_absolute_form_and_asterisk(self):
        req = self.parse(b'GET http://example.com/x?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n')
        self.assertEqual((req.path, req.query_string), ('/x', 'q=1'))
        self.assertEqual(self.parse(b'OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n').path, '*')

    def test_framing(self):
        req = self.parse(b'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n')
        self.assertEqual((req.body_length, req.chunked), (12, False))
        req = self.parse(b'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n')
        self.assertEqual((req.body_length, req.chunked), (None, True))
        req = self.parse(b'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n')
        self.assertEqual(req.body_length, 5)

    BAD = [
        # (raw head, status) -- one line each, the RFC section in the comment
        (b'GET / HTTP/1.1\r\n\r\n', 400),                                   # 9112 3.2: Host required
        (b'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 400),            # two Hosts
        (b'GET /\r\n\r\n', 400),                                            # HTTP/0.9
        (b'GET  / HTTP/1.1\r\nHost: a\r\n\r\n', 400),                       # double space
        (b'GET / HTTP/1.1 \r\nHost: a\r\n\r\n', 400),                       # trailing space
        (b'G(T / HTTP/1.1\r\nHost: a\r\n\r\n', 400),                        # method not a token
        (b'GET / HTTP/2.0\r\nHost: a\r\n\r\n', 505),
        (b'GET / HTTP/3.0\r\nHost: a\r\n\r\n', 505),
        (b'GET / HTTP/1.2\r\nHost: a\r\n\r\n', 505),
        (b'GET / HTTX/1.1\r\nHost: a\r\n\r\n', 400),
        (b'GET / HTTP/1.1\r\nHost : a\r\n\r\n', 400),                       # 9112 5.1 space before colon
        (b'GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n', 400),             # obs-fold
        (b'GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n', 400),           # NUL
        (b'GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n', 400),             # bare CR
        (b'GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n', 400),
        (b'GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n', 400),
        (b'GET / HTTP/1.1\r\nHost: a\r\nX\x7f: y\r\n\r\n', 400),
        (b'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n', 400),
        (b'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n', 400),
        (b'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n', 400),
        (b'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n', 400),
        (b'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n', 400),
        (b'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n', 400),
        (b'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n', 400),
        (b'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n', 400),     # 9112 6.3 (4)
        (b'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n', 400),
        (b'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n', 501),
        (b'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n', 400),
        (b'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n', 400),
        (b'POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n', 400),   # 9112 6.1
        (b'GET / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n', 417),
        (b'GET * HTTP/1.1\r\nHost: a\r\n\r\n', 400),
        (b'CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n', 400),
        (b'GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n', 400),
    ]

    def test_bad_heads(self):
        for raw, status in self.BAD:
            with self.subTest(raw=raw):
                self.assertStatus(raw, status)

    def test_limits_at_and_past(self):
        line_ok = b'GET /' + b'a' * (server.MAX_REQUEST_LINE_BYTES - 14) + b' HTTP/1.1'
        self.assertEqual(len(line_ok), server.MAX_REQUEST_LINE_BYTES)
        self.parse(line_ok + b'\r\nHost: a\r\n\r\n')
        self.assertStatus(line_ok.replace(b'/a', b'/aa') + b'\r\nHost: a\r\n\r\n', 414)
        fields = b''.join(b'X-%d: 1\r\n' % i for i in range(server.MAX_HEADER_COUNT - 1))
        self.parse(b'GET / HTTP/1.1\r\nHost: a\r\n' + fields + b'\r\n')
        self.assertStatus(b'GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n' + fields + b'\r\n', 431)

    def test_head_size_checks_while_incomplete(self):
        server.check_head_size(b'GET /' + b'a' * 100)
        with self.assertRaises(server.HTTPError) as ctx:
            server.check_head_size(b'GET /' + b'a' * server.MAX_REQUEST_LINE_BYTES)
        self.assertEqual(ctx.exception.status, 414)
        with self.assertRaises(server.HTTPError) as ctx:
            server.check_head_size(b'GET / HTTP/1.1\r\n' + b'X: y\r\n' * (server.MAX_HEADER_BYTES // 6 + 1))
        self.assertEqual(ctx.exception.status, 431)

    def test_find_head_end_three_ways(self):
        raw = b'GET / HTTP/1.1\r\nHost: a\r\n\r\n'

        def parse(pieces):
            buf = b''
            for piece in pieces:
                buf += piece
                end = server.find_head_end(buf)
                if end != -1:
                    return server.parse_head(buf[:end]).path, buf[end:]
            return None
        whole, bytewise, pipelined = feed_three_ways(self, parse, raw)
        self.assertEqual(whole, ('/', b''))
        self.assertEqual(bytewise, ('/', b''))
        self.assertEqual(pipelined, ('/', b'GET /next HTTP/1.1\r\nHost: x\r\n\r\n'))
        self.assertEqual(server.find_head_end(b'GET / HTTP/1.1\r\nHost: a\r\n\r'), -1)
        self.assertEqual(server.find_head_end(b'GET / HTTP/1.1\nHost: a\n\nX'), 24)


class ChunkedDecoderTest(unittest.TestCase):

    BODY = b'5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n'

    def decode(self, pieces):
        dec = server.ChunkedDecoder()
        out = b''
        for piece in pieces:
            out += dec.feed(piece)
            if dec.done:
                break
        return out, dec.done, dec.leftover

    def test_three_ways(self):
        whole, bytewise, pipelined = feed_three_ways(self, self.decode, self.BODY)
        self.assertEqual(whole, (b'hello world', True, b''))
        self.assertEqual(bytewise, (b'hello world', True, b''))
        self.assertEqual(pipelined, (b'hello world', True, b'GET /next HTTP/1.1\r\nHost: x\r\n\r\n'))

    def test_uppercase_hex_and_no_trailers(self):
        self.assertEqual(self.decode([b'A\r\n0123456789\r\n0\r\n\r\n'])[:2], (b'0123456789', True))

    def test_malformed(self):
        for raw in [b'x\r\n', b'-1\r\n', b'5\r\nhelloXX\r\n', b'0x5\r\nhello\r\n', b' 5\r\nhello\r\n',
                    b'5\rhello\r\n', b'11111111111111111\r\n']:
            with self.subTest(raw=raw):
                with self.assertRaises(server.HTTPError) as ctx:
                    self.decode([raw + b'0\r\n\r\n'])
                self.assertEqual(ctx.exception.status, 400)

    def test_endless_chunk_line(self):
        with self.assertRaises(server.HTTPError):
            self.decode([b'1' * 5000])


class SmallParsersTest(unittest.TestCase):

    def test_query(self):
        q = server.parse_query('a=1&a=2&b=x+y&c=%C3%A9&d')
        self.assertEqual(q.getlist('a'), ['1', '2'])
        self.assertEqual((q['a'], q['b'], q['c'], q['d']), ('1', 'x y', 'é', ''))
        with self.assertRaises(server.HTTPError) as ctx:
            server.parse_query('a=%FF')
        self.assertEqual(ctx.exception.status, 400)

    def test_cookies(self):
        c = server.parse_cookies(['a=1; b="two"; bad; =x; a=3', 'c=4'])
        self.assertEqual(c, {'a': '1', 'b': 'two', 'c': '4'})

    def test_content_type(self):
        self.assertEqual(server.parse_content_type('Text/HTML; Charset="utf-8"; q=1'),
                         ('text/html', {'charset': 'utf-8', 'q': '1'}))
        self.assertEqual(server.parse_content_type('multipart/form-data; boundary="a;b"')[1]['boundary'], 'a;b')

    def test_range(self):
        self.assertEqual(server.parse_range('bytes=0-9', 100), (0, 9))
        self.assertEqual(server.parse_range('bytes=90-', 100), (90, 99))
        self.assertEqual(server.parse_range('bytes=-10', 100), (90, 99))
        self.assertEqual(server.parse_range('bytes=50-500', 100), (50, 99))
        for ignored in ['bytes=5-1', 'items=0-1', 'bytes=0-1,3-4', 'bytes=a-b', 'bytes=-', 'bytes']:
            self.assertIsNone(server.parse_range(ignored, 100), ignored)
        for bad in ['bytes=100-', 'bytes=-0', 'bytes=200-300']:
            with self.assertRaises(server.HTTPError) as ctx:
                server.parse_range(bad, 100)
            self.assertEqual(ctx.exception.status, 416)
            self.assertEqual(ctx.exception.headers['Content-Range'], 'bytes */100')

    def test_etags(self):
        self.assertTrue(server.etag_matches('"a", "b"', '"b"'))
        self.assertTrue(server.etag_matches('W/"b"', '"b"'))
        self.assertTrue(server.etag_matches('*', '"b"'))
        self.assertFalse(server.etag_matches('"c"', '"b"'))

    def test_safe_filename(self):
        self.assertEqual(server.safe_filename('../../etc/pass wd.txt'), 'pass wd.txt')
        self.assertEqual(server.safe_filename('C:\\Users\\x\\evil.exe'), 'evil.exe')
        self.assertEqual(server.safe_filename('..'), 'file')
        self.assertEqual(server.safe_filename('<script>.html'), 'script_.html')
        self.assertEqual(server.safe_filename('.bashrc'), 'bashrc')


# --- 10. The connection, over real sockets ---------------------------------------------------

def echo_app():
    app = server.App(data=tempfile.mkdtemp(prefix='server-echo-'), csrf=False)

    @app.route('/echo', methods=['GET', 'POST', 'PUT'])
    async def echo(request):
        return {'method': request.method, 'body': request.body.decode('latin-1'),
                'query': dict(request.query), 'path': request.path}

    @app.get('/hello')
    async def hello(request):
        return server.Response.text('Hello, world!')

    @app.get('/sleep')
    def sleep(request):
        time.sleep(float(request.query.get('s', '0.5')))
        return 'slept'

    @app.get('/boom')
    async def boom(request):
        raise RuntimeError('secret traceback detail')

    @app.get('/stream')
    async def stream(request):
        async def gen():
            for i in range(3):
                yield f'part{i};'
        return server.Response(gen(), content_type='text/plain')

    @app.get('/syncstream')
    def syncstream(request):
        return server.Response(iter([b'a', b'b', b'c']), content_type='text/plain')

    @app.get('/big')
    async def big(request):
        return server.Response(b'x' * (4 * 1024 * 1024), content_type='application/octet-stream')

    @app.route('/upload', methods=['POST'], max_body=4096)
    async def upload(request):
        return {'size': len(request.body)}

    @app.before_request
    async def auth(request):
        if request.path == '/auth':
            server.abort(401, 'no')

    @app.route('/auth', methods=['POST'])
    async def auth_target(request):
        return 'never reached'

    @app.get('/badheader')
    async def badheader(request):
        resp = server.Response('x')
        resp.headers['X-Bad'] = 'a\r\nSet-Cookie: evil=1'
        return resp
    return app


class ProtocolTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.live = LiveServer(echo_app())
        cls.port = cls.live.port

    @classmethod
    def tearDownClass(cls):
        cls.live.stop()

    def test_get_and_date(self):
        (status, headers, body), = exchange(self.port, b'GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n')
        self.assertEqual((status, body), (200, b'Hello, world!'))
        self.assertRegex(headers['date'], r'^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT$')
        self.assertEqual(headers['connection'], 'close')

    def test_statuses_over_the_wire(self):
        cases = [
            (b'GET / HTTP/1.1\r\n\r\n', 400),
            (b'GET / HTTP/2.0\r\nHost: a\r\n\r\n', 505),
            (b'GET /' + b'a' * 9000 + b' HTTP/1.1\r\nHost: a\r\n\r\n', 414),
            (b'GET / HTTP/1.1\r\nHost: a\r\n' + b'X-Long: ' + b'a' * 70000 + b'\r\n\r\n', 431),
            (b'GET / HTTP/1.1\r\nHost: a\r\n' + b'X: y\r\n' * 101 + b'\r\n', 431),
            (b'POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc', 400),
            (b'POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n', 501),
            (b'POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 4097\r\n\r\n', 413),
            (b'DELETE /echo HTTP/1.1\r\nHost: a\r\n\r\n', 501),
            (b'BREW /echo HTTP/1.1\r\nHost: a\r\n\r\n', 501),
            (b'TRACE / HTTP/1.1\r\nHost: a\r\n\r\n', 501),
            (b'POST /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n', 405),
            (b'GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n', 404),
            (b'GET /boom HTTP/1.1\r\nHost: a\r\n\r\n', 500),
            (b'GET /hello HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n', 417),
            (b'GET /hello HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n', 400),
        ]
        for raw, status in cases:
            with self.subTest(raw=raw[:60]):
                responses = exchange(self.port, raw)
                self.assertTrue(responses, 'no response')
                self.assertEqual(responses[0][0], status)
                self.assertNotIn(b'Traceback', responses[0][2])
        # and the server still answers
        self.assertEqual(status_of(self.port, b'GET /hello HTTP/1.1\r\nHost: a\r\n\r\n'), 200)

    def test_405_has_allow_and_options(self):
        (status, headers, _), = exchange(self.port, b'POST /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n')
        self.assertEqual(status, 405)
        self.assertEqual(headers['allow'], 'GET, HEAD, OPTIONS')
        (status, headers, body), = exchange(self.port, b'OPTIONS /echo HTTP/1.1\r\nHost: a\r\n\r\n')
        self.assertEqual((status, body), (204, b''))
        self.assertEqual(headers['allow'], 'GET, HEAD, OPTIONS, POST, PUT')
        (status, headers, _), = exchange(self.port, b'OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n')
        self.assertEqual(status, 204)
        self.assertIn('POST', headers['allow'])

    def test_500_keeps_serving_and_hides_the_traceback(self):
        with self.assertLogs('server', 'ERROR') as logs:
            responses = exchange(self.port, b'GET /boom HTTP/1.1\r\nHost: a\r\n\r\nGET /hello HTTP/1.1\r\nHost: a\r\n\r\n')
        self.assertEqual([r[0] for r in responses], [500, 200])
        self.assertNotIn(b'secret', responses[0][2])
        self.assertIn('secret traceback detail', '\n'.join(logs.output))

    def test_head_has_get_headers_and_no_body(self):
        with self.live.connect() as sock:
            sock.sendall(b'HEAD /hello HTTP/1.1\r\nHost: a\r\n\r\nGET /hello HTTP/1.1\r\nHost: a\r\n\r\n')
            f = sock.makefile('rb')
            status, headers, body = read_response(f, 'HEAD')
            self.assertEqual((status, body, headers['content-length']), (200, b'', '13'))
            self.assertEqual(read_response(f)[2], b'Hello, world!')

    def test_keep_alive_and_pipelining_in_order(self):
        reqs = b''.join(b'GET /echo?i=%d HTTP/1.1\r\nHost: a\r\n\r\n' % i for i in range(20))
        with self.live.connect() as sock:
            sock.sendall(reqs + b'GET /sleep?s=0.2 HTTP/1.1\r\nHost: a\r\n\r\nGET /echo?i=last HTTP/1.1\r\nHost: a\r\n\r\n')
            f = sock.makefile('rb')
            for i in range(20):
                status, _, body = read_response(f)
                self.assertEqual(json.loads(body)['query'], {'i': str(i)})
            self.assertEqual(read_response(f)[2], b'slept')
            self.assertEqual(json.loads(read_response(f)[2])['query'], {'i': 'last'})

    def test_pipelined_bodies_three_ways(self):
        raw = (b'POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello'
               b'POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n'
               b'GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n')
        for pieces in ([raw], [raw[i:i + 1] for i in range(len(raw))], [raw[:50], raw[50:]]):
            with self.live.connect() as sock:
                for piece in pieces:
                    sock.sendall(piece)
                f = sock.makefile('rb')
                bodies = [json.loads(read_response(f)[2])['body'] for _ in range(3)]
                self.assertEqual(bodies, ['hello', 'abc', ''])
                self.assertEqual(f.read(), b'')   # closed after Connection: close

    def test_http10(self):
        (status, headers, body), = exchange(self.port, b'GET /hello HTTP/1.0\r\n\r\n')
        self.assertEqual((status, body), (200, b'Hello, world!'))
        with self.live.connect() as sock:
            sock.sendall(b'GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n')
            f = sock.makefile('rb')
            status, headers, _ = read_response(f)
            self.assertEqual(headers['connection'], 'keep-alive')
            sock.sendall(b'GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n')
            status, headers, body = read_response(f)   # no chunked for 1.0: read to close
            self.assertEqual(body, b'part0;part1;part2;')
            self.assertNotIn('transfer-encoding', headers)

    def test_streaming_is_chunked(self):
        for path, expected in ((b'/stream', b'part0;part1;part2;'), (b'/syncstream', b'abc')):
            (status, headers, body), = exchange(self.port, b'GET ' + path + b' HTTP/1.1\r\nHost: a\r\n\r\n')
            self.assertEqual(headers['transfer-encoding'], 'chunked')
            self.assertEqual(body, expected)

    def test_expect_continue(self):
        with self.live.connect() as sock:
            sock.sendall(b'POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n')
            self.assertEqual(sock.recv(100), b'HTTP/1.1 100 Continue\r\n\r\n')
            sock.sendall(b'data')
            status, _, body = read_response(sock.makefile('rb'))
            self.assertEqual(json.loads(body)['body'], 'data')

    def test_expect_continue_rejected_before_the_body(self):
        for path, status in ((b'/upload', 413), (b'/auth', 401), (b'/missing', 404)):
            with self.live.connect() as sock:
                length = b'5000' if path == b'/upload' else b'10'
                sock.sendall(b'POST ' + path + b' HTTP/1.1\r\nHost: a\r\nContent-Length: ' + length +
                             b'\r\nExpect: 100-continue\r\n\r\n')
                f = sock.makefile('rb')
                first = f.readline()
                self.assertEqual(int(first.split()[1]), status)   # no 100 first
                rest = f.read()                                   # and then the server closes
                self.assertIn(b'Connection: close', rest)

    def test_unread_small_body_is_drained_and_connection_kept(self):
        with self.live.connect() as sock:
            sock.sendall(b'POST /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello'
                         b'GET /hello HTTP/1.1\r\nHost: a\r\n\r\n')
            f = sock.makefile('rb')
            self.assertEqual(read_response(f)[0], 405)
            self.assertEqual(read_response(f)[2], b'Hello, world!')

    def test_blocking_handler_does_not_stall_others(self):
        results = {}

        def slow():
            results['slow'] = exchange(self.port, b'GET /sleep?s=1 HTTP/1.1\r\nHost: a\r\n\r\n')[0][0]
        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.1)
        start = time.monotonic()
        self.assertEqual(status_of(self.port, b'GET /hello HTTP/1.1\r\nHost: a\r\n\r\n'), 200)
        fast = time.monotonic() - start
        t.join()
        self.assertEqual(results['slow'], 200)
        self.assertLess(fast, 0.8)

    def test_response_header_injection_refused(self):
        with self.assertLogs('server', 'ERROR'):
            (status, headers, body), = exchange(self.port, b'GET /badheader HTTP/1.1\r\nHost: a\r\n\r\n')
        self.assertEqual(status, 500)
        self.assertNotIn('set-cookie', headers)

    def test_flow_control_big_response_to_a_slow_reader(self):
        with self.live.connect(timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(b'GET /big HTTP/1.1\r\nHost: a\r\n\r\n')
            time.sleep(0.3)       # let the server hit its high-water mark
            f = sock.makefile('rb')
            status, headers, body = read_response(f)
            self.assertEqual(len(body), 4 * 1024 * 1024)

    def test_empty_lines_before_request_are_ignored(self):
        self.assertEqual(status_of(self.port, b'\r\n\r\nGET /hello HTTP/1.1\r\nHost: a\r\n\r\n'), 200)

    def test_bad_chunked_body_is_400(self):
        raw = b'POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'
        self.assertEqual(status_of(self.port, raw), 400)

    def test_chunked_body_over_limit_is_413(self):
        chunk = b'1000\r\n' + b'a' * 4096 + b'\r\n'
        raw = b'POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n' + chunk * 3 + b'0\r\n\r\n'
        self.assertEqual(status_of(self.port, raw), 413)


class TimeoutTest(unittest.TestCase):
    """The four timeouts, with the limits lowered so the suite stays fast."""

    def setUp(self):
        self.patch = patched(HEADER_TIMEOUT_S=0.5, BODY_TIMEOUT_S=0.5, KEEPALIVE_TIMEOUT_S=0.5,
                             WRITE_TIMEOUT_S=0.5, REAPER_INTERVAL_S=0.1)
        self.patch.__enter__()
        self.live = LiveServer(echo_app())

    def tearDown(self):
        self.live.stop()
        self.patch.__exit__(None, None, None)

    def wait_closed(self, sock, limit=5):
        sock.settimeout(limit)
        data = b''
        start = time.monotonic()
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
        return data, time.monotonic() - start

    def test_slowloris_head(self):
        with self.live.connect() as sock:
            sock.sendall(b'GET / HTTP/1.1\r\nHost: a\r\n')
            data, took = self.wait_closed(sock)
            self.assertTrue(data.startswith(b'HTTP/1.1 408'), data)
            self.assertLess(took, 3)

    def test_idle_keep_alive(self):
        with self.live.connect() as sock:
            sock.sendall(b'GET /hello HTTP/1.1\r\nHost: a\r\n\r\n')
            data, took = self.wait_closed(sock)
            self.assertIn(b'Hello, world!', data)
            self.assertLess(took, 3)

    def test_stalled_body(self):
        with self.live.connect() as sock:
            sock.sendall(b'POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc')
            data, took = self.wait_closed(sock)
            self.assertTrue(data.startswith(b'HTTP/1.1 408'), data)

    def test_client_not_reading(self):
        sock = self.live.connect()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(5):
            sock.sendall(b'GET /big HTTP/1.1\r\nHost: a\r\n\r\n')
        start = time.monotonic()
        while self.live.server.connections and time.monotonic() - start < 5:
            time.sleep(0.05)
        self.assertFalse(self.live.server.connections)
        sock.close()
        self.assertEqual(status_of(self.live.port, b'GET /hello HTTP/1.1\r\nHost: a\r\n\r\n'), 200)


if __name__ == '__main__':
    unittest.main()
