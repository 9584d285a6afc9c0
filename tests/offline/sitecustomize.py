"""Put this folder on PYTHONPATH to block network access in a Python process (and its children):
any connection to a non-loopback address raises. Tests use it to prove the demo runs offline."""
import socket

_connect = socket.socket.connect


def _guarded_connect(self, address, *args, **kwargs):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
        return _connect(self, address, *args, **kwargs)
    raise OSError(f"network blocked by tests/offline/sitecustomize.py: connect to {address!r}")


socket.socket.connect = _guarded_connect
