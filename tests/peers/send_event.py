"""Send one event through the real sentry-sdk and report whether it was delivered.

usage: send_event.py [DSN [MESSAGE]]
  DSN             or env SENTRY_DSN, e.g. https://publickey@127.0.0.1:8443/42
  MESSAGE         defaults to "ssogate-test-event"
  SSOGATE_TEST_CA env: PEM bundle to trust, passed to sentry_sdk.init(ca_certs=...)

The SDK's own HttpTransport (urllib3) does the sending; nothing in it is replaced.
The SDK never reports a failed send to the caller, so delivery is judged from logs:
  - urllib3 logs every response it receives ("POST /api/42/envelope/ HTTP/1.1" 200)
    on logger "urllib3.connectionpool": the real status on the wire, per hop;
  - the SDK logs every loss on "sentry_sdk.errors" (unexpected status, network or TLS
    error, rate limit, flush time-out).
Exit 0 only if an envelope POST got a 2xx, every response was 2xx (a redirect, say
to a login page, counts as a failure even if urllib3 followed it to a 200) and the
SDK logged no error or warning. Exit 1 otherwise, 2 on bad usage.
"""

import logging
import os
import re
import sys

import sentry_sdk

MARKER = "ssogate-test-event"
RESPONSE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" (?P<status>\d{3})')


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.responses = []  # (method, path, status)
        self.problems = []

    def emit(self, record):
        msg = record.getMessage()
        m = RESPONSE.search(msg) if record.name.startswith("urllib3") else None
        if m:
            self.responses.append((m["method"], m["path"], int(m["status"])))
        elif record.name == "sentry_sdk.errors" and record.levelno >= logging.WARNING:
            self.problems.append(msg)


def main():
    args = sys.argv[1:]
    dsn = args[0] if args else os.environ.get("SENTRY_DSN")
    message = args[1] if len(args) > 1 else MARKER
    if not dsn:
        print(__doc__, file=sys.stderr)
        return 2
    ca = os.environ.get("SSOGATE_TEST_CA") or None

    rec = Recorder()
    for name in ("urllib3", "sentry_sdk.errors"):
        logging.getLogger(name).addHandler(rec)
    logging.getLogger("urllib3").setLevel(logging.DEBUG)

    print(f"send_event: sentry-sdk {sentry_sdk.VERSION}, dsn {dsn}, ca_certs {ca}")
    # debug=True: the SDK's own log goes to stderr (and keeps its logger at DEBUG).
    sentry_sdk.init(
        dsn=dsn,
        ca_certs=ca,
        debug=True,
        auto_enabling_integrations=False,
        shutdown_timeout=0,
    )
    event_id = sentry_sdk.capture_message(message)
    print(f"send_event: captured message {message!r} as event {event_id}")
    sentry_sdk.flush(timeout=10)
    sentry_sdk.get_client().close(timeout=0)

    for method, path, status in rec.responses:
        print(f"send_event: {method} {path} -> {status}")
    for problem in rec.problems:
        print(f"send_event: sdk reported: {problem.splitlines()[0]}")
    delivered = any(
        m == "POST" and re.search(r"/api/[0-9]+/envelope/", p) and 200 <= s < 300
        for m, p, s in rec.responses
    )
    ok = delivered and not rec.problems and all(200 <= s < 300 for *_, s in rec.responses)
    print(f"send_event: {'delivered' if ok else 'NOT delivered'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
