"""CurveZMQ for the links between stages: key folders, secured sockets, refused peers.

Keys folder (written by `emojimation keys generate DIR [--name NAME]`, in pyzmq's
`zmq.auth.create_certificates` format):

  DIR/server.key, DIR/server.key_secret   the pair every BINDING tcp:// socket uses (Curve server)
  DIR/client.key, DIR/client.key_secret   the pair CONNECTING tcp:// sockets use (Curve client);
                                          clients also read DIR/server.key to know the server
  DIR/authorized/*.key                    public keys of the clients allowed in (ZAP allow-list)
  DIR/NAME.key, DIR/NAME.key_secret       optional extra client pairs (`--name`), already in
                                          authorized/; copy one to another host as its client.key(_secret)

A host that only connects needs client.key, client.key_secret and server.key; a host that
binds needs server.key, server.key_secret and authorized/. ipc:// and inproc:// sockets are
local and stay plain. Binding sockets are watched with ZMQ socket monitors: each refused
handshake is counted by reason and logged (rate-limited) without any key material.

File modes: the keys folder is tightened to 0700 when this user owns it; a secret key file
that others may read, or a public key, allow-list or folder that others may write (they could
plant a key), is refused with one line. Every socket gets a maximum message size
(`zmq.MAXMSGSIZE`): a peer cannot make a stage buffer more than that. A plain (keyless) tcp://
bind on anything but a loopback address is refused unless `insecure=True`, which logs one
warning line.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from core.errors import ConfigError

logger = logging.getLogger(__name__)

SERVER, CLIENT, AUTHORIZED = "server", "client", "authorized"
ZAP_DOMAIN = "emojimation"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LOG_EVERY_S = 10.0  # at most one refusal warning per socket and reason in this time
# Handshake failures on a bound Curve socket, by the reason label they are counted under.
# A peer without a key shows up as a protocol error or as a handshake broken off (whichever
# side notices the mechanism mismatch first), so the two share one label.
_REFUSALS = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "unauthorized",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake",
}
_EXPLAIN = {
    "unauthorized": "its key is not in the authorized folder",
    "handshake": "no key, the wrong server key, or a broken Curve handshake",
}
# pyzmq's authenticator logs client keys and credentials; its records go to a logger that
# never emits (we check the folder ourselves and count refusals from socket events).
_ZAP_LOG = logging.getLogger("core.security.zap")
_ZAP_LOG.setLevel(logging.CRITICAL + 1)
_ZAP_LOG.propagate = False


# The largest message part a socket accepts. The biggest real one is a frame at the pipeline's
# max_side: 1280 x 1280 x 3 bytes = 4.9 MB (a full-size 8K frame, with max_side 0, is 100 MB:
# pass a larger limit for that). A bigger part closes the sender's connection.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SECRET_MODE_MASK = 0o077  # a secret key file: nobody but its owner may read or write it
SHARED_WRITE_MASK = 0o022  # public keys, the allow-list and the folders: nobody else may write


class InsecureBindError(ConfigError):
    """A plain tcp:// bind beyond loopback without the explicit `insecure` setting (a usage error)."""


def is_tcp(address: str) -> bool:
    return address.strip().lower().startswith("tcp://")


def tcp_host(address: str) -> str:
    """The host (or interface) of a tcp:// endpoint: `tcp://[::1]:5555` -> `::1`, `tcp://*:5` -> `*`."""
    rest = address.strip()[len("tcp://"):]
    rest = rest.rsplit(";", 1)[-1]  # `tcp://source;destination` (connect only)
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return host.strip("[]")


def is_loopback_endpoint(address: str) -> bool:
    """True for tcp:// endpoints on 127.0.0.0/8, ::1, `localhost` or the `lo` interface; False
    for `*`, 0.0.0.0, any other address, name or interface."""
    host = tcp_host(address).lower()
    if host in ("localhost", "lo", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_bind_problem(address: str, curve_dir: str, insecure: bool) -> str | None:
    """Why binding `address` is refused (one line), or None: a tcp:// bind beyond loopback must
    be encrypted (`curve_dir`) unless `insecure` says otherwise."""
    if curve_dir or insecure or not is_tcp(address) or is_loopback_endpoint(address):
        return None
    return (f"{address}: a plain tcp:// bind beyond loopback lets anyone on the network read and inject "
            f"frames; give a keys folder (--curve-dir, `emojimation keys generate DIR`) or --insecure")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tighten_folder(folder: Path) -> None:
    """Make a keys folder 0700 when this user owns it; an open folder owned by someone else is
    refused only if others may write to it (they could plant keys)."""
    info = folder.stat()
    if info.st_uid == os.geteuid():
        if stat.S_IMODE(info.st_mode) & SECRET_MODE_MASK:
            folder.chmod(0o700)
            logger.info("curve_dir %s: folder tightened to 0700", folder)
    elif stat.S_IMODE(info.st_mode) & SHARED_WRITE_MASK and not info.st_mode & stat.S_ISVTX:
        raise ConfigError(f"curve_dir {folder}: folder is writable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                          f"chmod 700 {folder}")


def check_key_file(folder: Path, path: Path, secret: bool) -> None:
    """One-line ConfigError when a secret key file is open to others, or a public one writable."""
    mode = _mode(path)
    if secret and mode & SECRET_MODE_MASK:
        raise ConfigError(f"curve_dir {folder}: {path.relative_to(folder)} is open to other users "
                          f"(mode {mode:04o}); chmod 600 {path}")
    if not secret and mode & SHARED_WRITE_MASK:
        raise ConfigError(f"curve_dir {folder}: {path.relative_to(folder)} is writable by other users "
                          f"(mode {mode:04o}); chmod 644 {path}")


# --- keys folder ------------------------------------------------------------------------------
@dataclass
class Generated:
    name: str
    public: Path
    secret: Path
    created: bool  # False: an existing pair was kept


def generate_keys(directory: str | Path, name: str | None = None) -> list[Generated]:
    """Create the server and client pairs (and NAME's) where missing; never overwrite a key.

    Secret files are readable by their owner only. Client public keys are copied into
    DIR/authorized so binding stages accept them.
    """
    folder = Path(directory)
    pairs = [SERVER, CLIENT]
    if name:
        if not _NAME.match(name) or name in (SERVER, CLIENT, AUTHORIZED):
            raise ConfigError(f"key name {name!r}: use letters, digits, '.', '_' or '-' "
                              f"(not {SERVER!r}, {CLIENT!r} or {AUTHORIZED!r})")
        pairs.append(name)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        (folder / AUTHORIZED).mkdir(exist_ok=True, mode=0o700)
        for existing in (folder, folder / AUTHORIZED):  # mkdir leaves an existing folder as it was
            tighten_folder(existing)
    except OSError as error:
        raise ConfigError(f"{folder}: cannot create the keys folder ({error.strerror or error})") from None
    results = []
    for pair in pairs:
        public, secret = folder / f"{pair}.key", folder / f"{pair}.key_secret"
        created = False
        if not public.exists() and not secret.exists():
            previous = os.umask(0o077)  # the secret file is never readable by others, not even briefly
            try:
                zmq.auth.create_certificates(str(folder), pair)
            except OSError as error:
                raise ConfigError(f"{folder}: cannot write keys ({error.strerror or error})") from None
            finally:
                os.umask(previous)
            public.chmod(0o644)
            created = True
        elif secret.exists() and not public.exists():
            raise ConfigError(f"{secret} exists without {public.name}: remove it or restore the public key")
        if pair != SERVER and public.exists():
            shutil.copyfile(public, folder / AUTHORIZED / public.name)
        results.append(Generated(pair, public, secret, created))
    return results


class CurveKeys:
    """The keys in a folder, read on first use; one-line ConfigErrors for anything missing."""

    def __init__(self, directory: str | Path) -> None:
        self.folder = Path(directory)
        if not self.folder.is_dir():
            raise ConfigError(f"curve_dir {self.folder}: no such folder "
                              f"(create one with `emojimation keys generate {self.folder}`)")
        if not os.access(self.folder, os.R_OK | os.X_OK):
            raise ConfigError(f"curve_dir {self.folder}: folder is not readable")
        try:
            tighten_folder(self.folder)
        except OSError as error:
            raise ConfigError(f"curve_dir {self.folder}: cannot set the folder's mode "
                              f"({error.strerror or error})") from None
        self._pairs: dict[str, tuple[bytes, bytes | None]] = {}

    def _load(self, name: str, secret: bool) -> tuple[bytes, bytes | None]:
        key = (name, secret)
        if key not in self._pairs:
            path = self.folder / (f"{name}.key_secret" if secret else f"{name}.key")
            if not path.is_file():
                raise ConfigError(f"curve_dir {self.folder}: {path.name} is missing "
                                  f"(create it with `emojimation keys generate {self.folder}`)")
            check_key_file(self.folder, path, secret)
            try:
                public, secret_key = zmq.auth.load_certificate(str(path))
            except (OSError, ValueError) as error:
                raise ConfigError(f"curve_dir {self.folder}: cannot read {path.name} "
                                  f"({getattr(error, 'strerror', None) or type(error).__name__})") from None
            if public is None or (secret and secret_key is None):
                raise ConfigError(f"curve_dir {self.folder}: {path.name} holds no {'secret' if secret else 'public'} key")
            self._pairs[key] = (public, secret_key)
        return self._pairs[key]

    def server_pair(self) -> tuple[bytes, bytes]:
        public, secret = self._load(SERVER, secret=True)
        return public, secret  # type: ignore[return-value]

    def client_pair(self) -> tuple[bytes, bytes]:
        public, secret = self._load(CLIENT, secret=True)
        return public, secret  # type: ignore[return-value]

    def server_public(self) -> bytes:
        return self._load(SERVER, secret=False)[0]

    def authorized(self) -> Path:
        folder = self.folder / AUTHORIZED
        if not folder.is_dir():
            raise ConfigError(f"curve_dir {self.folder}: the {AUTHORIZED}/ folder of client keys is missing")
        if not os.access(folder, os.R_OK | os.X_OK):
            raise ConfigError(f"curve_dir {self.folder}: {AUTHORIZED}/ is not readable")
        try:
            tighten_folder(folder)
        except OSError as error:
            raise ConfigError(f"curve_dir {self.folder}: cannot set the mode of {AUTHORIZED}/ "
                              f"({error.strerror or error})") from None
        for key in folder.glob("*.key"):  # anyone who could write here could let themselves in
            check_key_file(self.folder, key, secret=False)
        if not any(folder.glob("*.key")):
            logger.warning("curve_dir %s: %s/ holds no client keys; every peer will be refused",
                           self.folder, AUTHORIZED)
        return folder


# --- sockets ----------------------------------------------------------------------------------
class LinkSecurity:
    """Binds and connects a stage's sockets: Curve on tcp:// when a keys folder is given.

    Use `bind`/`connect` for every endpoint of every socket (PUSH, PULL, PUB, SUB alike), then
    `start()` once all sockets exist (it starts the thread that watches bound Curve sockets).
    To finish: `stop_watching()`, close the sockets, then `close()` (the authenticator outlives
    the sockets it guards), then terminate the context.

    Every socket passed in gets `zmq.MAXMSGSIZE` = `max_message_bytes`. Without keys, a tcp://
    bind beyond loopback raises InsecureBindError unless `insecure` is True (then it is logged
    once, as a warning).
    """

    def __init__(self, context: zmq.Context, stage: str, curve_dir: str = "",
                 on_refused: Callable[[str], None] = lambda reason: None, *, insecure: bool = False,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.context = context
        self.stage = stage
        self.keys = CurveKeys(curve_dir) if curve_dir else None
        self.on_refused = on_refused
        self.insecure = insecure
        self.max_message_bytes = max_message_bytes
        self._warned_insecure = False
        self._started = False
        self.authenticator: ThreadAuthenticator | None = None
        self._monitors: dict[zmq.Socket, str] = {}  # monitor socket -> the bound address it watches
        self._monitored: list[zmq.Socket] = []  # the bound Curve sockets being watched
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_logged: dict[tuple[str, str], float] = {}
        self._unlogged: dict[tuple[str, str], int] = {}

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def _limit(self, sock: zmq.Socket) -> None:
        if self.max_message_bytes > 0:
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)

    def bind(self, sock: zmq.Socket, address: str) -> None:
        if self.keys is None and is_tcp(address) and not is_loopback_endpoint(address):
            problem = plain_bind_problem(address, "", self.insecure)
            if problem:
                raise InsecureBindError(f"{self.stage}: {problem}")
            if not self._warned_insecure:
                self._warned_insecure = True
                logger.warning("%s: --insecure: %s is bound without encryption or authentication; anyone who "
                               "can reach it can read and inject messages", self.stage, address)
        self._limit(sock)
        if self.keys is not None and is_tcp(address):
            public, secret = self.keys.server_pair()
            self._start_authenticator()
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.curve_server = True
            # Without enforcement a Curve server whose ZAP handler is gone accepts any client.
            sock.zap_domain = ZAP_DOMAIN.encode()
            sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
            if not any(sock is watched for watched in self._monitored):
                self._monitored.append(sock)
                self._monitors[sock.get_monitor_socket(_refusal_events())] = address
                if self._started:  # a socket bound after start() (e.g. a preview PUB) is watched too
                    self.start()
        elif self.keys is not None:  # back to the NULL mechanism, without ZAP, for a local endpoint
            sock.curve_server = False
            sock.zap_domain = b""
            sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 0)
        try:
            sock.bind(address)
        except zmq.ZMQError as error:
            raise OSError(f"{self.stage}: cannot bind {address} ({error})") from None

    def connect(self, sock: zmq.Socket, address: str) -> None:
        self._limit(sock)
        if self.keys is not None and is_tcp(address):
            public, secret = self.keys.client_pair()
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.curve_serverkey = self.keys.server_public()
        elif self.keys is not None:
            sock.curve_server = False
        try:
            sock.connect(address)
        except zmq.ZMQError as error:
            raise OSError(f"{self.stage}: cannot connect to {address} ({error})") from None

    def _start_authenticator(self) -> None:
        if self.authenticator is not None:
            return
        authorized = self.keys.authorized()
        # Started before the first bind: a Curve server with no ZAP handler would accept any client.
        self.authenticator = ThreadAuthenticator(self.context, log=_ZAP_LOG)
        self.authenticator.start()
        self.authenticator.configure_curve(domain=ZAP_DOMAIN, location=str(authorized))

    def start(self) -> None:
        self._started = True
        if self._monitors and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name=f"{self.stage}-curve-monitor", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        poller = zmq.Poller()
        registered: set[zmq.Socket] = set()
        try:
            while not self._stopping.is_set():
                for monitor in list(self._monitors):  # sockets bound after start() join here
                    if monitor not in registered:
                        poller.register(monitor, zmq.POLLIN)
                        registered.add(monitor)
                for monitor, _ in poller.poll(200):
                    try:
                        event = recv_monitor_message(monitor, flags=zmq.NOBLOCK)
                    except (zmq.Again, ValueError):
                        continue
                    reason = _REFUSALS.get(event["event"])
                    if reason is not None:
                        self._refused(reason, self._monitors[monitor])
        except zmq.ZMQError as error:  # the context is going away
            logger.debug("%s: monitor stopped (%s)", self.stage, error)
        finally:
            for monitor in self._monitors:
                monitor.close(linger=0)

    def _refused(self, reason: str, address: str) -> None:
        self.on_refused(reason)
        key = (address, reason)
        now = time.monotonic()
        self._unlogged[key] = self._unlogged.get(key, 0) + 1
        if now - self._last_logged.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            count = self._unlogged.pop(key)
            self._last_logged[key] = now
            logger.warning("%s: refused %d peer connection%s on %s: %s", self.stage, count,
                           "" if count == 1 else "s", address, _EXPLAIN[reason])

    def stop_watching(self) -> None:
        """Stop the monitor thread (before the watched sockets are closed)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        elif self._monitors:
            for monitor in self._monitors:
                monitor.close(linger=0)
        self._monitors = {}
        for sock in self._monitored:
            if not sock.closed:
                try:
                    sock.disable_monitor()
                except zmq.ZMQError:
                    pass
        self._monitored = []

    def close(self) -> None:
        """Stop watching and authenticating (after the guarded sockets are closed, before the
        context is terminated)."""
        self.stop_watching()
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None


def _refusal_events() -> int:
    return zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
