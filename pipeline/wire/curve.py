"""Optional CURVE encryption and client authentication for the sockets other systems reach.

Key layout made by ``python -m pipeline keys DIR`` (:func:`create_keys`)::

    DIR/server.key              the pipeline's public key: give it to clients
    DIR/server.key_secret       the pipeline's key pair: keep it on the pipeline host
    DIR/clients/NAME.key        a client's public key
    DIR/clients/NAME.key_secret a client's key pair: give it to that client only
    DIR/allowed/NAME.key        the allow-list: public keys of the clients let in

A bound socket with CURVE (:func:`serve`) encrypts its traffic and, through a ZAP handler
(:class:`zmq.auth.thread.ThreadAuthenticator`) running in the socket's context, accepts only
clients whose public key is in the allow-list folder (read once, when the socket is set up).
A client without a listed key completes no handshake and receives nothing. Remove a file from
``allowed/`` and restart the pipeline to revoke a client.

The chain's own sockets (the links between stages and the control plane, which cross hosts
when stages run apart) use one shared key pair instead, ``DIR/chain.key_secret``, named by
``run.chain_key`` (:class:`ChainCurve`): every bound socket is a CURVE server and every
connecting socket a CURVE client with that pair, and a ZAP handler admits only clients that
hold it. Copy the file to every host of the chain (and nowhere else): whoever lacks it can
neither read a link nor join the run.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from models.config import ConfigError

SERVER = "server"
CHAIN = "chain"


@dataclasses.dataclass(frozen=True)
class CurveKeys:
    """CURVE on a socket that this process binds (made by ``python -m pipeline keys DIR``).

    Attributes
    ----------
    secret_key : str
        The server key pair file, e.g. ``keys/server.key_secret``.
    allowed : str
        Folder of the public keys (``*.key``) of the clients let in.
    """

    secret_key: str
    allowed: str


def create_keys(folder: str | Path, clients: Sequence[str] = ("client",)) -> dict[str, Path]:
    """Create a server key pair and one key pair per client, and list the clients as allowed.

    Existing files of the same names are replaced.

    Returns
    -------
    dict of str -> Path
        ``server_public``, ``server_secret``, ``allowed``, ``chain_secret`` (the chain's own
        pair, :class:`ChainCurve`) and ``client:NAME`` (secret file).
    """
    if not clients:
        raise ConfigError("name at least one client (e.g. --client viewer)")
    folder = Path(folder)
    client_dir, allowed = folder / "clients", folder / "allowed"
    for sub in (folder, client_dir, allowed):
        sub.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(folder, SERVER)
    _, chain_secret = zmq.auth.create_certificates(folder, CHAIN)
    out = {"server_public": Path(public), "server_secret": Path(secret), "allowed": allowed,
           "chain_secret": Path(chain_secret)}
    for name in clients:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"client name {name!r} must be a plain file name")
        client_public, client_secret = zmq.auth.create_certificates(client_dir, name)
        shutil.copyfile(client_public, allowed / Path(client_public).name)
        out[f"client:{name}"] = Path(client_secret)
    return out


def _load(path: str | Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"CURVE key file {path} does not exist; create keys with "
                          f"`python -m pipeline keys DIR`")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a ZeroMQ certificate ({exc})") from exc
    if need_secret and secret is None:
        raise ConfigError(f"{path} holds only a public key; use the .key_secret file")
    return public, secret


def serve(ctx: zmq.Context, sock: zmq.Socket, keys: CurveKeys) -> ThreadAuthenticator:
    """Make ``sock`` (not yet bound) a CURVE server that admits only the allowed clients.

    Returns
    -------
    ThreadAuthenticator
        Running in ``ctx``; call ``stop()`` before terminating the context.

    Raises
    ------
    ConfigError
        A key file or the allow-list folder is missing or invalid.
    """
    public, secret = _load(keys.secret_key, need_secret=True)
    allowed = Path(keys.allowed)
    if not allowed.is_dir() or not any(allowed.glob("*.key")):
        raise ConfigError(f"CURVE allow-list {allowed} is missing or holds no *.key file; "
                          f"copy the clients' public keys there")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(allowed))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


def connect_client(sock: zmq.Socket, server_key: str | Path, client_secret: str | Path) -> None:
    """Set up ``sock`` (not yet connected) as a CURVE client of the server ``server_key``.

    Raises
    ------
    ConfigError
        A key file is missing or invalid.
    """
    server_public, _ = _load(server_key, need_secret=False)
    public, secret = _load(client_secret, need_secret=True)
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def close_served(sock: zmq.Socket | None, auth, ctx: zmq.Context | None) -> None:
    """Close a served socket (linger 0), stop its authenticator, then end its context.

    Each argument may be None (never opened).
    """
    if sock is not None:
        sock.close(linger=0)
    if auth is not None:
        auth.stop()
    if ctx is not None:
        ctx.term()


def check_chain_key(path: str | Path) -> None:
    """Raise :class:`ConfigError` unless ``path`` is a key pair file (``run.chain_key``)."""
    _load(path, need_secret=True)


class _ChainMembers:
    """ZAP credentials check: only the chain's own public key is let in."""

    def __init__(self, public: bytes) -> None:
        self.public = public

    def callback(self, _domain: str, key: bytes) -> bool:
        return key == self.public


class ChainCurve:
    """CURVE on the chain's own links and control sockets, from one shared key pair
    (``run.chain_key``; see the module docstring). One per ZeroMQ context: it runs that
    context's ZAP handler.

    Raises
    ------
    ConfigError
        The key file is missing or holds no secret key.
    """

    def __init__(self, ctx: zmq.Context, secret_file: str | Path) -> None:
        self.public, self.secret = _load(secret_file, need_secret=True)
        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()
        self._auth.configure_curve_callback(domain="*",
                                            credentials_provider=_ChainMembers(self.public))

    def server(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (before its bind) a CURVE server of the chain."""
        sock.curve_secretkey, sock.curve_publickey = self.secret, self.public
        sock.curve_server = True

    def client(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (before its connect) a CURVE client of the chain."""
        sock.curve_serverkey = self.public
        sock.curve_secretkey, sock.curve_publickey = self.secret, self.public

    def stop(self) -> None:
        """Stop the ZAP handler (before the context is terminated)."""
        self._auth.stop()
