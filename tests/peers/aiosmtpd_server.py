"""A real, outside SMTP server for the integration tests: aiosmtpd with STARTTLS, implicit TLS
and AUTH as asked on the command line.

Each received message is written to --outdir as NNNNNN.eml (the raw data) plus NNNNNN.json (the
envelope), the .json last and renamed into place, so a reader that sees the .json sees both.
Prints "READY <port>" on stdout once it accepts connections, then runs until killed.
"""

import argparse
import itertools
import json
import os
import ssl
import sys
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--outdir", required=True)
    p.add_argument("--mode", choices=["plain", "starttls", "implicit"], default="plain")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--require-starttls", action="store_true")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--auth-exclude", action="append", default=[],
                   help="an AUTH mechanism not to offer (repeatable)")
    p.add_argument("--auth-in-clear", action="store_true",
                   help="offer AUTH before TLS (auth_require_tls=False)")
    return p.parse_args()


class Recorder:
    """Writes every message to the output directory."""

    def __init__(self, outdir):
        self.outdir = outdir
        self.counter = itertools.count(1)
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            n = next(self.counter)
        base = os.path.join(self.outdir, "%06d" % n)
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content or b"")
        auth = session.auth_data
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            # session.ssl is set by STARTTLS only; implicit TLS shows on the transport.
            "tls": session.ssl is not None
            or server.transport.get_extra_info("ssl_object") is not None,
            "auth_user": auth.login.decode() if isinstance(auth, LoginPassword) else None,
        }
        with open(base + ".json.tmp", "w") as f:
            json.dump(meta, f)
        os.rename(base + ".json.tmp", base + ".json")
        return "250 2.0.0 Message accepted"


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login.decode() == user
              and auth_data.password.decode() == password)
        return AuthResult(success=ok, handled=False, auth_data=auth_data)
    return check


def main():
    args = parse_args()
    kwargs = {}
    context = None
    if args.mode in ("starttls", "implicit"):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    if args.mode == "starttls":
        kwargs["tls_context"] = context
        kwargs["require_starttls"] = args.require_starttls
    if args.user:
        kwargs["authenticator"] = authenticator(args.user, args.password)
        kwargs["auth_required"] = True
        # With implicit TLS aiosmtpd does not count the session as encrypted for AUTH, so AUTH
        # must be allowed "in clear" there (aio-libs/aiosmtpd#281).
        kwargs["auth_require_tls"] = not (args.auth_in_clear or args.mode == "implicit")
        if args.auth_exclude:
            kwargs["auth_exclude_mechanism"] = args.auth_exclude
    controller = Controller(
        Recorder(args.outdir),
        hostname="127.0.0.1",
        port=args.port,
        ssl_context=context if args.mode == "implicit" else None,
        server_hostname="localhost",
        ready_timeout=20,
        **kwargs,
    )
    controller.start()
    print("READY %d" % args.port, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    sys.exit(main())
