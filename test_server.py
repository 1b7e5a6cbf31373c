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



# --- TLS, the command line, graceful shutdown, nginx -----------------------------------------

def make_certificate(folder):
    """A throwaway self-signed certificate for 127.0.0.1 with openssl, or None without it."""
    openssl = shutil.which('openssl')
    if not openssl:
        return None
    cert, key = os.path.join(folder, 'cert.pem'), os.path.join(folder, 'key.pem')
    result = subprocess.run([openssl, 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
                             '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
                             '-keyout', key, '-out', cert], capture_output=True, timeout=60)
    return (cert, key) if result.returncode == 0 else None


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class ServerProcess:
    """python3 server.py as a real subprocess on a free port with its own data folder."""

    def __init__(self, *args, data=None, env=None):
        self.tmp = tempfile.mkdtemp(prefix='server-proc-')
        self.data = data or os.path.join(self.tmp, 'data')
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, 'server.py'), '--port', str(self.port),
             '--data', self.data, '--root', WWW, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, **(env or {})))
        self.banner = self.proc.stdout.readline().decode()

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        return self.proc.returncode, out.decode(errors='replace'), err.decode(errors='replace')

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
        shutil.rmtree(self.tmp, ignore_errors=True)


class TLSTest(unittest.TestCase):

    def test_https_with_a_throwaway_certificate(self):
        folder = tempfile.mkdtemp(prefix='server-tls-')
        self.addCleanup(shutil.rmtree, folder, True)
        pair = make_certificate(folder)
        if pair is None:
            self.skipTest('openssl is not installed')
        live = LiveServer(certfile=pair[0], keyfile=pair[1])
        self.addCleanup(live.stop)
        context = ssl.create_default_context(cafile=pair[0])
        conn = http.client.HTTPSConnection('127.0.0.1', live.port, context=context, timeout=5)
        conn.request('GET', '/')
        resp = conn.getresponse()
        body = resp.read()
        self.assertEqual(resp.status, 200)
        self.assertIn(b'<html', body)
        self.assertIn('max-age', resp.getheader('Strict-Transport-Security'))
        self.assertIn('Secure', resp.getheader('Set-Cookie') or 'Secure')
        conn.request('GET', '/img/og.png')        # a file through the TLS (non-sendfile) path
        resp = conn.getresponse()
        with open(os.path.join(WWW, 'img', 'og.png'), 'rb') as f:
            self.assertEqual(resp.read(), f.read())
        conn.close()

    def test_missing_certificate_is_a_clear_error(self):
        result = subprocess.run([sys.executable, os.path.join(HERE, 'server.py'), '--certfile',
                                 '/nonexistent/cert.pem', '--port', '0', '--data', tempfile.gettempdir()],
                                capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr.count('\n'), 1, result.stderr)
        self.assertIn('certificate file not found', result.stderr)
        self.assertNotIn('Traceback', result.stderr)


class CommandLineTest(unittest.TestCase):

    def run_cli(self, *args, env=None):
        return subprocess.run([sys.executable, os.path.join(HERE, 'server.py'), *args],
                              capture_output=True, text=True, timeout=30,
                              env=dict(os.environ, **(env or {})))

    def test_help_names_every_option(self):
        result = self.run_cli('--help')
        self.assertEqual(result.returncode, 0)
        for option in ('--host', '--port', '--root', '--data', '--workers', '--certfile', '--keyfile',
                       '--trusted-proxy', '--log-level', '--no-access-log', '--reload'):
            self.assertIn(option, result.stdout)

    def test_bad_values_are_one_line_errors(self):
        tmp = tempfile.mkdtemp(prefix='server-cli-')
        self.addCleanup(shutil.rmtree, tmp, True)
        for args, env in ((['--port', 'abc'], None), (['--port', '70000'], None), (['--workers', '0'], None),
                          (['--root', '/nonexistent'], None), (['--log-level', 'loud'], None),
                          (['--trusted-proxy', 'not-an-ip'], None), ([], {'SERVER_PORT': 'x'}),
                          (['--keyfile', 'k.pem'], None)):
            with self.subTest(args=args, env=env):
                result = self.run_cli(*args, '--data', os.path.join(tmp, 'd'), env=env)
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertEqual(result.stderr.count('\n'), 1, result.stderr)
                self.assertNotIn('Traceback', result.stderr)

    def test_port_in_use(self):
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            s.listen()
            tmp = tempfile.mkdtemp(prefix='server-cli-')
            self.addCleanup(shutil.rmtree, tmp, True)
            result = self.run_cli('--port', str(s.getsockname()[1]), '--data', os.path.join(tmp, 'd'))
        self.assertEqual(result.returncode, 1)
        self.assertIn('cannot listen', result.stderr)
        self.assertNotIn('Traceback', result.stderr)

    def test_data_folder_not_writable(self):
        if os.geteuid() == 0:
            blocker = tempfile.NamedTemporaryFile(prefix='server-cli-')   # a file where a folder should be
            self.addCleanup(blocker.close)
            data = os.path.join(blocker.name, 'data')
        else:
            data = '/proc/server-py-data'
        result = self.run_cli('--port', '0', '--data', data)
        self.assertEqual(result.returncode, 2)
        self.assertIn('not writable', result.stderr)
        self.assertNotIn('Traceback', result.stderr)

    def test_environment_and_flag_precedence(self):
        config = server.config_from_args(['--port', '9001', '--data', tempfile.mkdtemp()],
                                         environ={'SERVER_PORT': '9000', 'SERVER_HOST': '0.0.0.0',
                                                  'SERVER_ACCESS_LOG': '0'})
        self.assertEqual((config.port, config.host, config.access_log), (9001, '0.0.0.0', False))


class GracefulShutdownTest(unittest.TestCase):

    def test_sigterm_finishes_the_request_in_flight(self):
        proc = ServerProcess('--no-access-log')
        self.addCleanup(proc.cleanup)
        self.assertIn('serving http://127.0.0.1:', proc.banner)
        # A request in flight: the head is sent, the body comes after the signal.
        sock = socket.create_connection(('127.0.0.1', proc.port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(b'GET /contact HTTP/1.1\r\nHost: a\r\n\r\n')
        f = sock.makefile('rb')
        status, headers, body = read_response(f)
        cookie = headers['set-cookie'].split(';')[0]
        token = re.search(rb'name="csrf_token" value="([^"]+)"', body).group(1)
        form = b'name=Ann&email=ann%40example.com&message=hello+there&csrf_token=' + token
        sock.sendall(b'POST /contact HTTP/1.1\r\nHost: a\r\nCookie: ' + cookie.encode() +
                     b'\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n' % len(form)
                     + form[:10])
        time.sleep(0.2)
        proc.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with self.assertRaises(OSError):     # no longer accepting
            socket.create_connection(('127.0.0.1', proc.port), timeout=2).close()
        sock.sendall(form[10:])
        status, headers, _ = read_response(f)
        self.assertEqual(status, 303)
        self.assertEqual(headers['connection'], 'close')
        code, out, err = proc.stop(sig=None)
        self.assertEqual(code, 0, err)
        db = sqlite3.connect(os.path.join(proc.data, 'app.db'))
        self.assertEqual(db.execute('SELECT name, body FROM messages').fetchall(), [('Ann', 'hello there')])
        db.close()

    def test_messages_command(self):
        proc = ServerProcess('--no-access-log')
        self.addCleanup(proc.cleanup)
        code, _, err = proc.stop()
        self.assertEqual(code, 0, err)
        db = sqlite3.connect(os.path.join(proc.data, 'app.db'))
        with db:
            db.execute("INSERT INTO messages (name, email, body, ip, created) VALUES "
                       "('Old', 'o@example.com', 'first', '1.2.3.4', 1000), "
                       "('New', 'n@example.com', 'line1\nline2, \"quoted\"', '1.2.3.5', 2000)")
        db.close()
        out = subprocess.run([sys.executable, os.path.join(HERE, 'server.py'), 'messages', '--data', proc.data],
                             capture_output=True, text=True, timeout=30).stdout
        self.assertLess(out.index('New'), out.index('Old'))
        out = subprocess.run([sys.executable, os.path.join(HERE, 'server.py'), 'messages', '--csv', '--data',
                              proc.data], capture_output=True, text=True, timeout=30).stdout
        import csv
        rows = list(csv.reader(io.StringIO(out)))
        self.assertEqual(rows[0][0], 'id')
        self.assertEqual([r[2] for r in rows[1:]], ['New', 'Old'])
        self.assertEqual(rows[1][5], 'line1\nline2, "quoted"')


class AccessLogTest(unittest.TestCase):

    def test_combined_log_format_and_escaping(self):
        live = LiveServer(access_log=True)
        self.addCleanup(live.stop)
        with self.assertLogs('server.access', 'INFO') as logs:
            exchange(live.port, b'GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\nReferer: http://r.example/\r\n'
                                b'User-Agent: evil"agent\xff\r\n\r\n')
        line = logs.records[-1].getMessage()
        self.assertRegex(line, r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                               r'"GET /healthz\?x=1 HTTP/1\.1" 200 3 "http://r\.example/" "evil\\x22agent\\xFF"$')


class NginxTest(unittest.TestCase):
    """The shipped nginx.conf, made local, in front of the real site."""

    def test_nginx_conf_in_front_of_the_app(self):
        nginx = shutil.which('nginx') or ('/usr/sbin/nginx' if os.path.exists('/usr/sbin/nginx') else None)
        if nginx is None:
            self.skipTest('nginx is not installed')
        tmp = tempfile.mkdtemp(prefix='server-nginx-')
        self.addCleanup(shutil.rmtree, tmp, True)
        pair = make_certificate(tmp)
        if pair is None:
            self.skipTest('openssl is not installed')
        live = LiveServer()
        self.addCleanup(live.stop)

        @live.app.route('/whoami', methods=['GET', 'POST'], csrf=False)
        async def whoami(request):
            return {'client': request.client, 'scheme': request.scheme, 'form': dict(request.form)}

        http_port, https_port = free_port(), free_port()
        with open(os.path.join(HERE, 'nginx.conf')) as f:
            conf = f.read()
        for old, new in [
            ('user www-data;', ''),
            ('pid /run/nginx.pid;', f'pid {tmp}/nginx.pid;'),
            ('/var/log/nginx/', f'{tmp}/'),
            ('listen [::]:80;', ''), ('listen [::]:443 ssl;', ''),
            ('listen 80;', f'listen 127.0.0.1:{http_port};'),
            ('listen 443 ssl;', f'listen 127.0.0.1:{https_port} ssl;'),
            ('/etc/letsencrypt/live/example.com/fullchain.pem', pair[0]),
            ('/etc/letsencrypt/live/example.com/privkey.pem', pair[1]),
            ('/srv/portfolio/www', WWW),
            ('server 127.0.0.1:8000;', f'server 127.0.0.1:{live.port};'),
            ('http {', f'http {{\n    client_body_temp_path {tmp}/body;\n    proxy_temp_path {tmp}/proxy;\n'
                       f'    fastcgi_temp_path {tmp}/fastcgi;\n    uwsgi_temp_path {tmp}/uwsgi;\n'
                       f'    scgi_temp_path {tmp}/scgi;'),
        ]:
            self.assertIn(old, conf)
            conf = conf.replace(old, new)
        path = os.path.join(tmp, 'nginx.conf')
        with open(path, 'w') as f:
            f.write(conf)
        check = subprocess.run([nginx, '-t', '-c', path, '-p', tmp], capture_output=True, text=True, timeout=30)
        self.assertEqual(check.returncode, 0, check.stderr)
        proc = subprocess.Popen([nginx, '-c', path, '-p', tmp, '-g', 'daemon off;'],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.addCleanup(lambda: (proc.terminate(), proc.wait(10)))
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(('127.0.0.1', https_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.fail('nginx did not start: ' + proc.stderr.read1().decode())
                time.sleep(0.05)

        plain = http.client.HTTPConnection('127.0.0.1', http_port, timeout=5)
        plain.request('GET', '/contact?x=1')
        resp = plain.getresponse()
        resp.read()
        self.assertEqual(resp.status, 301)
        self.assertTrue(resp.getheader('Location').startswith('https://'))
        context = ssl.create_default_context(cafile=pair[0])
        conn = http.client.HTTPSConnection('127.0.0.1', https_port, context=context, timeout=5)
        conn.request('GET', '/')
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertIn(b'<html', resp.read())
        self.assertIn('max-age', resp.getheader('Strict-Transport-Security'))
        conn.request('GET', '/css/site.css', headers={'Accept-Encoding': 'gzip'})
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader('Content-Encoding'), 'gzip')
        self.assertIn('max-age=604800', resp.getheader('Cache-Control'))
        resp.read()
        # From another loopback address, so the real client differs from the proxy's address.
        conn = http.client.HTTPSConnection('127.0.0.1', https_port, context=context, timeout=5,
                                           source_address=('127.0.0.2', 0))
        conn.request('POST', '/whoami', body='a=1&b=2', headers={
            'Content-Type': 'application/x-www-form-urlencoded', 'X-Forwarded-For': '6.6.6.6'})
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        seen = json.loads(resp.read())
        # nginx appends the real peer to the client's (forgeable) header; the app takes the real one.
        self.assertEqual(seen, {'client': '127.0.0.2', 'scheme': 'https', 'form': {'a': '1', 'b': '2'}})
        conn.request('GET', '/.git/config')
        resp = conn.getresponse()
        resp.read()
        self.assertEqual(resp.status, 404)
        conn.close()



# --- Reliability: fuzzing and crash safety ---------------------------------------------------

VALID_REQUESTS = [
    b'GET /hello?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n',
    b'POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello',
    b'POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: y\r\n\r\n',
    b'GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n',
    b'OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n',
    b'HEAD /hello HTTP/1.1\r\nHost: a\r\nCookie: a=1; b=2\r\nRange: bytes=0-1\r\n\r\n',
]
INSERTS = [b'\r', b'\n', b'\r\n', b'\x00', b'\xff', b'\x80', b' ', b'\t', b':', b'%', b'%00', b'..',
           b'99999999999999999999', b'-1', b'chunked', b'Content-Length: 7\r\n', b'Transfer-Encoding: chunked\r\n',
           b'Host: b\r\n', b'\r\n\r\n']


def mutate(rng, data):
    """One random mutation of a request: flip, truncate, duplicate, insert or repeat."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(6)
        pos = rng.randrange(len(data) + 1) if data else 0
        if kind == 0 and data:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del data[pos:]
        elif kind == 2 and data:
            end = min(len(data), pos + rng.randint(1, 40))
            data[pos:pos] = data[pos:end]
        elif kind == 3:
            data[pos:pos] = rng.choice(INSERTS)
        elif kind == 4:
            line_end = data.find(b'\r\n')
            if line_end != -1:
                data[line_end + 2:line_end + 2] = b'X-Rep: 1\r\n' * rng.randint(1, 150)
        else:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(data)


class FuzzTest(unittest.TestCase):

    SEED = int(os.environ.get('FUZZ_SEED', '0')) or random.SystemRandom().randrange(1, 10**9)
    ALLOWED = {400, 404, 405, 408, 411, 413, 414, 416, 417, 431, 501, 505}

    def test_parser_never_fails_uncleanly(self):
        rng = random.Random(self.SEED)
        print(f'\nFuzzTest parser seed: FUZZ_SEED={self.SEED}', file=sys.stderr)
        for _ in range(5000):
            data = mutate(rng, rng.choice(VALID_REQUESTS))
            end = server.find_head_end(data)
            if end == -1:
                try:
                    server.check_head_size(data)
                except server.HTTPError as exc:
                    self.assertIn(exc.status, self.ALLOWED, data)
                continue
            try:
                head = server.parse_head(data[:end])
            except server.HTTPError as exc:
                self.assertIn(exc.status, self.ALLOWED, data)
                continue
            except Exception as exc:   # pragma: no cover - the failure message is the point
                self.fail(f'seed {self.SEED}: {type(exc).__name__}: {exc} for {data!r}')
            if head.chunked:
                try:
                    server.ChunkedDecoder().feed(data[end:])
                except server.HTTPError as exc:
                    self.assertIn(exc.status, self.ALLOWED, data)

    def test_live_server_answers_4xx_or_closes(self):
        rng = random.Random(self.SEED + 1)
        print(f'\nFuzzTest live seed: FUZZ_SEED={self.SEED}', file=sys.stderr)
        live = LiveServer(echo_app())
        self.addCleanup(live.stop)
        with patched(HEADER_TIMEOUT_S=0.3, BODY_TIMEOUT_S=0.3, REAPER_INTERVAL_S=0.05):
            for i in range(300):
                data = mutate(rng, rng.choice(VALID_REQUESTS))
                with socket.create_connection(('127.0.0.1', live.port), timeout=5) as sock:
                    sock.sendall(data)
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                    received = b''
                    try:
                        while True:
                            chunk = sock.recv(65536)
                            if not chunk:
                                break
                            received += chunk
                    except ConnectionResetError:
                        pass
                    except socket.timeout:
                        self.fail(f'seed {self.SEED}: the server hung on {data!r}')
                for status in re.findall(rb'HTTP/1\.1 (\d{3}) ', received):
                    status = int(status)
                    self.assertTrue(status < 500 or status in self.ALLOWED,
                                    f'seed {self.SEED}: {status} for {data!r}')
                self.assertNotIn(b'Traceback', received)
        self.assertEqual(status_of(live.port, b'GET /hello HTTP/1.1\r\nHost: a\r\n\r\n'), 200)


class CrashSafetyTest(unittest.TestCase):
    """SIGKILL at random moments while messages and uploads stream in: nothing acknowledged is lost."""

    def test_kill_9_loses_nothing_acknowledged(self):
        rng = random.Random(FuzzTest.SEED)
        data_dir = tempfile.mkdtemp(prefix='server-crash-')
        self.addCleanup(shutil.rmtree, data_dir, True)
        acked_messages, acked_uploads = set(), {}
        counter = iter(range(10**6))
        for round_ in range(3):
            proc = ServerProcess('--no-access-log', data=data_dir)
            self.addCleanup(proc.cleanup)
            stop = threading.Event()

            def messages():
                while not stop.is_set():
                    n = next(counter)
                    nonce = f'msg-{round_}-{n}'
                    try:
                        conn = http.client.HTTPConnection('127.0.0.1', proc.port, timeout=5)
                        conn.request('GET', '/contact')
                        resp = conn.getresponse()
                        page = resp.read()
                        cookie = resp.getheader('Set-Cookie').split(';')[0]
                        token = re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()
                        body = urllib.parse.urlencode({'name': 'N', 'email': 'n@example.com', 'message': nonce,
                                                       'csrf_token': token})
                        conn.request('POST', '/contact', body=body, headers={
                            'Cookie': cookie, 'Content-Type': 'application/x-www-form-urlencoded',
                            'X-Real-IP': f'10.{round_}.{n // 250 % 250}.{n % 250}'})
                        resp = conn.getresponse()
                        resp.read()
                        if resp.status == 303:
                            acked_messages.add(nonce)
                        conn.close()
                    except (OSError, http.client.HTTPException, AttributeError):
                        time.sleep(0.01)

            def uploads():
                while not stop.is_set():
                    n = next(counter)
                    content = f'upload-{round_}-{n}-'.encode() * rng.randint(1, 20000)
                    try:
                        conn = http.client.HTTPConnection('127.0.0.1', proc.port, timeout=5)
                        conn.request('GET', '/upload')
                        resp = conn.getresponse()
                        page = resp.read()
                        cookie = resp.getheader('Set-Cookie').split(';')[0]
                        token = re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()
                        body, ctype = server.encode_multipart({'csrf_token': token}, {'file': (f'f{n}.txt', content)})
                        conn.request('POST', '/upload', body=body, headers={'Cookie': cookie, 'Content-Type': ctype})
                        resp = conn.getresponse()
                        resp.read()
                        if resp.status == 303:
                            acked_uploads[f'f{n}.txt'] = content
                        conn.close()
                    except (OSError, http.client.HTTPException, AttributeError):
                        time.sleep(0.01)

            threads = [threading.Thread(target=messages), threading.Thread(target=uploads)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.4, 1.0))
            proc.proc.kill()                     # SIGKILL: no cleanup of any kind
            proc.proc.wait(10)
            stop.set()
            for t in threads:
                t.join(10)

        # Restart once more: the startup sweep runs, then everything is checked.
        proc = ServerProcess('--no-access-log', data=data_dir)
        self.addCleanup(proc.cleanup)
        self.assertEqual(status_of(proc.port, b'GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n'), 200)
        code, _, err = proc.stop()
        self.assertEqual(code, 0, err)
        self.assertTrue(acked_messages and acked_uploads, 'the test acknowledged nothing')
        if os.environ.get('CRASH_VERBOSE'):
            print(f'\nacknowledged: {len(acked_messages)} messages, {len(acked_uploads)} uploads', file=sys.stderr)
        db = sqlite3.connect(os.path.join(data_dir, 'app.db'))
        self.addCleanup(db.close)
        self.assertEqual(db.execute('PRAGMA integrity_check').fetchone()[0], 'ok')
        stored = [row[0] for row in db.execute('SELECT body FROM messages')]
        self.assertEqual(len(stored), len(set(stored)), 'a message stored twice')
        self.assertLessEqual(acked_messages, set(stored))
        rows = db.execute('SELECT name, stored, size FROM uploads').fetchall()
        files = set(os.listdir(os.path.join(data_dir, 'uploads')))
        self.assertEqual(files, {row[1] for row in rows}, 'orphan files or rows without files')
        by_name = {}
        for name, stored_name, size in rows:
            with open(os.path.join(data_dir, 'uploads', stored_name), 'rb') as f:
                by_name.setdefault(name, []).append(f.read())
            self.assertEqual(size, len(by_name[name][-1]))
        for name, content in acked_uploads.items():
            self.assertEqual(by_name.get(name), [content], f'upload {name} lost, duplicated or changed')



class WorkersTest(unittest.TestCase):

    def children(self, pid):
        path = f'/proc/{pid}/task/{pid}/children'
        with open(path) as f:
            return [int(p) for p in f.read().split()]

    def test_workers_share_the_port_restart_and_stop_together(self):
        if not os.path.exists(f'/proc/{os.getpid()}/task/{os.getpid()}/children') or not hasattr(os, 'fork'):
            self.skipTest('needs Linux /proc')
        proc = ServerProcess('--workers', '2', '--no-access-log')
        self.addCleanup(proc.cleanup)
        self.assertIn('with 2 workers', proc.banner)
        deadline = time.monotonic() + 10
        while len(self.children(proc.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = self.children(proc.proc.pid)
        self.assertEqual(len(first), 2)

        def healthy():
            while time.monotonic() < deadline:
                try:
                    return status_of(proc.port, b'GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n')
                except OSError:
                    time.sleep(0.05)
        self.assertEqual(healthy(), 200)
        os.kill(first[0], signal.SIGKILL)                # a crashed worker is replaced
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = self.children(proc.proc.pid)
            if len(now) == 2 and first[0] not in now:
                break
            time.sleep(0.05)
        self.assertEqual(len(now), 2)
        self.assertNotIn(first[0], now)
        for _ in range(10):
            self.assertEqual(healthy(), 200)
        code, out, err = proc.stop()                      # one SIGTERM stops them all
        self.assertEqual(code, 0, err)
        for pid in now:
            self.assertFalse(os.path.exists(f'/proc/{pid}/status') and
                             'zombie' not in open(f'/proc/{pid}/status').read(), f'worker {pid} still running')


if __name__ == '__main__':
    unittest.main()
