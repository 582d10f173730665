"""``pc console serve``: the application under uvicorn over TLS (1.2 at least), on a socket
bound here so that port 0 works; the chosen address is written to DATA_DIR/address as an
https:// URL (what ``pc sandbox up --console`` waits for)."""
from __future__ import annotations

import logging
import socket
import ssl

from pc_common.errors import InvalidInput
from pc_console.config import ConsoleConfig

log = logging.getLogger("pc_console")


def bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot listen on {listen}: {exc}") from None
    sock.listen(128)
    return sock


def serve(config: ConsoleConfig) -> None:
    import uvicorn
    from pc_console.app import create_app
    for p in (config.https_cert, config.https_key):
        if not p.is_file():
            raise InvalidInput(f"no such file: {p} (the console serves HTTPS only; see pc console cert)")
    app = create_app(config)
    sock = bind(config.listen)
    host, port = sock.getsockname()[:2]
    uv = uvicorn.Config(app, ssl_certfile=str(config.https_cert), ssl_keyfile=str(config.https_key),
                        ssl_version=ssl.PROTOCOL_TLS_SERVER, log_level="warning", access_log=False,
                        server_header=False, proxy_headers=False)
    server = uvicorn.Server(uv)
    url = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
    tmp = config.data_dir / "address.tmp"
    tmp.write_text(url + "\n")
    tmp.replace(config.data_dir / "address")
    log.info("console of %s serving on %s", config.party, url)
    server.run(sockets=[sock])
