#!/usr/bin/env python3
"""bench.py: measure server.py against reference servers on this machine.

Standard library only. Every server runs as a subprocess on a free 127.0.0.1 port, is
stopped at the end, and every temporary file lives in one temporary directory that is
removed at the end. Nothing is written into the project (www/ is copied, not modified).

Usage::

    python3 bench.py                          # every scenario, 3 runs of 5 s each
    python3 bench.py --quick                  # smoke test: 1 run of 2 s each
    python3 bench.py --scenarios hello,static-1m --runs 5 --duration 10
    python3 bench.py --compare 'python3 my_aiohttp_app.py --port {port}'
    python3 bench.py --scenarios hosts --database postgresql://bench:PASSWORD@db:5432/bench
    python3 bench.py --harness hello,browser,static,hello-log                  # µs per request
    python3 bench.py --harness hello,browser --instructions    # valgrind: instructions/request

Scenarios (``--scenarios``, comma-separated; default all):

``hello``
    ``GET /hello`` through the whole framework (router, Request, Response) of an app with
    200 routes (100 static, 99 dynamic, ``/hello`` registered last), with browser-like heads
    that differ on every request (a Lua script: a new query string and cookie each time, the
    six fields a browser's GET carries): an ``async def`` handler, the same as a plain
    ``def`` (run in a worker thread), and with the access log on (to /dev/null), against a
    bare ``asyncio.Protocol`` that answers a fixed ``Hello, world!`` (``python3 bench.py
    --bare-server PORT``) and every ``--compare`` command. A second, secondary case sends
    wrk's own bare head, the same bytes every time.
``pipeline``
    ``hello`` with 16 requests in each write of wrk (a Lua script; wrk counts each response),
    as the TechEmpower plaintext test sends them, against the bare server and every
    ``--compare`` command. wrk's latencies are not per request here and are not shown. The
    bare server parses nothing and answers a whole burst with one write, so its ratio here
    is a ceiling, not a peer.
``home``
    ``GET /`` of the real site (``python3 server.py``): the templated home page.
``static-10k``, ``static-1m``
    A 10 KiB and a 1 MiB file from a temporary copy of www/, against
    ``python3 -m http.server`` (ThreadingHTTPServer) and nginx when /usr/sbin/nginx exists.
``concurrency``
    ``hello`` at 1, 50 and 1000 connections, server.py and the bare server.
``contact``
    The site's contact form through the whole path: ``POST /contact`` (urlencoded, CSRF token
    and session cookie fetched first with ``GET /contact``, an SQLite insert committed with
    synchronous=FULL, answered 303, which counts as success). wrk runs a Lua script that sends
    a new ``X-Real-IP`` (10.x.y.z) per request: the site allows 5 messages per 10 minutes per
    client address and believes X-Real-IP from 127.0.0.1. Needs wrk.
``hosts``
    ``home`` and ``contact`` (the same requests, the same Lua script) against the site on
    SQLite (one process, straight and behind nginx) and on PostgreSQL with 1, 2 and 3 app
    processes, each ``python3 server.py --port P --database URL --data <a folder of its own>``,
    behind one nginx (``upstream`` of their ports, round robin, keep-alive connections to
    them, one worker) so wrk sees one address, as clients see a site's. nginx passes wrk's
    ``X-Real-IP`` on, as a front proxy's would reach the app. PostgreSQL is ``--database
    URL`` (every process of the scenario uses it; bench.py writes messages, sessions and
    counts into it: give it a throwaway database), else a throwaway cluster bench.py makes
    with the installed server programs (``/usr/lib/postgresql/*/bin/initdb``, as the
    ``postgres`` user when run as root; PostgreSQL's default settings, so each commit is
    fsynced as SQLite's are), a fresh database for each row, removed at the end. Without
    either the scenario is skipped, saying why. Needs nginx and wrk.
``upload-20m``
    15 (``--quick``: 5) sequential multipart uploads of a 20 MiB file to ``/upload`` with
    http.client (session and CSRF token fetched first; the body is built once): uploads/s,
    MiB/s, p50/p99 of one upload, and the server's RSS (VmRSS polled every 10 ms, VmHWM) before,
    at the peak and after. After each upload bench.py deletes the stored file and its row in
    the ``uploads`` table (untimed), as an admin would: the site's quotas (20 files or 200 MB
    per session, 5 GB in all) would otherwise answer 429 or 507, and the disk is spared.
``idle-10k``
    10,000 idle keep-alive connections (each sent one ``GET /healthz``) held from this process
    for 8 s: the server's RSS growth per connection and the latency of a request on a new
    connection meanwhile (median and max of 20), server.py (run through a wrapper that sets
    ``KEEPALIVE_TIMEOUT_S`` and ``HEADER_TIMEOUT_S`` to 120 s) against the bare server.
``loop-block``
    p99 of ``GET /robots.txt`` (a static file served from memory) of the site, wrk 50
    connections for 10 s (``--quick``: 3 s, ``--duration`` overrides), alone and while a 20 MiB
    upload runs again and again and 100 contact POSTs per second are sent on schedule (each
    from a new X-Real-IP); runs alternate, medians; the ratio's target is at most 3x.
``workers``
    ``hello`` with ``app.run(..., workers=2)`` against ``workers=1``: wrk -t 1, 100
    connections; the machine's CPUs are shared with wrk. The notes say how many CPUs the
    server's processes kept busy (their CPU time from /proc over the run's length) and the
    req/s per busy CPU: on a machine where wrk takes a share of the CPUs, that figure shows
    how well the workers scale apart from the CPUs left to them. A second case sends 16
    pipelined requests per write: wrk's own cost per request (mostly its send() and recv()
    calls, and the kernel's loopback work charged to them) falls to a fifth, and the
    workers get nearly both CPUs.

``--harness`` starts no server: it feeds requests to server.py's connections in this process
through a stand-in transport (50 connections, wrk's head; ``browser`` sends a browser's 13
fields; ``static`` is the site's 10 KiB file from memory; ``hello-log`` writes the access log
to /dev/null; ``hello-new`` and ``browser-new`` give each head a query string of its own, as
real clients' heads differ) and prints server.py's own cost per request. With ``--instructions`` it runs
itself twice under valgrind (N and 3N requests) and prints the instructions per request:
repeatable to a fraction of a percent on a busy machine, where seconds are not.

The load generator is wrk (``--latency``) when installed. Without it a built-in asyncio
keep-alive client is used and its figures are marked "(client-bound)": it is Python too,
and it shares the CPUs with the server it measures.

Each figure is the median of ``--runs`` runs of ``--duration`` seconds; the servers of a
scenario take turns (A B C A B C ...), after one warm-up second each. The ratio column is
server.py's requests/s divided by the row's (above 1: server.py is faster).
"""

import argparse
import asyncio
import contextlib
import dataclasses
import html
import http.client
import itertools
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER_PY = os.path.join(HERE, 'server.py')
WWW = os.path.join(HERE, 'www')
NGINX = '/usr/sbin/nginx'
PYTHON = sys.executable or 'python3'

SCENARIOS = ('hello', 'pipeline', 'home', 'static-10k', 'static-1m', 'concurrency',
             'contact', 'hosts', 'upload-20m', 'idle-10k', 'loop-block', 'workers')
CONCURRENCY_LEVELS = (1, 50, 1000)
HELLO_BODY = b'Hello, world!'
STATIC_FILES = {'static-10k': ('bench-10k.bin', 10 * 1024), 'static-1m': ('bench-1m.bin', 1024 * 1024)}

STARTUP_TIMEOUT_S = 20.0     # a server must accept connections within this long
STOP_TIMEOUT_S = 12.0        # after SIGTERM (server.py lets requests finish for 10 s), then SIGKILL
REQUEST_TIMEOUT_S = 10.0     # one request of the load generator (wrk --timeout, built-in client)
WARMUP_S = 1                 # unrecorded warm-up of each server before a scenario's runs

UPLOAD_BYTES = 20 * 1024 * 1024   # upload-20m and loop-block: the file of each upload
UPLOAD_COUNT = 15                 # upload-20m: sequential uploads (5 with --quick)
IDLE_CONNECTIONS = 10_000         # idle-10k: keep-alive connections held open
IDLE_PROBES = 20                  # idle-10k: requests on new connections while they are held
IDLE_OPEN_CONCURRENCY = 200       # idle-10k: connections being opened at once
IDLE_OPEN_TIMEOUT_S = 120.0       # idle-10k: all of them must be open within this long
IDLE_KEEPALIVE_S = 120            # idle-10k: server.py's keep-alive and header timeouts
IDLE_HOLD_S = 8                   # idle-10k: held this long after the last one opened (> 5 s default)
LOOP_BLOCK_PATH = '/robots.txt'   # loop-block: the cheap route whose latency is watched
LOOP_BLOCK_CONNECTIONS = 50
LOOP_BLOCK_DURATION_S = 10        # per wrk run (3 with --quick; --duration overrides)
LOOP_BLOCK_TARGET = 3.0           # loop-block: p99 under load at most this many times p99 alone
PACED_RATE = 100                  # loop-block: contact POSTs per second
PACED_MAX_INFLIGHT = 200          # loop-block: POSTs past this many unanswered are dropped (counted)
WORKERS_CONNECTIONS = 100         # workers: wrk -t 1 -c this
PIPELINE_DEPTH = 16               # pipeline and workers: requests per write of the pipelining script
HOSTS_PROCESSES = (1, 2, 3)       # hosts: app processes on PostgreSQL, behind one nginx
HOSTS_KEEPALIVE = 64              # hosts: idle connections to the app processes nginx keeps open
PG_START_TIMEOUT_S = 60.0         # hosts: the throwaway PostgreSQL must answer within this long

# pipeline (and the second workers case): each write carries PIPELINE_DEPTH requests, as in
# the TechEmpower plaintext test; wrk counts each response.
PIPELINE_LUA = '''\
-- bench.py pipeline: wrk arg = how many GET requests each write carries.
function init(args)
    local depth = tonumber(args[1]) or 1
    local requests = {}
    for i = 1, depth do
        requests[i] = wrk.format(nil)
    end
    burst = table.concat(requests)
end

function request()
    return burst
end
'''

# hello (the headline rows): every request a head of its own, as browsers send them: a new
# query string and cookie each time, and the six fields a browser's GET carries. A server
# that recognised repeated bytes would gain nothing here.
BROWSER_LUA = '''\
-- bench.py browser heads: each request a new query string and cookie, a browser's fields.
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("id", threads)
end

local count = 0
function request()
    count = count + 1
    local tag = (id or 0) .. "-" .. count
    return wrk.format("GET", wrk.path .. "?v=" .. tag, {
        ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        ["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        ["Accept-Language"] = "en-US,en;q=0.9",
        ["Accept-Encoding"] = "gzip, deflate, br, zstd",
        ["Cookie"] = "theme=dark; seen=" .. tag,
    })
end
'''

# idle-10k runs the site through this, to hold idle connections longer than the 5 s default.
IDLE_WRAPPER = (
    'import sys; sys.path.insert(0, {here!r}); import server; '
    'server.KEEPALIVE_TIMEOUT_S = {t}; server.HEADER_TIMEOUT_S = {t}; '
    'sys.exit(server.main(sys.argv[1:]))')


# === The bare reference server (python3 bench.py --bare-server PORT) ===

BARE_RESPONSE = (b'HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n'
                 b'Content-Length: %d\r\n\r\n%s' % (len(HELLO_BODY), HELLO_BODY))


class BareProtocol(asyncio.Protocol):
    """Answers every request head (GET only, bodies unsupported) with the same bytes."""

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b''

    def data_received(self, data):
        buffer = self.buffer + data
        count = buffer.count(b'\r\n\r\n')
        if count:
            self.transport.write(BARE_RESPONSE * count)
            buffer = buffer[buffer.rfind(b'\r\n\r\n') + 4:]
        if len(buffer) > 65536:
            self.transport.close()
        self.buffer = buffer


def run_bare_server(port):
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(BareProtocol, '127.0.0.1', port, backlog=1024)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()
    asyncio.run(main())
    return 0


# === The framework app of the hello scenario (written to a temporary script) ===

HELLO_APP = '''\
import sys
if {here!r} not in sys.path:
    sys.path.insert(0, {here!r})
import server


def filler(i):
    async def handler(request, **params):
        return server.Response.text(f'route {{i}}')
    return handler


def make_app(data):
    app = server.App(data=data)
    routes = 0
    for i in range(100):                                  # 100 static routes
        app.get(f'/r{{i}}', name=f'r{{i}}')(filler(i))
        routes += 1
    for i in range(99):                                   # 99 dynamic routes
        app.get(f'/item{{i}}/<int:id>', name=f'item{{i}}')(filler(i))
        routes += 1

    if sys.argv[5:] == ['sync']:
        @app.get('/hello')                                # a plain def: runs in a worker thread
        def hello(request):
            return server.Response.text('Hello, world!')
    else:
        @app.get('/hello')                                # the 200th, registered last
        async def hello(request):
            return server.Response.text('Hello, world!')
    routes += 1
    assert routes == 200, routes
    return app


if __name__ == '__main__':
    port, access_log, data = int(sys.argv[1]), sys.argv[2] == 'on', sys.argv[3]
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 1     # argv[5] 'sync': a plain def
    make_app(data).run(host='127.0.0.1', port=port, access_log=access_log, workers=workers)
'''


def make_web_root(tmp):
    """A copy of www/ plus the two benchmark files, under ``tmp``."""
    root = os.path.join(tmp, 'www')
    shutil.copytree(WWW, root)
    for name, size in STATIC_FILES.values():
        with open(os.path.join(root, name), 'wb') as f:
            f.write(os.urandom(size))
    return root


# === Servers: a subprocess on a free port, waited for, and always stopped ===

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class ServerError(Exception):
    pass


class Server:
    """One server under test. ``command(port)`` gives its argv (or a shell string)."""

    def __init__(self, label, command, workdir, *, cwd=None, shell=False, popen=None):
        self.label = label
        self.command = command
        self.workdir = workdir
        self.cwd = cwd
        self.shell = shell
        self.popen = popen or {}     # more arguments of Popen (user=, group=: PostgreSQL's)
        self.stop_signal = signal.SIGTERM
        self.port = None
        self.proc = None
        self.log_path = os.path.join(workdir, re.sub(r'[^A-Za-z0-9]+', '-', label).strip('-') + '.log')
        self.argv = None
        self.failure = None          # why it cannot be measured any more, or None
        self.data = None             # the site's data folder, where it is the site on SQLite

    def start(self):
        self.port = free_port()
        self.argv = self.command(self.port)
        with open(self.log_path, 'ab') as log:
            # stdout to /dev/null (the access log, banners), stderr kept for diagnostics.
            # A session of its own, so stop() reaches its children (nginx workers, shells).
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, shell=self.shell,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=log, start_new_session=True, **self.popen)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f'{self.label} exited with status {self.proc.returncode} '
                                  f'before listening:\n{self.log_tail()}')
            try:
                with socket.create_connection(('127.0.0.1', self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise ServerError(f'{self.label} did not accept connections on port '
                                      f'{self.port} within {STARTUP_TIMEOUT_S:.0f} s:\n{self.log_tail()}')
                time.sleep(0.05)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_group(proc, self.stop_signal)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f'  {self.label} ignored {self.stop_signal.name} for {STOP_TIMEOUT_S:.0f} s: killing it')
                self._signal_group(proc, signal.SIGKILL)
                proc.wait(5)
        # Children left in the group (workers of a crashed master, a compare command's
        # server behind a shell) are ours too.
        self._signal_group(proc, signal.SIGKILL)

    @staticmethod
    def _signal_group(proc, sig):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines=15):
        try:
            with open(self.log_path, 'rb') as f:
                text = f.read()[-8192:].decode('utf-8', 'replace')
        except OSError:
            return '    (no log)'
        tail = text.strip().splitlines()[-lines:]
        return '\n'.join('    ' + line for line in tail) or '    (empty log)'

    def describe(self):
        return self.argv if isinstance(self.argv, str) else shlex.join(self.argv)

    def count_messages(self, message):
        """How many contact messages with this text the site stores (the site on SQLite)."""
        return sqlite_messages(os.path.join(self.data, 'app.db'), message)


# === Load generators ===

@dataclasses.dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    server_cpus: float = None   # CPUs the server's processes kept busy (track_cpu cases)


_TIME_UNITS_MS = {'us': 1e-3, 'ms': 1.0, 's': 1e3, 'm': 60e3, 'h': 3600e3}


def parse_wrk(text):
    """A Result from wrk's output (run with --latency). Raises ValueError if it is not there."""
    def number(pattern):
        m = re.search(pattern, text, re.M)
        return m.groups() if m else None

    rps = number(r'^Requests/sec:\s+([\d.]+)')
    total = number(r'^\s*(\d+) requests in ')
    if rps is None or total is None:
        raise ValueError('no "Requests/sec" or "requests in" line in the wrk output')
    percentiles = {}
    for pct, value, unit in re.findall(r'^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$', text, re.M):
        percentiles[float(pct)] = float(value) * _TIME_UNITS_MS[unit]
    if 50.0 not in percentiles or 99.0 not in percentiles:
        raise ValueError('no latency distribution in the wrk output (was --latency given?)')
    errors = 0
    socket_errors = number(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)')
    if socket_errors:
        errors += sum(int(n) for n in socket_errors)
    non_2xx = number(r'Non-2xx or 3xx responses: (\d+)')
    if non_2xx:
        errors += int(non_2xx[0])
    return Result(float(rps[0]), percentiles[50.0], percentiles[99.0], errors, int(total[0]))


class Wrk:
    client_bound = False

    def __init__(self, path):
        self.path = path
        out = subprocess.run([path, '-v'], capture_output=True, text=True, timeout=10)
        first = (out.stdout + out.stderr).strip().splitlines()
        self.version = first[0].split(' Copyright')[0] if first else 'wrk (unknown version)'

    def describe(self):
        return (f'{self.version}: -t 2 (-t 1 for 1 connection and for workers), --latency, '
                f'--timeout {REQUEST_TIMEOUT_S:.0f}s')

    def run(self, url, connections, duration, threads=None, script=None, script_args=()):
        threads = threads or min(2, connections)
        argv = [self.path, '-t', str(threads), '-c', str(connections), '-d', f'{duration}s',
                '--latency', '--timeout', f'{REQUEST_TIMEOUT_S:.0f}s']
        if script:
            argv += ['-s', script]
        argv.append(url)
        if script_args:
            argv += ['--'] + [str(a) for a in script_args]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        if out.returncode != 0:
            raise RuntimeError(f'wrk exited with {out.returncode}: {out.stderr.strip() or out.stdout.strip()}')
        try:
            return parse_wrk(out.stdout)
        except ValueError as exc:
            raise RuntimeError(f'{exc}:\n{out.stdout}{out.stderr}') from None


class BuiltinClient:
    """N keep-alive connections, each sending GET requests back to back (no pipelining)."""

    client_bound = True
    version = 'built-in asyncio client'

    def describe(self):
        return ('built-in asyncio keep-alive client (wrk is not installed): '
                'figures are client-bound')

    def run(self, url, connections, duration, threads=None, script=None, script_args=()):
        if script:
            raise RuntimeError('this scenario needs wrk (a Lua script)')
        m = re.fullmatch(r'http://([^/:]+):(\d+)(/.*)', url)
        host, port, path = m.group(1), int(m.group(2)), m.group(3)
        request = (f'GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n'
                   f'User-Agent: bench.py\r\n\r\n').encode('ascii')
        return asyncio.run(self._run(host, port, request, connections, duration))

    async def _run(self, host, port, request, connections, duration):
        latencies, errors = [], [0]
        start = time.perf_counter()
        deadline = start + duration
        tasks = [asyncio.ensure_future(self._connection(host, port, request, deadline, latencies, errors))
                 for _ in range(connections)]
        done, pending = await asyncio.wait(tasks, timeout=duration + REQUEST_TIMEOUT_S + 5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                errors[0] += 1
        latencies.sort()
        n = len(latencies)

        def pct(p):
            return latencies[min(n - 1, int(p / 100 * n))] * 1e3 if n else 0.0
        return Result(n / duration, pct(50), pct(99), errors[0], n)

    async def _connection(self, host, port, request, deadline, latencies, errors):
        reader = writer = None
        try:
            while time.perf_counter() < deadline:
                try:
                    if writer is None:
                        reader, writer = await asyncio.wait_for(
                            asyncio.open_connection(host, port, limit=1 << 20), REQUEST_TIMEOUT_S)
                    t0 = time.perf_counter()
                    writer.write(request)
                    status, keep_alive = await asyncio.wait_for(self._response(reader), REQUEST_TIMEOUT_S)
                    t1 = time.perf_counter()
                    if t1 <= deadline:
                        latencies.append(t1 - t0)
                        if not 200 <= status < 400:
                            errors[0] += 1
                    if not keep_alive:
                        writer.close()
                        reader = writer = None
                except (OSError, EOFError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                        asyncio.LimitOverrunError):
                    errors[0] += 1
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                    await asyncio.sleep(0.01)
        finally:
            if writer is not None:
                writer.close()

    @staticmethod
    async def _response(reader):
        """Read one response; (status, whether the connection stays open)."""
        head = await reader.readuntil(b'\r\n\r\n')
        lines = head.decode('latin-1').split('\r\n')
        version, status = lines[0].split(' ', 2)[:2]
        headers = {}
        for line in lines[1:]:
            if ':' in line:
                name, value = line.split(':', 1)
                headers[name.strip().lower()] = value.strip().lower()
        connection = headers.get('connection', '')
        keep_alive = 'keep-alive' in connection if version == 'HTTP/1.0' else 'close' not in connection
        if 'chunked' in headers.get('transfer-encoding', ''):
            while True:
                size = int((await reader.readuntil(b'\r\n')).split(b';')[0], 16)
                if size == 0:
                    while await reader.readuntil(b'\r\n') != b'\r\n':   # trailers
                        pass
                    break
                await reader.readexactly(size + 2)
        elif 'content-length' in headers:
            await reader.readexactly(int(headers['content-length']))
        else:
            while await reader.read(1 << 16):
                pass
            keep_alive = False
        return int(status), keep_alive


# === Scenarios: which servers, which URL, how many connections ===

@dataclasses.dataclass
class Entry:
    label: str           # the row's name in the table
    server_key: str      # which Server runs it
    subject: bool = False


@dataclasses.dataclass
class Case:
    scenario: str
    path: str
    connections: int
    entries: list
    expect_body: bytes = None
    expect_length: int = None
    title: str = None          # the heading of its section of the log (default: GET path)
    threads: int = None        # wrk -t (default 2, 1 for 1 connection)
    prepare: object = None     # prepare(bench, case, srv) -> problem or None, instead of check()
    wrk_options: object = None  # wrk_options(bench, case, srv) -> dict(script=, script_args=)
    after_run: object = None   # after_run(bench, case, srv, result or None): bookkeeping
    finish: object = None      # finish(bench, case, srv) -> note for the table, after the runs
    note: str = ''             # the notes column of every row of the case
    state: dict = dataclasses.field(default_factory=dict)   # what prepare, after_run and finish keep
    track_cpu: bool = False    # also measure the CPU time the server's processes used
    latency: bool = True       # False: wrk's latencies mean nothing here (pipelined requests)
    results: dict = dataclasses.field(default_factory=dict)    # label -> [Result]
    failures: dict = dataclasses.field(default_factory=dict)   # label -> reason
    notes: dict = dataclasses.field(default_factory=dict)      # label -> note


@dataclasses.dataclass
class CustomCase:
    """A scenario that measures something else than one wrk run per server (uploads, idle
    connections, ...): ``run(bench, case)`` appends finished table rows to ``rows``."""
    scenario: str
    run: object
    entries: list = dataclasses.field(default_factory=list)   # none: it starts its own servers
    rows: list = dataclasses.field(default_factory=list)


def browser_wrk_options(bench, case, srv):
    script = os.path.join(bench.tmp, 'browser.lua')
    if not os.path.exists(script):
        with open(script, 'w') as f:
            f.write(BROWSER_LUA)
    return {'script': script}


def hello_cases(args):
    entries = [Entry('server.py', 'hello', subject=True),
               Entry('server.py, plain def', 'hello-sync'),
               Entry('server.py, access log on', 'hello-log'),
               Entry('bare asyncio.Protocol', 'bare')]
    entries += [Entry(f'compare {i}', f'compare-{i}') for i in range(1, len(args.compare) + 1)]
    same = [Entry('server.py', 'hello', subject=True)]
    same += [Entry(f'compare {i}', f'compare-{i}') for i in range(1, len(args.compare) + 1)]
    return [Case('hello', '/hello', args.connections, entries, expect_body=HELLO_BODY,
                 title='GET /hello, browser heads, each one new', wrk_options=browser_wrk_options,
                 note='browser heads, each new'),
            Case('hello', '/hello', args.connections, same, expect_body=HELLO_BODY,
                 title='GET /hello, the same bare head every time', note='identical heads')]


def pipeline_wrk_options(bench, case, srv):
    script = os.path.join(bench.tmp, 'pipeline.lua')
    if not os.path.exists(script):
        with open(script, 'w') as f:
            f.write(PIPELINE_LUA)
    return {'script': script, 'script_args': (PIPELINE_DEPTH,)}


def pipeline_cases(args):
    entries = [Entry('server.py', 'hello', subject=True), Entry('bare asyncio.Protocol', 'bare')]
    entries += [Entry(f'compare {i}', f'compare-{i}') for i in range(1, len(args.compare) + 1)]
    return [Case('pipeline', '/hello', args.connections, entries, expect_body=HELLO_BODY,
                 title=f'GET /hello, {PIPELINE_DEPTH} requests per write', wrk_options=pipeline_wrk_options,
                 latency=False, note=f'{PIPELINE_DEPTH} pipelined requests per write')]


def home_cases(args):
    return [Case('home', '/', args.connections, [Entry('server.py', 'home', subject=True)])]


def static_cases(args, scenario):
    name, size = STATIC_FILES[scenario]
    entries = [Entry('server.py', 'static', subject=True), Entry('http.server', 'http.server')]
    if os.path.exists(NGINX):
        entries.append(Entry('nginx', 'nginx'))
    return [Case(scenario, '/' + name, args.connections, entries, expect_length=size)]


def concurrency_cases(args):
    return [Case('concurrency', '/hello', c,
                 [Entry('server.py', 'hello', subject=True), Entry('bare asyncio.Protocol', 'bare')],
                 expect_body=HELLO_BODY)
            for c in CONCURRENCY_LEVELS]


def build_cases(args):
    cases = []
    for scenario in args.scenarios:
        if scenario == 'hello':
            cases += hello_cases(args)
        elif scenario == 'pipeline':
            cases += pipeline_cases(args)
        elif scenario == 'home':
            cases += home_cases(args)
        elif scenario.startswith('static-'):
            cases += static_cases(args, scenario)
        elif scenario == 'concurrency':
            cases += concurrency_cases(args)
        elif scenario == 'contact':
            cases += contact_cases(args)
        elif scenario == 'workers':
            cases += workers_cases(args)
        elif scenario == 'hosts':
            cases += hosts_cases(args)
        else:
            cases += custom_cases(args, scenario)
    return cases


class Bench:
    """Owns the temporary directory and the servers; runs the cases."""

    def __init__(self, args, client, tmp):
        self.args = args
        self.client = client
        self.tmp = tmp
        self.servers = {}
        self.root = None
        self.nginx_version = None
        self.upload_payload = None     # (boundary, head, 20 MiB, tail) of the upload scenarios
        self.postgres = None           # the hosts scenario's PostgreSQL, started on first use

    # -- setup of what the servers need --
    def web_root(self):
        if self.root is None:
            self.root = make_web_root(self.tmp)
        return self.root

    def data_dir(self, name):
        path = os.path.join(self.tmp, 'data-' + name)
        os.makedirs(path, exist_ok=True)
        return path

    def nginx_command(self, port):
        prefix = os.path.join(self.tmp, 'nginx')
        os.makedirs(prefix, exist_ok=True)
        # nginx started as root runs its worker as nobody, which must reach the web root.
        os.chmod(self.tmp, 0o755)
        temp_paths = ''.join(f'    {kind}_temp_path {prefix}/{kind}_temp;\n'
                             for kind in ('client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'))
        conf = (f'daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n'
                f'error_log {prefix}/error.log;\n'
                f'events {{ worker_connections 4096; }}\n'
                f'http {{\n    access_log off;\n    sendfile on;\n'
                f'    keepalive_requests 1000000;\n    default_type application/octet-stream;\n'
                f'{temp_paths}'
                f'    server {{ listen 127.0.0.1:{port}; root {self.web_root()}; }}\n}}\n')
        path = os.path.join(prefix, 'nginx.conf')
        with open(path, 'w') as f:
            f.write(conf)
        # -e (1.19.5+) keeps nginx from opening the default error log before reading the conf.
        return [NGINX, '-e', f'{prefix}/error.log', '-c', path, '-p', prefix]

    def make_server(self, key):
        py, tmp = PYTHON, self.tmp
        if key in ('hello', 'hello-log', 'hello-w2', 'hello-sync'):
            script = os.path.join(tmp, 'hello_app.py')
            if not os.path.exists(script):
                with open(script, 'w') as f:
                    f.write(HELLO_APP.format(here=HERE))
            access = 'on' if key == 'hello-log' else 'off'
            workers = '2' if key == 'hello-w2' else '1'
            kind = 'sync' if key == 'hello-sync' else 'async'
            data = self.data_dir(key)
            label = ('server.py hello' + (' (access log)' if access == 'on' else '')
                     + (' (plain def)' if kind == 'sync' else '')
                     + (f' (workers={workers})' if workers != '1' else ''))
            return Server(label, lambda port: [py, script, str(port), access, data, workers, kind], tmp, cwd=tmp)
        if key in ('bare', 'bare-idle'):
            return Server('bare asyncio.Protocol',
                          lambda port: [py, os.path.abspath(__file__), '--bare-server', str(port)], tmp, cwd=tmp)
        if key in ('site-contact', 'site-upload', 'site-loop', 'hosts-sqlite'):
            data = self.data_dir(key)
            srv = Server(f'server.py site ({key})',
                         lambda port: [py, SERVER_PY, '--port', str(port), '--data', data, '--no-access-log'],
                         tmp, cwd=HERE)
            srv.data = data
            return srv
        if key.startswith('hosts-'):
            return hosts_server(self, key)
        if key == 'site-idle':
            data = self.data_dir(key)
            code = IDLE_WRAPPER.format(here=HERE, t=IDLE_KEEPALIVE_S)
            return Server('server.py site (idle-10k wrapper)',
                          lambda port: [py, '-c', code, '--port', str(port), '--data', data, '--no-access-log'],
                          tmp, cwd=HERE)
        if key == 'home':
            data = self.data_dir('home')
            return Server('server.py home', lambda port: [py, SERVER_PY, '--port', str(port), '--data', data,
                                                          '--no-access-log'], tmp, cwd=HERE)
        if key == 'static':
            root, data = self.web_root(), self.data_dir('static')
            return Server('server.py static', lambda port: [py, SERVER_PY, '--port', str(port), '--root', root,
                                                            '--data', data, '--no-access-log'], tmp, cwd=HERE)
        if key == 'http.server':
            root = self.web_root()
            return Server('http.server', lambda port: [py, '-m', 'http.server', '--bind', '127.0.0.1',
                                                       str(port), '--directory', root], tmp, cwd=tmp)
        if key == 'nginx':
            return Server('nginx', self.nginx_command, tmp, cwd=tmp)
        if key.startswith('compare-'):
            template = self.args.compare[int(key.split('-')[1]) - 1]
            return Server(key, lambda port: template.replace('{port}', str(port)), tmp, shell=True)
        raise KeyError(key)

    def server(self, key):
        """The running server for ``key``, started on first use (None if it cannot start)."""
        srv = self.servers.get(key)
        if srv is None:
            srv = self.servers[key] = self.make_server(key)
            try:
                srv.start()
                print(f'  started {srv.label} on port {srv.port}: {srv.describe()}')
            except ServerError as exc:
                srv.failure = 'did not start'
                print(f'  ERROR: {exc}')
                srv.stop()
        return srv

    def stop_all(self, keep=()):
        for key, srv in list(self.servers.items()):
            if key not in keep:
                srv.stop()
                del self.servers[key]

    # -- measuring --
    def check(self, case, srv):
        """One request with http.client: is the answer what the scenario expects?"""
        conn = http.client.HTTPConnection('127.0.0.1', srv.port, timeout=REQUEST_TIMEOUT_S)
        try:
            conn.request('GET', case.path)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            return f'GET {case.path} failed: {exc!r}'
        finally:
            conn.close()
        if resp.status != 200:
            return f'GET {case.path} answered {resp.status} {resp.reason}'
        if case.expect_body is not None and body != case.expect_body:
            return f'GET {case.path} answered {body[:60]!r}, not {case.expect_body!r}'
        if case.expect_length is not None and len(body) != case.expect_length:
            return f'GET {case.path} answered {len(body)} bytes, not {case.expect_length}'
        return None

    def measure(self, case, entry, duration, record=True):
        srv = self.servers[entry.server_key]
        url = f'http://127.0.0.1:{srv.port}{case.path}'
        error = result = None
        cpu_before = session_cpu_seconds(srv.proc.pid) if case.track_cpu and srv.proc else None
        try:
            options = case.wrk_options(self, case, srv) if case.wrk_options else {}
            result = self.client.run(url, case.connections, duration, threads=case.threads, **options)
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            error = exc
        if cpu_before is not None and result is not None:
            cpu_after = session_cpu_seconds(srv.proc.pid)
            if cpu_after is not None:
                result.server_cpus = (cpu_after - cpu_before) / duration
        if case.after_run:
            case.after_run(self, case, srv, result)
        if not srv.alive():
            srv.failure = f'crashed (exit status {srv.proc.returncode})'
            case.failures[entry.label] = srv.failure
            print(f'  ERROR: {srv.label} {srv.failure} during the run:\n{srv.log_tail()}')
            return
        if error is not None:
            case.failures[entry.label] = f'load generator failed: {error}'
            print(f'  ERROR {entry.label}: {error}')
            return
        if record:
            case.results.setdefault(entry.label, []).append(result)
        return result

    def run_case(self, case, later_keys):
        print(f'\n== {case.scenario}: {case.title or "GET " + case.path}, {case.connections} connection'
              f'{"s" if case.connections != 1 else ""} ==')
        live = []
        for entry in case.entries:
            srv = self.server(entry.server_key)
            if srv.failure:
                case.failures[entry.label] = srv.failure
                continue
            problem = case.prepare(self, case, srv) if case.prepare else self.check(case, srv)
            if problem:
                case.failures[entry.label] = problem
                print(f'  ERROR {entry.label}: {problem}')
                continue
            live.append(entry)
        for entry in live:                                   # warm-up, not recorded
            self.measure(case, entry, WARMUP_S, record=False)
        for run in range(1, self.args.runs + 1):             # interleaved: A B C A B C ...
            for entry in live:
                if entry.label in case.failures:
                    continue
                result = self.measure(case, entry, self.args.duration)
                if result is not None:
                    p50, p99 = (fmt_ms(result.p50_ms), fmt_ms(result.p99_ms)) if case.latency else ('—', '—')
                    print(f'  run {run}/{self.args.runs}  {entry.label:<26} {result.rps:>10,.0f} req/s'
                          f'  p50 {p50:>9}  p99 {p99:>9}'
                          f'  errors {result.errors}  ({result.requests:,} requests)')
        if case.finish:
            for entry in live:
                srv = self.servers[entry.server_key]
                note = case.finish(self, case, srv)
                if note:
                    case.notes[entry.label] = note
                    print(f'  {entry.label}: {note}')
        self.stop_all(keep=later_keys)

    def run_custom(self, case, later_keys):
        print(f'\n== {case.scenario} ==')
        try:
            case.run(self, case)
        except (ServerError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f'  ERROR {case.scenario}: {exc}')
            case.rows.append(row(case.scenario, '', '', 'failed: ' + str(exc).splitlines()[0][:60]))
        finally:
            self.stop_all(keep=later_keys)


# === The site scenarios: contact, upload-20m, idle-10k, loop-block, workers ===

def site_session(port, path):
    """GET ``path`` of the site: (its ``sid`` cookie, the form's csrf_token)."""
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request('GET', path)
        resp = conn.getresponse()
        body = resp.read().decode('utf-8', 'replace')
        cookies = resp.headers.get_all('Set-Cookie') or []
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f'GET {path} answered {resp.status} {resp.reason}')
    m = re.search(r'name="csrf_token" value="([^"]*)"', body)
    sid = next((c.split(';')[0].split('=', 1)[1] for c in cookies if c.startswith('sid=')), None)
    if not m or not sid:
        raise RuntimeError(f'GET {path}: no csrf_token field or no sid cookie')
    return sid, html.unescape(m.group(1))


CONTACT_MESSAGE = 'Hello from bench.py: a contact message of a load test.'


def contact_body(token, message=CONTACT_MESSAGE):
    return urllib.parse.urlencode({'name': 'Bench Mark', 'email': 'bench@example.com',
                                   'message': message, 'csrf_token': token})


def ip_for(n):
    """The n-th client address of a load test: 10.x.y.z (the site rate-limits per address)."""
    n %= 1 << 24
    return f'10.{n >> 16}.{(n >> 8) & 255}.{n & 255}'


def contact_post(port, sid, token, ip, message=CONTACT_MESSAGE):
    """One contact POST with http.client: its status."""
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request('POST', '/contact', body=contact_body(token, message),
                     headers={'Content-Type': 'application/x-www-form-urlencoded',
                              'Cookie': f'sid={sid}', 'X-Real-IP': ip})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


CONTACT_LUA = '''\
-- bench.py contact: POST /contact, a new X-Real-IP (10.x.y.z) per request.
-- wrk args: the first address number, the number of wrk threads.
local next_id = 0
function setup(thread)
    thread:set("id", next_id)
    next_id = next_id + 1
end

local count, offset, stride = 0, 0, 1
local headers = {{
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Cookie"] = "sid={sid}",
}}
local body = "{body}"

function init(args)
    offset = tonumber(args[1]) or 0
    stride = tonumber(args[2]) or 1
end

function request()
    local n = (offset + count * stride + id) % 16777216
    count = count + 1
    headers["X-Real-IP"] = string.format("10.%d.%d.%d", math.floor(n / 65536), math.floor(n / 256) % 256, n % 256)
    return wrk.format("POST", "/contact", headers, body)
end
'''


@dataclasses.dataclass
class ContactRun:
    """What the contact scenario keeps for one server: its wrk script, the text of its
    messages (its own, so they can be counted in a database other servers write to), and
    the responses wrk counted."""
    script: str
    message: str
    sent: int = 0


def contact_first_ip(bench):
    """The first client address number of a contact case. On a database of the caller's
    (--database), one a second run, minutes later, would not have used: its rate limit
    remembers the addresses of the last 10 minutes."""
    return int(time.time()) * 4096 % (1 << 24) if bench.args.database else 0


def sqlite_messages(path, message):
    """How many messages with this text the SQLite database at ``path`` holds (read-only)."""
    conn = sqlite3.connect(f'file:{path}?mode=ro', uri=True, timeout=5)
    try:
        return conn.execute('SELECT COUNT(*) FROM messages WHERE body = ?', (message,)).fetchone()[0]
    finally:
        conn.close()


def contact_prepare(bench, case, srv):
    # Every server of the case takes addresses from one sequence: servers that share a
    # database share its rate limit.
    case.state.setdefault('next_ip', contact_first_ip(bench))
    message = f'{CONTACT_MESSAGE} ({srv.label}, port {srv.port}, {os.urandom(4).hex()})'
    try:
        sid, token = site_session(srv.port, '/contact')
        status = contact_post(srv.port, sid, token, ip_for(case.state['next_ip']), message)
        case.state['next_ip'] += 1
    except (RuntimeError, OSError, http.client.HTTPException, sqlite3.Error) as exc:
        return f'contact setup failed: {exc}'
    if status != 303:
        return f'POST /contact answered {status}, not 303'
    body = contact_body(token, message)
    if re.search(r'["\\\n]', body + sid):
        return 'the form body or cookie cannot be put in a Lua string'
    script = os.path.join(bench.tmp, f'contact-{srv.port}.lua')
    with open(script, 'w') as f:
        f.write(CONTACT_LUA.format(sid=sid, body=body))
    case.state[srv.label] = ContactRun(script, message)
    return None


def contact_wrk_options(bench, case, srv):
    case.state['threads'] = min(2, case.connections)
    return {'script': case.state[srv.label].script,
            'script_args': (case.state['next_ip'], case.state['threads'])}


def contact_after_run(bench, case, srv, result):
    # Addresses used: at most (completed + in flight) * threads past the offset. Each address
    # may send 5 messages, so a generous bound is enough; an unknown count skips far ahead.
    if result is None:
        case.state['next_ip'] += 1 << 20
    else:
        case.state[srv.label].sent += result.requests
        case.state['next_ip'] += (result.requests + case.connections + 16) * case.state['threads']


def contact_finish(bench, case, srv):
    run = case.state[srv.label]
    try:
        stored = srv.count_messages(run.message)
    except (RuntimeError, OSError, sqlite3.Error) as exc:
        return f'could not count the stored messages: {exc}'
    missing = run.sent + 1 - stored
    return (f'{stored:,} messages stored, wrk counted {run.sent:,} responses incl. warm-up'
            + (f' ({-missing} more stored: the check POST, and requests in flight when wrk stopped)'
               if missing <= 0 else f' (MISSING {missing} messages)'))


def contact_cases(args):
    return [Case('contact', '/contact', args.connections, [Entry('server.py site', 'site-contact', subject=True)],
                 title='POST /contact (urlencoded, CSRF, SQLite insert with synchronous=FULL, 303), '
                       'X-Real-IP 10.x.y.z per request',
                 prepare=contact_prepare, wrk_options=contact_wrk_options, after_run=contact_after_run,
                 finish=contact_finish, note='303 counted as success')]


def workers_cases(args):
    cpus = os.cpu_count() or 0
    entries = [Entry('server.py hello, workers=2', 'hello-w2', subject=True),
               Entry('server.py hello, workers=1', 'hello')]
    note = f'one load-generator thread (wrk -t 1); ratio = workers=2 ÷ workers=1; {cpus} CPUs shared with wrk'
    # The second case leaves the workers more of the CPUs: wrk's cost per request is mostly
    # its send() and recv() calls, and 16 requests per write take a fifth of its CPU time.
    return [Case('workers', '/hello', WORKERS_CONNECTIONS, entries, expect_body=HELLO_BODY,
                 threads=1, track_cpu=True, finish=cpu_note, note=note),
            Case('workers, pipelined', '/hello', WORKERS_CONNECTIONS, entries, expect_body=HELLO_BODY,
                 threads=1, track_cpu=True, finish=cpu_note, wrk_options=pipeline_wrk_options, latency=False,
                 title=f'GET /hello, {PIPELINE_DEPTH} requests per write',
                 note=note + f'; {PIPELINE_DEPTH} pipelined requests per write')]


def cpu_note(bench, case, srv):
    """How many CPUs the server's processes kept busy, and req/s per busy CPU (medians)."""
    label = next(e.label for e in case.entries if bench.servers.get(e.server_key) is srv)
    runs = case.results.get(label) or []
    busy = [r.server_cpus for r in runs if r.server_cpus]
    if not busy:
        return None
    cpus = statistics.median(busy)
    per_cpu = statistics.median(r.rps / r.server_cpus for r in runs if r.server_cpus)
    return f'server busy {cpus:.2f} CPUs: {per_cpu:,.0f} req/s per CPU'


def session_cpu_seconds(pid):
    """User + system CPU seconds of every live process in ``pid``'s session (Linux /proc)."""
    ticks = os.sysconf('SC_CLK_TCK')
    try:
        sid = os.getsid(pid)
    except OSError:
        return None
    total = 0
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open(f'/proc/{name}/stat') as f:
                fields = f.read().rpartition(')')[2].split()
        except OSError:
            continue
        # After the command: state ppid pgrp session ... utime (12th) stime (13th).
        if int(fields[3]) == sid:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


# -- memory of a process --

def proc_status_kib(pid, field):
    """VmRSS, VmHWM, ... of a process from /proc/PID/status, in KiB (None if unreadable)."""
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class RssPoller(threading.Thread):
    """Polls a process's VmRSS every 10 ms until stopped; ``peak`` is the highest seen."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = proc_status_kib(pid, 'VmRSS') or 0
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.wait(0.01):
            rss = proc_status_kib(self.pid, 'VmRSS')
            if rss is not None and rss > self.peak:
                self.peak = rss

    def stop(self):
        self.stopped.set()
        self.join(5)
        return self.peak


def fmt_kib(kib):
    return f'{kib / 1024:,.1f} MiB' if abs(kib) >= 10 * 1024 else f'{kib:,} KiB'


def percentile(values, p):
    """Nearest-rank percentile of a list of numbers (None for none)."""
    if not values:
        return None
    values = sorted(values)
    return values[max(0, min(len(values) - 1, -(-len(values) * p // 100) - 1))]


# -- uploads --

class Uploader:
    """Sequential multipart uploads of one in-memory body to the site's /upload."""

    def __init__(self, port, sid, token, body, boundary, data_dir):
        self.port = port
        self.body = body
        self.headers = {'Content-Type': f'multipart/form-data; boundary={boundary}',
                        'Cookie': f'sid={sid}'}
        self.upload_dir = os.path.join(data_dir, 'uploads')
        self.db = os.path.join(data_dir, 'app.db')
        self.conn = None
        self.verified = False

    def upload(self):
        """One upload: (status, seconds). What it stored is removed after it (see remove_stored)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=60)
        t0 = time.perf_counter()
        try:
            self.conn.request('POST', '/upload', body=self.body, headers=self.headers)
            resp = self.conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        elapsed = time.perf_counter() - t0
        if resp.will_close:
            self.close()
        if resp.status == 303 and not self.verified:
            self.verify(resp.getheader('Location', ''))
        self.remove_stored()
        return resp.status, elapsed

    def verify(self, location):
        """The first upload answered 303: was it stored whole?"""
        stored = [os.path.getsize(os.path.join(self.upload_dir, n)) for n in os.listdir(self.upload_dir)
                  if not n.startswith('.')]
        expected = len(self.body) - self.body.index(b'\r\n\r\n', self.body.index(b'name="file"')) - 4
        expected -= len(self.body) - self.body.rindex(b'\r\n--')
        if location != '/upload?done=1' or stored != [expected]:
            raise RuntimeError(f'upload answered 303 to {location!r} but stored files of {stored} bytes, '
                               f'not one of {expected}')
        self.verified = True

    def remove_stored(self):
        """Delete the stored file and its row, as an admin would: the site allows 20 files or
        200 MB per session and 5 GB in all (then 429, 507), and the disk is spared."""
        # Only one upload of ours is ever in flight, and it is answered: its file is stored.
        names = [n for n in os.listdir(self.upload_dir) if not n.startswith('.')]
        if not names:
            return
        conn = sqlite3.connect(self.db, timeout=10)
        try:
            conn.execute('PRAGMA synchronous = OFF')      # this connection's commits only
            with conn:
                conn.executemany('DELETE FROM uploads WHERE stored = ?', [(n,) for n in names])
        finally:
            conn.close()
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.upload_dir, name))

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def upload_body(bench, token):
    """The multipart body (csrf_token, then a 20 MiB file of random bytes), built once."""
    if bench.upload_payload is None:
        boundary = 'bench-' + os.urandom(12).hex()
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{{token}}\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="bench-20m.bin"\r\n'
                f'Content-Type: application/octet-stream\r\n\r\n')
        tail = f'\r\n--{boundary}--\r\n'.encode('ascii')
        bench.upload_payload = (boundary, head, os.urandom(UPLOAD_BYTES), tail)
    boundary, head, data, tail = bench.upload_payload
    return head.replace('{token}', token).encode('ascii') + data + tail, boundary


def make_uploader(bench, srv, key):
    sid, token = site_session(srv.port, '/upload')
    body, boundary = upload_body(bench, token)
    return Uploader(srv.port, sid, token, body, boundary, bench.data_dir(key))


def run_upload(bench, case):
    count = 5 if bench.args.quick else UPLOAD_COUNT
    srv = bench.server('site-upload')
    if srv.failure:
        raise ServerError(f'server.py site {srv.failure}')
    uploader = make_uploader(bench, srv, 'site-upload')
    pid = srv.proc.pid
    rss_before, hwm_before = proc_status_kib(pid, 'VmRSS'), proc_status_kib(pid, 'VmHWM')
    poller = RssPoller(pid)
    poller.start()
    times, errors, statuses = [], 0, {}
    started = time.perf_counter()
    try:
        for i in range(count):
            try:
                status, elapsed = uploader.upload()
            except (OSError, http.client.HTTPException, sqlite3.Error) as exc:
                errors += 1
                print(f'  upload {i + 1}/{count}: failed: {exc!r}')
                if not srv.alive():
                    break
                continue
            statuses[status] = statuses.get(status, 0) + 1
            if status == 303:
                times.append(elapsed)
            else:
                errors += 1
            print(f'  upload {i + 1}/{count}: {status} in {fmt_ms(elapsed * 1e3)}')
    finally:
        wall = time.perf_counter() - started
        peak = poller.stop()
        uploader.close()
    rss_after, hwm_after = proc_status_kib(pid, 'VmRSS'), proc_status_kib(pid, 'VmHWM')
    if not srv.alive():
        raise ServerError(f'server.py site crashed (exit status {srv.proc.returncode}):\n{srv.log_tail()}')
    mib = UPLOAD_BYTES / (1 << 20)
    rate = len(times) / wall if wall else 0.0
    status_text = ', '.join(f'{n}× {s}' for s, n in sorted(statuses.items()))
    note = (f'{rate * mib:,.1f} MiB/s; {count} sequential uploads of {mib:.0f} MiB ({status_text}); '
            f'server RSS {fmt_kib(rss_before)} → peak {fmt_kib(peak)} (+{fmt_kib(peak - rss_before)}), '
            f'after {fmt_kib(rss_after)}; VmHWM {fmt_kib(hwm_before)} → {fmt_kib(hwm_after)}')
    print(f'  {rate:.2f} uploads/s; {note}')
    case.rows.append(row('upload-20m', 1, 'server.py site', f'{rate:.2f} uploads/s',
                         fmt_ms(statistics.median(times) * 1e3) if times else '',
                         fmt_ms(percentile(times, 99) * 1e3) if times else '', errors, '', '', note))


# -- idle connections --

async def read_response(reader):
    return await BuiltinClient._response(reader)


async def one_request(port, request, timeout=REQUEST_TIMEOUT_S):
    """A new connection, one request, closed: (status, seconds from connect to the last byte)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection('127.0.0.1', port), timeout)
    try:
        writer.write(request)
        status, _ = await asyncio.wait_for(read_response(reader), timeout)
        return status, time.perf_counter() - t0
    finally:
        writer.close()


async def hold_idle(port, count, probes, pid):
    """Open ``count`` keep-alive connections (one GET /healthz each), then time ``probes``
    requests on new connections while they are held. Returns a dict of what happened."""
    request = b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench.py\r\n\r\n'
    held, failures = [], []
    gate = asyncio.Semaphore(IDLE_OPEN_CONCURRENCY)

    async def open_one():
        async with gate:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection('127.0.0.1', port), 20)
                writer.write(request)
                status, keep_alive = await asyncio.wait_for(read_response(reader), 20)
                if status != 200 or not keep_alive:
                    raise ValueError(f'status {status}, keep-alive {keep_alive}')
                held.append((reader, writer))
                writer = None
            except (OSError, ValueError, EOFError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError) as exc:
                failures.append(exc)
            finally:
                if writer is not None:
                    writer.close()

    out = {'failures': failures}
    try:
        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(open_one()) for _ in range(count)]
        done, pending = await asyncio.wait(tasks, timeout=IDLE_OPEN_TIMEOUT_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        opened = time.perf_counter()
        out['open_s'] = opened - t0
        out['held'] = len(held)
        await asyncio.sleep(1.0)                     # let the server settle (reaper, GC)
        latencies, probe_errors = [], 0
        for _ in range(probes):
            try:
                status, seconds = await one_request(port, request)
                if status == 200:
                    latencies.append(seconds)
                else:
                    probe_errors += 1
            except (OSError, ValueError, EOFError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                probe_errors += 1
        out['latencies'], out['probe_errors'] = latencies, probe_errors
        # Held past server.py's default 5 s keep-alive timeout: still open proves the wrapper works.
        await asyncio.sleep(max(0.2, opened + IDLE_HOLD_S - time.perf_counter()))
        out['rss_after'] = proc_status_kib(pid, 'VmRSS')
        out['still_open'] = sum(1 for reader, _ in held if not reader.at_eof())
        out['held_s'] = time.perf_counter() - opened
    finally:
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0)
    return out


def run_idle(bench, case):
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    count = IDLE_CONNECTIONS
    if soft != resource.RLIM_INFINITY and soft < count + 200:
        count = max(100, soft - 200)
        print(f'  RLIMIT_NOFILE is {soft}: holding {count} connections, not {IDLE_CONNECTIONS}')
    results = {}
    for key, label in (('site-idle', 'server.py site (keep-alive 120 s)'), ('bare-idle', 'bare asyncio.Protocol')):
        srv = bench.server(key)
        if srv.failure:
            case.rows.append(row('idle-10k', count, label, f'failed: {srv.failure}'))
            continue
        pid = srv.proc.pid
        for _ in range(5):                                           # warm: imports, first query
            asyncio.run(one_request(srv.port, b'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'))
        time.sleep(0.3)
        rss_before = proc_status_kib(pid, 'VmRSS')
        out = asyncio.run(hold_idle(srv.port, count, IDLE_PROBES, pid))
        rss_after = out['rss_after']
        if not srv.alive():
            case.rows.append(row('idle-10k', count, label, f'failed: crashed (exit {srv.proc.returncode})'))
            print(f'  ERROR: {label} crashed:\n{srv.log_tail()}')
            srv.stop()
            continue
        per_conn = (rss_after - rss_before) / out['held'] if out['held'] and rss_after and rss_before else None
        results[key] = per_conn
        lat = out['latencies']
        errors = len(out['failures']) + out['probe_errors'] + (out['held'] - out['still_open'])
        first_failure = f'; first failure: {out["failures"][0]!r}'[:120] if out['failures'] else ''
        note = (f'RSS {fmt_kib(rss_before)} → {fmt_kib(rss_after)}: '
                + (f'{per_conn:.1f} KiB/conn' if per_conn is not None else '? KiB/conn')
                + f'; {out["held"]:,} opened in {out["open_s"]:.1f} s, {out["still_open"]:,} still open '
                f'{out["held_s"]:.0f} s later; p50/p99 = new connection + GET /healthz while they are '
                f'held, median/max of {len(lat)}{first_failure}')
        if key == 'site-idle':
            note += '; KEEPALIVE_TIMEOUT_S and HEADER_TIMEOUT_S set to 120 s by a wrapper'
        elif results.get('site-idle') and per_conn:
            note += f'; server.py uses {results["site-idle"] / per_conn:.1f}× the memory per connection'
        print(f'  {label}: {note}')
        case.rows.append(row('idle-10k', out['held'], label, '—',
                             fmt_ms(statistics.median(lat) * 1e3) if lat else '',
                             fmt_ms(max(lat) * 1e3) if lat else '', errors, '', '', note))
        srv.stop()
        bench.servers.pop(key, None)


# -- the event loop under load --

class PacedContact(threading.Thread):
    """Sends one contact POST every 1/rate s (open loop: on schedule, however slow the answers),
    each from a new 10.x.y.z address, over a pool of keep-alive connections."""

    def __init__(self, port, sid, token, rate):
        super().__init__(daemon=True)
        self.port = port
        self.interval = 1.0 / rate
        body = contact_body(token).encode('ascii')
        self.template = ('POST /contact HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench.py\r\n'
                         'Content-Type: application/x-www-form-urlencoded\r\n'
                         f'Cookie: sid={sid}\r\nContent-Length: {len(body)}\r\n'
                         'X-Real-IP: {ip}\r\n\r\n').encode('ascii') + body
        self.stopped = threading.Event()
        self.next_ip = 0
        self.generation = 0
        self.reset()

    def reset(self):
        """Start counting afresh: answers to POSTs sent before are not counted."""
        self.generation += 1
        self.sent = self.dropped = self.errors = 0
        self.statuses = {}
        self.latencies = []
        self.started = time.perf_counter()

    def stop(self):
        self.stopped.set()
        self.join(REQUEST_TIMEOUT_S + 5)

    def run(self):
        asyncio.run(self._main())

    async def _main(self):
        loop = asyncio.get_running_loop()
        pool, inflight = [], set()
        start, i = loop.time(), 0
        while not self.stopped.is_set():
            delay = start + i * self.interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            i += 1
            if len(inflight) >= PACED_MAX_INFLIGHT:
                self.dropped += 1
                continue
            ip = ip_for(self.next_ip)
            self.next_ip += 1
            task = asyncio.ensure_future(self._post(pool, ip))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.wait(set(inflight), timeout=REQUEST_TIMEOUT_S)
        for task in list(inflight):
            task.cancel()
        for _, writer, _ in pool:
            writer.close()

    async def _post(self, pool, ip):
        self.sent += 1
        generation = self.generation
        reader = writer = None
        try:
            while pool and time.monotonic() - pool[0][2] > POOL_IDLE_S:
                pool.pop(0)[1].close()      # the server may be closing it: never reuse it
            if pool:
                reader, writer, _ = pool.pop()
            else:
                reader, writer = await asyncio.wait_for(asyncio.open_connection('127.0.0.1', self.port),
                                                        REQUEST_TIMEOUT_S)
            t0 = time.perf_counter()
            writer.write(self.template.replace(b'{ip}', ip.encode('ascii')))
            status, keep_alive = await asyncio.wait_for(read_response(reader), REQUEST_TIMEOUT_S)
            if generation == self.generation:
                self.latencies.append(time.perf_counter() - t0)
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status != 303:
                    self.errors += 1
            if keep_alive:
                pool.append((reader, writer, time.monotonic()))
                writer = None
        except (OSError, ValueError, EOFError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            if generation == self.generation:
                self.errors += 1
        finally:
            if writer is not None:
                writer.close()


# A pooled keep-alive connection idle longer than this is closed, not reused: the server
# closes idle ones after KEEPALIVE_TIMEOUT_S (5 s), and a POST sent just as it does is lost
# in flight (the usual keep-alive race, which a client cannot retry for a POST).
POOL_IDLE_S = 2.0


class RepeatedUpload(threading.Thread):
    """Uploads the 20 MiB body again and again until stopped."""

    def __init__(self, uploader):
        super().__init__(daemon=True)
        self.uploader = uploader
        self.stopped = threading.Event()
        self.reset()

    def reset(self):
        self.done = self.errors = 0
        self.seconds = []
        self.first_error = None

    def stop(self):
        self.stopped.set()
        self.join(90)
        self.uploader.close()

    def run(self):
        while not self.stopped.is_set():
            try:
                status, elapsed = self.uploader.upload()
            except (OSError, http.client.HTTPException, sqlite3.Error, RuntimeError) as exc:
                self.errors += 1
                self.first_error = self.first_error or repr(exc)
                time.sleep(0.1)
                continue
            if status == 303:
                self.done += 1
                self.seconds.append(elapsed)
            else:
                self.errors += 1
                self.first_error = self.first_error or f'status {status}'


def run_loop_block(bench, case):
    args = bench.args
    duration = args.duration if args.duration_given else (3 if args.quick else LOOP_BLOCK_DURATION_S)
    srv = bench.server('site-loop')
    if srv.failure:
        raise ServerError(f'server.py site {srv.failure}')
    url = f'http://127.0.0.1:{srv.port}{LOOP_BLOCK_PATH}'
    status, _ = asyncio.run(one_request(srv.port, f'GET {LOOP_BLOCK_PATH} HTTP/1.1\r\nHost: x\r\n\r\n'.encode()))
    if status != 200:
        raise RuntimeError(f'GET {LOOP_BLOCK_PATH} answered {status}')
    sid, token = site_session(srv.port, '/contact')
    uploader = make_uploader(bench, srv, 'site-loop')
    bench.client.run(url, LOOP_BLOCK_CONNECTIONS, WARMUP_S)                      # warm-up
    alone, loaded, background = [], [], []
    for run in range(1, args.runs + 1):
        for mode in ('alone', 'loaded'):
            contact = upload = None
            try:
                if mode == 'loaded':
                    contact = PacedContact(srv.port, sid, token, PACED_RATE)
                    contact.next_ip = run << 16
                    upload = RepeatedUpload(uploader)
                    contact.start()
                    upload.start()
                    time.sleep(0.5)                      # both under way before wrk starts
                    contact.reset()
                    upload.reset()
                result = bench.client.run(url, LOOP_BLOCK_CONNECTIONS, duration)
            finally:
                window = time.perf_counter() - contact.started if contact else 0
                for thread in (contact, upload):
                    if thread is not None:
                        thread.stop()
            if not srv.alive():
                raise ServerError(f'server.py site crashed (exit status {srv.proc.returncode}):\n{srv.log_tail()}')
            (alone if mode == 'alone' else loaded).append(result)
            extra = ''
            if mode == 'loaded':
                background.append((contact, upload, window))
                extra = (f'  | uploads {upload.done} ({upload.done * UPLOAD_BYTES / (1 << 20) / window:.0f} MiB/s, '
                         f'{upload.errors} failed{": " + upload.first_error if upload.first_error else ""}), '
                         f'contact POSTs {contact.sent} ({contact.sent / window:.0f}/s, '
                         f'{contact.statuses.get(303, 0)}× 303, {contact.errors} errors, {contact.dropped} dropped)')
            print(f'  run {run}/{args.runs}  {mode:<6} {result.rps:>10,.0f} req/s  p50 {fmt_ms(result.p50_ms):>9}'
                  f'  p99 {fmt_ms(result.p99_ms):>9}  errors {result.errors}{extra}')
    p99_alone = statistics.median(r.p99_ms for r in alone)
    p99_loaded = statistics.median(r.p99_ms for r in loaded)
    ratio = p99_loaded / p99_alone if p99_alone else float('inf')
    verdict = 'within' if ratio <= LOOP_BLOCK_TARGET else 'OVER'
    window = sum(w for _, _, w in background)
    uploads = sum(u.done for _, u, _ in background)
    upload_errors = sum(u.errors for _, u, _ in background)
    sent = sum(c.sent for c, _, _ in background)
    ok = sum(c.statuses.get(303, 0) for c, _, _ in background)
    others = {}
    for c, _, _ in background:
        for s, n in c.statuses.items():
            if s != 303:
                others[s] = others.get(s, 0) + n
    post_lat = [x for c, _, _ in background for x in c.latencies]
    other_text = ''.join(f', {n}× {s}' for s, n in sorted(others.items()))
    bg_errors = upload_errors + sum(c.errors + c.dropped for c, _, _ in background)
    summary = (f'p99 {fmt_ms(p99_alone)} alone → {fmt_ms(p99_loaded)} loaded: {ratio:.1f}× '
               f'({verdict} the {LOOP_BLOCK_TARGET:g}× target)')
    route = (f'GET {LOOP_BLOCK_PATH} (static file, cached in memory), wrk {LOOP_BLOCK_CONNECTIONS} connections, '
             f'{duration} s')
    load_note = (f'{summary}; meanwhile {uploads} uploads of 20 MiB ({uploads * UPLOAD_BYTES / (1 << 20) / window:.0f} '
                 f'MiB/s, {upload_errors} failed) and {sent:,} contact POSTs ({sent / window:.0f}/s: {ok:,}× 303'
                 f'{other_text}; p50 {fmt_ms(statistics.median(post_lat) * 1e3) if post_lat else "?"}, '
                 f'p99 {fmt_ms(percentile(post_lat, 99) * 1e3) if post_lat else "?"})')
    print(f'  {summary}')
    for label, results, note, extra_errors in (('server.py site, alone', alone, route, 0),
                                               ('server.py site + upload + 100 POST/s', loaded, load_note, bg_errors)):
        rps = statistics.median(r.rps for r in results)
        spread = (max(r.rps for r in results) - min(r.rps for r in results)) / rps if rps and len(results) > 1 else None
        errors = sum(r.errors for r in results)
        case.rows.append(row('loop-block', LOOP_BLOCK_CONNECTIONS, label, f'{rps:,.0f}',
                             fmt_ms(statistics.median(r.p50_ms for r in results)),
                             fmt_ms(statistics.median(r.p99_ms for r in results)),
                             f'{errors}' + (f' (+{extra_errors} background)' if extra_errors else ''),
                             f'{spread * 100:.0f}%' if spread is not None else '—', '', note))


# === The hosts scenario: several app processes on one PostgreSQL, behind one nginx ===

def postgres_programs():
    """The folder of the newest installed PostgreSQL's initdb and postgres (Debian keeps them
    in /usr/lib/postgresql/<major>/bin, off PATH), else the one on PATH; None without them."""
    base = '/usr/lib/postgresql'
    with contextlib.suppress(OSError):
        for major in sorted((name for name in os.listdir(base) if name.isdigit()), key=int, reverse=True):
            folder = os.path.join(base, major, 'bin')
            if all(os.access(os.path.join(folder, name), os.X_OK) for name in ('initdb', 'postgres')):
                return folder
    initdb = shutil.which('initdb')
    if initdb:
        folder = os.path.dirname(os.path.realpath(initdb))
        if os.access(os.path.join(folder, 'postgres'), os.X_OK):
            return folder
    return None


def postgres_owner():
    """Popen's user and group for PostgreSQL's programs: the postgres user's when run as root
    (initdb and postgres refuse root), none otherwise. KeyError without such a user."""
    if os.geteuid() != 0:
        return {}
    import pwd
    owner = pwd.getpwnam('postgres')
    return {'user': owner.pw_uid, 'group': owner.pw_gid, 'extra_groups': []}


def pg_connect(url):
    """A connection of server.py's own PostgreSQL client to ``url``."""
    import server
    return server.PgConnection(server.parse_database_url(url, '')[1])


def redact(url):
    import server
    return server.redact_url(url)


class Postgres:
    """The hosts scenario's PostgreSQL: --database's, or a throwaway cluster made here (initdb
    in a temporary folder, the server on a free port of 127.0.0.1, a password for SCRAM), with a
    fresh database for each server of the scenario; stop() stops and removes it."""

    def __init__(self, bench):
        self.bench = bench
        self.given = bench.args.database
        self.server = None       # the throwaway cluster's postmaster, a Server
        self.folder = None
        self.password = None
        self.version = None
        self.failure = None      # why it could not start: not tried again for the next row

    def url(self, key):
        """The URL the app processes of ``key`` use: --database's, or a new database."""
        if self.failure:
            raise ServerError(self.failure)
        try:
            if self.given:
                if self.version is None:
                    self.version = self._wait(self.given)
                return self.given
            if self.server is None:
                self._start()
        except ServerError as exc:
            self.failure = str(exc)
            raise
        name = key.replace('-', '_')
        conn = pg_connect(self._url('postgres'))
        try:
            conn.executescript(f'CREATE DATABASE {name}')
        finally:
            conn.close()
        return self._url(name)

    def _url(self, dbname):
        return f'postgresql://bench:{self.password}@127.0.0.1:{self.server.port}/{dbname}?sslmode=disable'

    def _start(self):
        import secrets
        programs = postgres_programs()
        owner = postgres_owner()
        # Under /tmp when root: the postgres user must be able to enter the cluster's folder.
        self.folder = tempfile.mkdtemp(prefix='bench-pg-', dir='/tmp' if owner else self.bench.tmp)
        self.password = secrets.token_hex(16)
        secret = os.path.join(self.folder, 'password')
        with open(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), 'w') as f:
            f.write(self.password + '\n')
        if owner:
            for path in (self.folder, secret):
                os.chown(path, owner['user'], owner['group'])
        data = os.path.join(self.folder, 'data')
        env = {k: v for k, v in os.environ.items() if not k.startswith('PG')}
        env['LC_ALL'] = 'C'
        done = subprocess.run([os.path.join(programs, 'initdb'), '-D', data, '-U', 'bench', '--pwfile', secret,
                               '-E', 'UTF8', '--locale=C', '--auth=scram-sha-256', '--no-sync'],
                              cwd=self.folder, env=env, capture_output=True, text=True, timeout=120, **owner)
        os.unlink(secret)
        if done.returncode != 0:
            raise ServerError(f'initdb failed: {(done.stderr or done.stdout).strip()[-500:]}')
        # PostgreSQL's defaults otherwise (fsync and synchronous_commit on: a commit is on disk
        # when answered, as SQLite's with synchronous=FULL). TCP only, as other hosts would reach it.
        self.server = Server('PostgreSQL', lambda port: [
            os.path.join(programs, 'postgres'), '-D', data, '-p', str(port),
            '-c', 'listen_addresses=127.0.0.1', '-c', f'unix_socket_directories={self.folder}'],
            self.bench.tmp, cwd=self.folder, popen=owner)
        # Its fast shutdown: SIGTERM would wait for every client to leave (its backends are
        # in sessions of their own, out of reach of the signal to its group).
        self.server.stop_signal = signal.SIGINT
        self.server.start()
        self.version = self._wait(self._url('postgres'))
        print(f'  started a throwaway PostgreSQL {self.version} cluster in {self.folder} on port '
              f'{self.server.port}: {self.server.describe()}')

    def _wait(self, url):
        """PostgreSQL's version once it takes connections (it accepts them before that)."""
        deadline = time.monotonic() + PG_START_TIMEOUT_S
        while True:
            try:
                conn = pg_connect(url)
            except sqlite3.OperationalError as exc:     # server.PostgresUnavailable: starting up
                if time.monotonic() > deadline:
                    raise ServerError(f'PostgreSQL at {redact(url)} did not answer: {exc}') from None
                time.sleep(0.1)
                continue
            except sqlite3.Error as exc:
                raise ServerError(f'PostgreSQL at {redact(url)}: {exc}') from None
            conn.close()
            return conn.parameters.get('server_version', '?')

    def describe(self):
        if self.given:
            return f'PostgreSQL {self.version or "?"} at {redact(self.given)} (--database), every row'
        if self.server is None:
            return 'PostgreSQL: not started'
        return (f'a throwaway PostgreSQL {self.version} cluster (its default settings, SCRAM over TCP '
                f'on 127.0.0.1, no TLS), a fresh database per row')

    def stop(self):
        if self.server is not None:
            self.server.stop()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def balancer_conf(prefix, port, app_ports):
    """nginx in front of the app processes: round robin over their ports, keep-alive
    connections to them. wrk's X-Real-IP goes on untouched (nginx passes a client's fields),
    as the front proxy's would reach the app: the site's rate limit is per address."""
    temp_paths = ''.join(f'    {kind}_temp_path {prefix}/{kind}_temp;\n'
                         for kind in ('client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'))
    servers = ''.join(f'        server 127.0.0.1:{p};\n' for p in app_ports)
    return (f'daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n'
            f'events {{ worker_connections 4096; }}\n'
            f'http {{\n    access_log off;\n    keepalive_requests 1000000;\n{temp_paths}'
            f'    upstream apps {{\n{servers}        keepalive {HOSTS_KEEPALIVE};\n    }}\n'
            f'    server {{\n        listen 127.0.0.1:{port};\n'
            f'        location / {{\n            proxy_pass http://apps;\n'
            f'            proxy_http_version 1.1;\n            proxy_set_header Connection "";\n'
            f'            proxy_set_header Host $http_host;\n        }}\n    }}\n}}\n')


class Balanced:
    """App processes behind one nginx, started, watched and stopped as one Server: the load
    generator sees nginx's address only."""

    def __init__(self, label, bench, make_apps):
        self.label = label
        self.make_apps = make_apps      # () -> (the app Servers, count_messages(text)), at start
        self.apps = []
        self.count_messages = None
        self.prefix = os.path.join(bench.tmp, 'nginx-' + re.sub(r'[^A-Za-z0-9]+', '-', label).strip('-'))
        self.nginx = Server(f'{label}: nginx', self._nginx_command, bench.tmp, cwd=bench.tmp)
        self.failure = None
        self.tmp = bench.tmp

    def _nginx_command(self, port):
        os.makedirs(self.prefix, exist_ok=True)
        os.chmod(self.tmp, 0o755)       # nginx started as root runs its worker as nobody
        path = os.path.join(self.prefix, 'nginx.conf')
        with open(path, 'w') as f:
            f.write(balancer_conf(self.prefix, port, [app.port for app in self.apps]))
        return [NGINX, '-e', f'{self.prefix}/error.log', '-c', path, '-p', self.prefix]

    @property
    def port(self):
        return self.nginx.port

    @property
    def proc(self):
        """The first process of the group that has exited, else nginx's."""
        for srv in self.apps + [self.nginx]:
            if srv.proc is not None and srv.proc.poll() is not None:
                return srv.proc
        return self.nginx.proc

    def start(self):
        try:
            self.apps, self.count_messages = self.make_apps()
        except (OSError, KeyError, subprocess.SubprocessError, sqlite3.Error) as exc:
            raise ServerError(f'{self.label}: {exc}') from None
        for app in self.apps:
            app.start()
        self.nginx.start()

    def alive(self):
        return all(srv.alive() for srv in self.apps + [self.nginx])

    def stop(self):
        for srv in [self.nginx] + self.apps:
            srv.stop()

    def log_tail(self, lines=15):
        dead = [srv for srv in self.apps + [self.nginx] if not srv.alive()] or self.apps
        return '\n'.join(f'    {srv.label}:\n{srv.log_tail(lines)}' for srv in dead)

    def describe(self):
        app = self.apps[0].argv or []
        if '--database' in app:
            app = app[:]
            app[app.index('--database') + 1] = redact(app[app.index('--database') + 1])
        return (f'nginx (1 worker, upstream of {len(self.apps)} port{"s" * (len(self.apps) > 1)}: '
                f'{", ".join(str(a.port) for a in self.apps)}) in front of {len(self.apps)} × '
                f'{shlex.join(app)} (each its own --port and --data)')


def hosts_server(bench, key):
    """``hosts-sqlite-nginx``: the site on SQLite behind nginx; ``hosts-pg-N``: N app
    processes on one PostgreSQL database behind nginx."""
    if key == 'hosts-sqlite-nginx':
        count, label = 1, 'server.py on SQLite, 1 process'
    else:
        count = int(key.rsplit('-', 1)[1])
        label = f'server.py on PostgreSQL, {count} process{"es" * (count > 1)}'

    def make_apps():
        url = None
        if key != 'hosts-sqlite-nginx':
            if bench.postgres is None:
                bench.postgres = Postgres(bench)
            url = bench.postgres.url(key)
        apps = []
        for i in range(count):
            data = bench.data_dir(f'{key}-{i}')
            extra = ['--database', url] if url else []
            apps.append(Server(f'{label} #{i + 1}', lambda port, data=data, extra=extra: [
                PYTHON, SERVER_PY, '--port', str(port), '--data', data, '--no-access-log'] + extra,
                bench.tmp, cwd=HERE))
        if url is None:
            db = os.path.join(bench.data_dir(f'{key}-0'), 'app.db')
            return apps, lambda message: sqlite_messages(db, message)

        def count_messages(message):
            conn = pg_connect(url)
            try:
                return conn.execute('SELECT COUNT(*) FROM messages WHERE body = ?', (message,)).fetchone()[0]
            finally:
                conn.close()
        return apps, count_messages
    return Balanced(label, bench, make_apps)


def hosts_unavailable(args):
    """Why the hosts scenario cannot run here, or None."""
    if not os.path.exists(NGINX):
        return f'nginx is not installed ({NGINX}): the app processes need one address in front'
    if args.database:
        return None
    if postgres_programs() is None:
        return ('no --database URL, and no PostgreSQL server programs to make a throwaway cluster '
                '(/usr/lib/postgresql/*/bin/initdb)')
    try:
        postgres_owner()
    except KeyError:
        return 'no --database URL, and no postgres user to run a throwaway cluster as (run as root)'
    return None


def hosts_cases(args):
    why = hosts_unavailable(args)
    if why:
        def skipped(bench, case):
            print(f'  skipped: {why}')
            case.rows.append(row('hosts', '', '', 'skipped: ' + why))
        return [CustomCase('hosts', skipped)]
    entries = [Entry('SQLite, 1 process, no nginx', 'hosts-sqlite'),
               Entry('SQLite, 1 process', 'hosts-sqlite-nginx', subject=True)]
    entries += [Entry(f'PostgreSQL, {n} process{"es" * (n > 1)}', f'hosts-pg-{n}') for n in HOSTS_PROCESSES]
    note = 'behind one nginx but the first; ratio = SQLite 1 process ÷ this'
    return [Case('hosts home', '/', args.connections, entries, note=note,
                 title='GET / (the home page: template, visit counter), SQLite and PostgreSQL'),
            Case('hosts contact', '/contact', args.connections, entries,
                 title='POST /contact (urlencoded, CSRF, a committed insert, 303), X-Real-IP 10.x.y.z per '
                       'request, SQLite and PostgreSQL',
                 prepare=contact_prepare, wrk_options=contact_wrk_options, after_run=contact_after_run,
                 finish=contact_finish, note='303 counted as success; ' + note)]


def custom_cases(args, scenario):
    if scenario == 'upload-20m':
        return [CustomCase('upload-20m', run_upload)]
    if scenario == 'idle-10k':
        return [CustomCase('idle-10k', run_idle)]
    if scenario == 'loop-block':
        return [CustomCase('loop-block', run_loop_block)]
    raise KeyError(scenario)


# === Output ===

def fmt_ms(ms):
    if ms >= 1000:
        return f'{ms / 1000:.2f} s'
    if ms >= 100:
        return f'{ms:.0f} ms'
    if ms >= 10:
        return f'{ms:.1f} ms'
    if ms >= 1:
        return f'{ms:.2f} ms'
    return f'{ms * 1000:.0f} µs'


def row(scenario, conns, server, rps='', p50='', p99='', errors='', spread='', ratio='', notes=''):
    """One row of the results table, as its cells."""
    return (scenario, str(conns), server, rps, p50, p99, str(errors), spread, ratio, notes)


def table(cases, client_bound):
    mark = ' (client-bound)' if client_bound else ''
    rows = [row('scenario', 'conns', 'server', 'req/s', 'p50', 'p99', 'errors', 'spread', 'server.py ÷ this',
                'notes')]
    for case in cases:
        if isinstance(case, CustomCase):
            rows += case.rows or [row(case.scenario, '', '', 'not measured')]
            continue
        subject = next((e.label for e in case.entries if e.subject), None)
        subject_runs = case.results.get(subject) if subject not in case.failures else None
        subject_rps = statistics.median(r.rps for r in subject_runs) if subject_runs else None
        for entry in case.entries:
            runs = case.results.get(entry.label)
            failure = case.failures.get(entry.label)
            if not runs:
                why = 'failed: ' + failure.splitlines()[0][:50] if failure else 'not measured'
                rows.append(row(case.scenario, case.connections, entry.label, why))
                continue
            rps = statistics.median(r.rps for r in runs)
            spread = (max(r.rps for r in runs) - min(r.rps for r in runs)) / rps if rps else 0.0
            errors = str(sum(r.errors for r in runs)) + (' (crashed)' if failure else '')
            ratio = ('—' if entry.subject or subject_rps is None or not rps
                     else f'{subject_rps / rps:.2f}×')
            notes = '; '.join(n for n in (case.note, case.notes.get(entry.label, '')) if n)
            p50 = fmt_ms(statistics.median(r.p50_ms for r in runs)) if case.latency else '—'
            p99 = fmt_ms(statistics.median(r.p99_ms for r in runs)) if case.latency else '—'
            rows.append(row(case.scenario, case.connections, entry.label, f'{rps:,.0f}{mark}', p50, p99,
                            errors, f'{spread * 100:.0f}%' if len(runs) > 1 else '—', ratio, notes))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {1, 3, 4, 5, 6, 7, 8}

    def line(cells_in):
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(cells_in, widths))]
        return '| ' + ' | '.join(cells) + ' |'
    sep = '|' + '|'.join(('-' * (w + 1) + ':') if i in right else ('-' * (w + 2)) for i, w in enumerate(widths)) + '|'
    return '\n'.join([line(rows[0]), sep] + [line(r) for r in rows[1:]])


def command_output(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return ''


def machine_description():
    cpus = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cpus
    model = ''
    try:
        with open('/proc/cpuinfo') as f:
            m = re.search(r'^model name\s*:\s*(.+)$', f.read(), re.M)
            model = m.group(1).strip() if m else ''
    except OSError:
        pass
    load = ' '.join(f'{x:.2f}' for x in os.getloadavg()) if hasattr(os, 'getloadavg') else '?'
    cpu_text = f'{usable} CPUs' + (f' of {cpus}' if usable != cpus else '') + (f' ({model})' if model else '')
    return (f'{platform.system()} {platform.release()} {platform.machine()}, {cpu_text}, '
            f'load average {load}')


def filesystem_of(path):
    """The type of the filesystem holding ``path`` (from /proc/mounts), or '?'."""
    try:
        with open('/proc/mounts') as f:
            mounts = [line.split()[1:3] for line in f]
    except OSError:
        return '?'
    path = os.path.realpath(path)
    best = max((m for m in mounts if path == m[0] or path.startswith(m[0].rstrip('/') + '/')),
               key=lambda m: len(m[0]), default=None)
    return best[1] if best else '?'


def server_py_version():
    try:
        with open(SERVER_PY, encoding='utf-8') as f:
            m = re.search(r"^__version__ = '([^']+)'", f.read(), re.M)
    except OSError:
        return '?'
    version = m.group(1) if m else '?'
    commit = command_output(['git', '-C', HERE, 'rev-parse', '--short', 'HEAD'])
    if re.fullmatch(r'[0-9a-f]{4,40}', commit):
        dirty = command_output(['git', '-C', HERE, 'status', '--porcelain', '--', 'server.py'])
        version += f' (git {commit}{", server.py modified" if dirty else ""})'
    return version


# === The in-process harness (python3 bench.py --harness hello,browser,static,hello-log) ===
#
# server.py's own work per request, without sockets, kernel or load generator: requests are
# fed to HTTPConnection objects through a stand-in transport, 50 connections a turn as wrk's
# would arrive. Seconds vary with the machine; under valgrind the instruction count of a
# request does not (--instructions), so a change to the hot path can be judged by it.

HARNESS_KINDS = ('hello', 'browser', 'static', 'hello-log', 'hello-new', 'browser-new')
HARNESS_CONNECTIONS = 50
HARNESS_HEADS = {
    'hello': b'GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n',     # wrk's own head
    'browser': (b'GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nConnection: keep-alive\r\n'
                b'Cache-Control: max-age=0\r\nUpgrade-Insecure-Requests: 1\r\n'
                b'User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) '
                b'Chrome/131.0.0.0 Safari/537.36\r\n'
                b'Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,'
                b'image/webp,*/*;q=0.8\r\nSec-Fetch-Site: none\r\nSec-Fetch-Mode: navigate\r\n'
                b'Sec-Fetch-User: ?1\r\nSec-Fetch-Dest: document\r\nAccept-Encoding: gzip, deflate, br\r\n'
                b'Accept-Language: en-US,en;q=0.9\r\nDNT: 1\r\n\r\n'),
    'static': b'GET /%s HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n' % STATIC_FILES['static-10k'][0].encode(),
}


class HarnessTransport(asyncio.Transport):
    """Takes the place of a socket: counts the responses and keeps the last one."""

    def __init__(self, sink):
        super().__init__()
        self.sink = sink
        self.closing = False

    def write(self, data):
        self.sink.append(bytes(data))

    def get_extra_info(self, name, default=None):
        return ('127.0.0.1', 40000) if name == 'peername' else default

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    abort = close

    def get_write_buffer_size(self):
        return 0

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def harness(kind, requests, tmp):
    """Answer ``requests`` requests of ``kind`` in this process: (µs per request, a response).

    Raises RuntimeError if a response is not the 200 the scenario expects.
    """
    import server
    import logging
    head = HARNESS_HEADS[kind.removesuffix('-log').removesuffix('-new')]
    if kind.endswith('-new'):
        # Each request a head of its own (its own query string), as browsers send them.
        numbers = itertools.count()
        heads = iter(lambda: head.replace(b' HTTP/1.1\r\n', b'?%d HTTP/1.1\r\n' % next(numbers), 1), None)
    else:
        heads = itertools.repeat(head)
    data = os.path.join(tmp, 'data-harness-' + kind)
    if kind == 'static':
        app = server.build_site(server.Config(root=make_web_root(tmp), data=data))
        expect = STATIC_FILES['static-10k'][1]      # the file static-10k serves
    else:
        namespace = {'__name__': 'bench_hello_app'}
        exec(HELLO_APP.format(here=HERE), namespace)
        app = namespace['make_app'](data)
        expect = len(HELLO_BODY)
    access_log = kind.endswith('-log')
    # Logging as it was is put back at the end (the tests call this in their own process).
    root, access = logging.getLogger(), server.access_log
    saved = (root.handlers[:], root.level, access.handlers[:], access.propagate,
             logging.root.manager.disable)
    devnull = open(os.devnull, 'w')
    if access_log:      # the stock handler, as `server.py` has it, writing to /dev/null
        stdout, sys.stdout = sys.stdout, devnull
        try:
            server.configure_logging('info')
        finally:
            sys.stdout = stdout
    else:
        logging.disable(logging.CRITICAL)

    async def drive():
        srv = server.Server(app, server.Config(access_log=access_log))
        srv.attach(asyncio.get_running_loop())
        await app.startup()
        srv.attach(asyncio.get_running_loop())     # the context with what startup set
        sink = []
        connections = []
        for _ in range(HARNESS_CONNECTIONS):
            conn = server.HTTPConnection(srv)
            conn.connection_made(HarnessTransport(sink))
            connections.append(conn)

        async def turn():
            sink.clear()
            for conn, data in zip(connections, heads):
                conn.data_received(data)
            while len(sink) < len(connections):
                await asyncio.sleep(0)
            response = sink[-1]
            if not response.startswith(b'HTTP/1.1 200 ') or b'\r\nContent-Length: %d\r\n' % expect not in response:
                raise RuntimeError(f'{kind}: unexpected response {response[:80]!r}')
            return response

        for _ in range(20):               # warm-up: the static file reaches the cache
            await turn()
            await asyncio.sleep(0.01)
        if app.static is not None:        # no revalidation stat() in the measured part
            for entry in app.static._cache.values():
                entry.checked_at = float('inf')
        turns = max(1, requests // HARNESS_CONNECTIONS)
        started = time.perf_counter()
        for _ in range(turns):
            response = await turn()
        elapsed = time.perf_counter() - started
        await app.shutdown()
        return elapsed / (turns * HARNESS_CONNECTIONS) * 1e6, response
    try:
        return asyncio.run(drive())
    finally:
        root.handlers[:], root.level, access.handlers[:], access.propagate, disabled = saved
        logging.disable(disabled)
        devnull.close()


def run_harness(kinds, requests, instructions):
    """Print µs per request of each kind, or with ``instructions`` the instructions per request
    counted by valgrind: (count at 3N - count at N) / 2N, so start-up cancels out."""
    if instructions:
        valgrind = shutil.which('valgrind')
        if valgrind is None:
            sys.exit('bench.py: --instructions needs valgrind')
        env = dict(os.environ, PYTHONHASHSEED='0')
        for kind in kinds:
            counts = []
            for n in (requests, 3 * requests):
                with tempfile.TemporaryDirectory(prefix='bench-') as tmp:
                    out = os.path.join(tmp, 'callgrind.out')
                    proc = subprocess.run(
                        [valgrind, '--tool=callgrind', f'--callgrind-out-file={out}', PYTHON,
                         os.path.abspath(__file__), '--harness', kind, '--requests', str(n)],
                        env=env, capture_output=True, text=True)
                found = re.search(r'Collected : (\d+)', proc.stderr)
                if proc.returncode != 0 or found is None:
                    sys.exit(f'bench.py: valgrind failed on {kind}:\n{proc.stdout}{proc.stderr[-2000:]}')
                counts.append(int(found.group(1)))
            print(f'{kind:10s} {(counts[1] - counts[0]) / (2 * requests):10,.0f} instructions/request'
                  f'  (valgrind, Python {platform.python_version()}, {2 * requests:,} requests)', flush=True)
        return 0
    for kind in kinds:
        with tempfile.TemporaryDirectory(prefix='bench-') as tmp:
            us, _ = harness(kind, requests, tmp)
        print(f'{kind:10s} {us:8.2f} µs/request  (in process, {requests:,} requests, no sockets)', flush=True)
    return 0


# === Command line ===

def parse_args(argv):
    parser = argparse.ArgumentParser(
        description='Benchmark server.py against reference servers on 127.0.0.1.',
        epilog='Scenarios: ' + ', '.join(SCENARIOS) + '. See the module docstring for details.')
    parser.add_argument('--duration', type=int, default=None, metavar='S',
                        help='seconds per run (default 5, --quick 2)')
    parser.add_argument('--runs', type=int, default=None, metavar='N',
                        help='interleaved runs per server; the median is reported (default 3, --quick 1)')
    parser.add_argument('--quick', action='store_true', help='smoke test: 2 s, 1 run')
    parser.add_argument('--scenarios', default=','.join(SCENARIOS),
                        help='comma-separated subset of: ' + ', '.join(SCENARIOS))
    parser.add_argument('--connections', type=int, default=50, metavar='N',
                        help='connections of every scenario but concurrency (default 50)')
    parser.add_argument('--compare', action='append', default=[], metavar='CMD',
                        help='another server for the hello scenario, a shell command with {port} '
                             '(repeatable); it must answer GET /hello on 127.0.0.1:{port}')
    parser.add_argument('--client', choices=('auto', 'wrk', 'builtin'), default='auto',
                        help='load generator: wrk if installed (auto), or the built-in asyncio client')
    parser.add_argument('--harness', metavar='KINDS',
                        help='no servers: time server.py in process, comma-separated kinds of: '
                             + ', '.join(HARNESS_KINDS))
    parser.add_argument('--requests', type=int, default=None, metavar='N',
                        help='--harness: requests per kind (default 20000, 1000 with --instructions)')
    parser.add_argument('--instructions', action='store_true',
                        help='--harness: count instructions per request with valgrind instead')
    parser.add_argument('--database', metavar='URL',
                        help='hosts: a postgresql:// URL every app process uses (a throwaway database: '
                             'bench.py writes into it); default: a throwaway cluster of the installed '
                             'PostgreSQL, if any')
    parser.add_argument('--bare-server', type=int, metavar='PORT', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.harness is not None:
        args.harness = [k.strip() for k in args.harness.split(',') if k.strip()]
        unknown = [k for k in args.harness if k not in HARNESS_KINDS]
        if unknown or not args.harness:
            parser.error(f'unknown harness kind {", ".join(unknown) or "(none)"}; '
                         f'choose from {", ".join(HARNESS_KINDS)}')
        if args.requests is None:
            args.requests = 1000 if args.instructions else 20000
        if args.requests < HARNESS_CONNECTIONS:
            parser.error(f'--requests must be at least {HARNESS_CONNECTIONS}')
    args.duration_given = args.duration is not None
    if args.duration is None:
        args.duration = 2 if args.quick else 5
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.duration < 1 or args.runs < 1 or args.connections < 1:
        parser.error('--duration, --runs and --connections must be at least 1')
    args.scenarios = [s.strip() for s in args.scenarios.split(',') if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown or not args.scenarios:
        parser.error(f'unknown scenario {", ".join(unknown) or "(none)"}; choose from {", ".join(SCENARIOS)}')
    if args.database is not None and not args.database.startswith(('postgresql://', 'postgres://')):
        parser.error('--database must be a postgresql:// URL (the hosts scenario\'s SQLite rows need none)')
    for cmd in args.compare:
        if '{port}' not in cmd:
            parser.error(f'--compare needs {{port}} in the command: {cmd!r}')
    return args


def pick_client(choice):
    wrk = shutil.which('wrk')
    if choice == 'builtin' or (choice == 'auto' and wrk is None):
        if choice == 'auto':
            print('NOTE: wrk is not installed; falling back to the built-in asyncio client. '
                  'Its figures are client-bound (marked so): install wrk for real numbers.')
        return BuiltinClient()
    if wrk is None:
        sys.exit('bench.py: --client wrk, but wrk is not installed')
    return Wrk(wrk)


def raise_fd_limit():
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Up to the hard limit (idle-10k holds 10,000 sockets here and as many in the server).
        for want in ((hard,) if hard != resource.RLIM_INFINITY else ()) + (1 << 20, 65536):
            if soft != resource.RLIM_INFINITY and soft >= want:
                break
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))   # inherited by the servers
                break
            except (ValueError, OSError):
                continue
    except ImportError:
        pass


def on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.bare_server is not None:
        return run_bare_server(args.bare_server)
    if args.harness is not None:
        return run_harness(args.harness, args.requests, args.instructions)
    signal.signal(signal.SIGTERM, on_sigterm)       # so the finally below stops the servers
    raise_fd_limit()
    started = time.monotonic()

    client = pick_client(args.client)
    cases = build_cases(args)
    nginx = command_output([NGINX, '-v']).replace('nginx version: ', '') if os.path.exists(NGINX) else ''
    print('# bench.py')
    print(f'command:     {shlex.join([os.path.basename(PYTHON)] + [sys.argv[0]] + argv)}')
    print(f'machine:     {machine_description()}')
    print(f'python:      {platform.python_version()} ({PYTHON})')
    print(f'server.py:   {server_py_version()}')
    print(f'load:        {client.describe()}')
    print(f'references:  bare asyncio.Protocol (hello, idle-10k), http.server (static), '
          + (f'{nginx}, 1 worker (static)' if nginx else 'nginx not installed (no nginx rows)'))
    if {'contact', 'hosts', 'upload-20m', 'loop-block', 'idle-10k'} & set(args.scenarios):
        print(f'site data:   a fresh data folder per scenario under {tempfile.gettempdir()} '
              f'({filesystem_of(tempfile.gettempdir())}): SQLite fsyncs land there')
    print(f'method:      {args.runs} run(s) of {args.duration} s per server, interleaved, median; '
          f'{WARMUP_S} s warm-up each; client and server share the {os.cpu_count()} CPUs')
    if 'hosts' in args.scenarios:
        print(f'hosts:       the site on SQLite (1 process, straight and behind nginx) and on PostgreSQL '
              f'({", ".join(map(str, HOSTS_PROCESSES))} app processes behind nginx, 1 worker, round robin); '
              f'wrk, nginx, the app processes and PostgreSQL share the {os.cpu_count()} CPUs')
    for i, cmd in enumerate(args.compare, 1):
        print(f'compare {i}:   {cmd}')

    interrupted = False
    postgres = None
    with tempfile.TemporaryDirectory(prefix='bench-', ignore_cleanup_errors=True) as tmp:
        bench = Bench(args, client, tmp)
        try:
            for i, case in enumerate(cases):
                later = {e.server_key for c in cases[i + 1:] for e in c.entries}
                if isinstance(case, CustomCase):
                    bench.run_custom(case, later)
                else:
                    bench.run_case(case, later)
        except KeyboardInterrupt:
            interrupted = True
            print('\ninterrupted: stopping the servers')
        finally:
            bench.stop_all()
            if bench.postgres is not None:
                postgres = bench.postgres.describe()
                bench.postgres.stop()

    elapsed = time.monotonic() - started
    print(f'\n## Results ({args.runs} run(s) of {args.duration} s, median; '
          f'{"client-bound: " if client.client_bound else ""}{client.version})\n')
    print(table(cases, client.client_bound))
    print()
    print(textwrap.fill(
        '"server.py ÷ this" is server.py\'s median req/s over the row\'s (above 1: server.py is '
        'faster); "spread" is (max - min) / median of the runs\' req/s; errors are non-2xx/3xx '
        'responses plus socket errors, summed over the runs. http.server answers HTTP/1.0 and '
        'closes every connection (listen backlog 5), so its latency includes reconnects.'
        + (' upload-20m: the req/s column is uploads/s, p50/p99 those of one upload.'
           if 'upload-20m' in args.scenarios else '')
        + (' idle-10k: p50 and p99 are the median and the max of the requests on new connections.'
           if 'idle-10k' in args.scenarios else ''), 92))
    if postgres:
        print(f'hosts: {postgres}')
    for i, cmd in enumerate(args.compare, 1):
        print(f'compare {i}: {cmd}')
    load = ' '.join(f'{x:.2f}' for x in os.getloadavg()) if hasattr(os, 'getloadavg') else '?'
    print(f'\ntotal time: {elapsed:.0f} s; load average now {load} (other work on the machine skews figures)')
    return 130 if interrupted else 0


if __name__ == '__main__':
    sys.exit(main())
