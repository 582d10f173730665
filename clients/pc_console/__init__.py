"""The web console (`pc console serve`): HTTPS pages for data officers, caseworkers, the platform
operator and auditors, acting for the logged-in user with that user's own `pc` identity.

* ``config`` — console.toml; ``users`` — the user store (argon2 hashes, TOTP secrets, lockout);
  ``sessions`` — server-side sessions with idle timeout and CSRF tokens; ``trail`` — the console's
  own hash-chained audit log (``pc_common.audit``).
* ``app`` — the FastAPI application (login, logout, language, the pages of each role in
  ``pages_*``); ``charts`` — server-side SVG; ``labels`` — zh-CN and English; ``masking``.
* ``server`` — uvicorn over TLS on a socket it binds itself (port 0 works), writing its address.

Every page talks to the node and the coordinator only through ``pc_client.sdk.Federation`` with
the user's certificate, so it can never do more than that user can do with the `pc` command.
"""
