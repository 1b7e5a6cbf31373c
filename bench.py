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

Scenarios (``--scenarios``, comma-separated; default all):

``hello``
    ``GET /hello`` through the whole framework (router, Request, Response) of an app with
    200 routes (100 static, 99 dynamic, ``/hello`` registered last), with the access log
    off and on (to /dev/null), against a bare ``asyncio.Protocol`` that answers a fixed
    ``Hello, world!`` (``python3 bench.py --bare-server PORT``) and every ``--compare``
    command.
``home``
    ``GET /`` of the real site (``python3 server.py``): the templated home page.
``static-10k``, ``static-1m``
    A 10 KiB and a 1 MiB file from a temporary copy of www/, against
    ``python3 -m http.server`` (ThreadingHTTPServer) and nginx when /usr/sbin/nginx exists.
``concurrency``
    ``hello`` at 1, 50 and 1000 connections, server.py and the bare server.

The load generator is wrk (``--latency``) when installed. Without it a built-in asyncio
keep-alive client is used and its figures are marked "(client-bound)": it is Python too,
and it shares the CPUs with the server it measures.

Each figure is the median of ``--runs`` runs of ``--duration`` seconds; the servers of a
scenario take turns (A B C A B C ...), after one warm-up second each. The ratio column is
server.py's requests/s divided by the row's (above 1: server.py is faster).
"""

import argparse
import asyncio
import dataclasses
import http.client
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER_PY = os.path.join(HERE, 'server.py')
WWW = os.path.join(HERE, 'www')
NGINX = '/usr/sbin/nginx'
PYTHON = sys.executable or 'python3'

SCENARIOS = ('hello', 'home', 'static-10k', 'static-1m', 'concurrency')
CONCURRENCY_LEVELS = (1, 50, 1000)
HELLO_BODY = b'Hello, world!'
STATIC_FILES = {'static-10k': ('bench-10k.bin', 10 * 1024), 'static-1m': ('bench-1m.bin', 1024 * 1024)}

STARTUP_TIMEOUT_S = 20.0     # a server must accept connections within this long
STOP_TIMEOUT_S = 12.0        # after SIGTERM (server.py lets requests finish for 10 s), then SIGKILL
REQUEST_TIMEOUT_S = 10.0     # one request of the load generator (wrk --timeout, built-in client)
WARMUP_S = 1                 # unrecorded warm-up of each server before a scenario's runs


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
sys.path.insert(0, {here!r})
import server

port, access_log, data = int(sys.argv[1]), sys.argv[2] == 'on', sys.argv[3]
app = server.App(data=data)


def filler(i):
    async def handler(request, **params):
        return server.Response.text(f'route {{i}}')
    return handler


routes = 0
for i in range(100):                                  # 100 static routes
    app.get(f'/r{{i}}', name=f'r{{i}}')(filler(i))
    routes += 1
for i in range(99):                                   # 99 dynamic routes
    app.get(f'/item{{i}}/<int:id>', name=f'item{{i}}')(filler(i))
    routes += 1


@app.get('/hello')                                    # the 200th, registered last
async def hello(request):
    return server.Response.text('Hello, world!')
routes += 1
assert routes == 200, routes

app.run(host='127.0.0.1', port=port, access_log=access_log)
'''


# === Servers: a subprocess on a free port, waited for, and always stopped ===

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class ServerError(Exception):
    pass


class Server:
    """One server under test. ``command(port)`` gives its argv (or a shell string)."""

    def __init__(self, label, command, workdir, *, cwd=None, shell=False):
        self.label = label
        self.command = command
        self.workdir = workdir
        self.cwd = cwd
        self.shell = shell
        self.port = None
        self.proc = None
        self.log_path = os.path.join(workdir, re.sub(r'[^A-Za-z0-9]+', '-', label).strip('-') + '.log')
        self.argv = None
        self.failure = None          # why it cannot be measured any more, or None

    def start(self):
        self.port = free_port()
        self.argv = self.command(self.port)
        with open(self.log_path, 'ab') as log:
            # stdout to /dev/null (the access log, banners), stderr kept for diagnostics.
            # A session of its own, so stop() reaches its children (nginx workers, shells).
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, shell=self.shell,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=log, start_new_session=True)
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
            self._signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f'  {self.label} ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s: killing it')
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


# === Load generators ===

@dataclasses.dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


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
        return (f'{self.version}: -t 2 (-t 1 for 1 connection), --latency, '
                f'--timeout {REQUEST_TIMEOUT_S:.0f}s')

    def run(self, url, connections, duration):
        threads = min(2, connections)
        argv = [self.path, '-t', str(threads), '-c', str(connections), '-d', f'{duration}s',
                '--latency', '--timeout', f'{REQUEST_TIMEOUT_S:.0f}s', url]
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

    def run(self, url, connections, duration):
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
    results: dict = dataclasses.field(default_factory=dict)    # label -> [Result]
    failures: dict = dataclasses.field(default_factory=dict)   # label -> reason


def hello_cases(args):
    entries = [Entry('server.py', 'hello', subject=True),
               Entry('server.py, access log on', 'hello-log'),
               Entry('bare asyncio.Protocol', 'bare')]
    entries += [Entry(f'compare {i}', f'compare-{i}') for i in range(1, len(args.compare) + 1)]
    return [Case('hello', '/hello', args.connections, entries, expect_body=HELLO_BODY)]


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
        elif scenario == 'home':
            cases += home_cases(args)
        elif scenario.startswith('static-'):
            cases += static_cases(args, scenario)
        elif scenario == 'concurrency':
            cases += concurrency_cases(args)
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

    # -- setup of what the servers need --
    def web_root(self):
        """A copy of www/ plus the two benchmark files (created once)."""
        if self.root is None:
            self.root = os.path.join(self.tmp, 'www')
            shutil.copytree(WWW, self.root)
            for name, size in STATIC_FILES.values():
                with open(os.path.join(self.root, name), 'wb') as f:
                    f.write(os.urandom(size))
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
        if key in ('hello', 'hello-log'):
            script = os.path.join(tmp, 'hello_app.py')
            if not os.path.exists(script):
                with open(script, 'w') as f:
                    f.write(HELLO_APP.format(here=HERE))
            access = 'on' if key == 'hello-log' else 'off'
            data = self.data_dir(key)
            label = 'server.py hello' + (' (access log)' if access == 'on' else '')
            return Server(label, lambda port: [py, script, str(port), access, data], tmp, cwd=tmp)
        if key == 'bare':
            return Server('bare asyncio.Protocol',
                          lambda port: [py, os.path.abspath(__file__), '--bare-server', str(port)], tmp, cwd=tmp)
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
        error = None
        try:
            result = self.client.run(url, case.connections, duration)
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            error = exc
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
        print(f'\n== {case.scenario}: GET {case.path}, {case.connections} connection'
              f'{"s" if case.connections != 1 else ""} ==')
        live = []
        for entry in case.entries:
            srv = self.server(entry.server_key)
            if srv.failure:
                case.failures[entry.label] = srv.failure
                continue
            problem = self.check(case, srv)
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
                    print(f'  run {run}/{self.args.runs}  {entry.label:<26} {result.rps:>10,.0f} req/s'
                          f'  p50 {fmt_ms(result.p50_ms):>9}  p99 {fmt_ms(result.p99_ms):>9}'
                          f'  errors {result.errors}  ({result.requests:,} requests)')
        self.stop_all(keep=later_keys)


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


def table(cases, client_bound):
    mark = ' (client-bound)' if client_bound else ''
    rows = [('scenario', 'conns', 'server', 'req/s', 'p50', 'p99', 'errors', 'spread', 'server.py ÷ this')]
    for case in cases:
        subject = next((e.label for e in case.entries if e.subject), None)
        subject_runs = case.results.get(subject) if subject not in case.failures else None
        subject_rps = statistics.median(r.rps for r in subject_runs) if subject_runs else None
        for entry in case.entries:
            runs = case.results.get(entry.label)
            failure = case.failures.get(entry.label)
            if not runs:
                why = 'failed: ' + failure.splitlines()[0][:50] if failure else 'not measured'
                rows.append((case.scenario, str(case.connections), entry.label, why, '', '', '', '', ''))
                continue
            rps = statistics.median(r.rps for r in runs)
            spread = (max(r.rps for r in runs) - min(r.rps for r in runs)) / rps if rps else 0.0
            errors = str(sum(r.errors for r in runs)) + (' (crashed)' if failure else '')
            ratio = ('—' if entry.subject or subject_rps is None or not rps
                     else f'{subject_rps / rps:.2f}×')
            rows.append((case.scenario, str(case.connections), entry.label, f'{rps:,.0f}{mark}',
                         fmt_ms(statistics.median(r.p50_ms for r in runs)),
                         fmt_ms(statistics.median(r.p99_ms for r in runs)),
                         errors, f'{spread * 100:.0f}%' if len(runs) > 1 else '—', ratio))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {1, 3, 4, 5, 6, 7, 8}

    def line(row):
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        return '| ' + ' | '.join(cells) + ' |'
    sep = '|' + '|'.join(('-' * (w + 1) + ':') if i in right else ('-' * (w + 2)) for i, w in enumerate(widths)) + '|'
    return '\n'.join([line(rows[0]), sep] + [line(row) for row in rows[1:]])


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
    parser.add_argument('--bare-server', type=int, metavar='PORT', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
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
        want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))   # inherited by the servers
    except (ImportError, ValueError, OSError):
        pass


def on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.bare_server is not None:
        return run_bare_server(args.bare_server)
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
    print(f'references:  bare asyncio.Protocol (hello), http.server (static), '
          + (f'{nginx}, 1 worker (static)' if nginx else 'nginx not installed (no nginx rows)'))
    print(f'method:      {args.runs} run(s) of {args.duration} s per server, interleaved, median; '
          f'{WARMUP_S} s warm-up each; client and server share the {os.cpu_count()} CPUs')
    for i, cmd in enumerate(args.compare, 1):
        print(f'compare {i}:   {cmd}')

    interrupted = False
    with tempfile.TemporaryDirectory(prefix='bench-', ignore_cleanup_errors=True) as tmp:
        bench = Bench(args, client, tmp)
        try:
            for i, case in enumerate(cases):
                later = {e.server_key for c in cases[i + 1:] for e in c.entries}
                bench.run_case(case, later)
        except KeyboardInterrupt:
            interrupted = True
            print('\ninterrupted: stopping the servers')
        finally:
            bench.stop_all()

    elapsed = time.monotonic() - started
    print(f'\n## Results ({args.runs} run(s) of {args.duration} s, median; '
          f'{"client-bound: " if client.client_bound else ""}{client.version})\n')
    print(table(cases, client.client_bound))
    print()
    print(textwrap.fill(
        '"server.py ÷ this" is server.py\'s median req/s over the row\'s (above 1: server.py is '
        'faster); "spread" is (max - min) / median of the runs\' req/s; errors are non-2xx/3xx '
        'responses plus socket errors, summed over the runs. http.server answers HTTP/1.0 and '
        'closes every connection (listen backlog 5), so its latency includes reconnects.', 92))
    for i, cmd in enumerate(args.compare, 1):
        print(f'compare {i}: {cmd}')
    load = ' '.join(f'{x:.2f}' for x in os.getloadavg()) if hasattr(os, 'getloadavg') else '?'
    print(f'\ntotal time: {elapsed:.0f} s; load average now {load} (other work on the machine skews figures)')
    return 130 if interrupted else 0


if __name__ == '__main__':
    sys.exit(main())
