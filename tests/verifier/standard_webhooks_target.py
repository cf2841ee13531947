"""A webhook target that checks alert-relay's signatures with the
`standardwebhooks` package from PyPI: a real third-party verifier, not ours.

Usage: standard_webhooks_target.py SECRET LOG

Listens on 127.0.0.1 (a free port, printed on the first line of stdout).
For every POST it appends one JSON line to LOG:
  valid             the request verifies as received
  tampered_rejected the same request with one byte of the body changed fails
  stale_rejected    the same request with webhook-timestamp 10 minutes older
                    fails (the library's tolerance is 5 minutes)
  id, timestamp     the webhook-id and webhook-timestamp headers
  receiver          the X-Alert-Relay-Receiver header
and answers 204 when valid, else 400 with the library's message.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

SECRET, LOG = sys.argv[1], sys.argv[2]
HOOK = Webhook(SECRET)


def verifies(body, headers):
    try:
        HOOK.verify(body, headers, json_parse=False)
        return True, ""
    except WebhookVerificationError as e:
        return False, str(e)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        valid, why = verifies(body, headers)
        tampered = body[:-1] + (b" " if body[-1:] != b" " else b"\n")
        stale = dict(headers)
        try:
            stale["webhook-timestamp"] = str(int(headers.get("webhook-timestamp", "0")) - 600)
        except ValueError:
            pass
        record = {
            "valid": valid,
            "why": why,
            "tampered_rejected": not verifies(tampered, headers)[0],
            "stale_rejected": not verifies(body, stale)[0],
            "id": headers.get("webhook-id"),
            "receiver": headers.get("x-alert-relay-receiver"),
            "timestamp": headers.get("webhook-timestamp"),
        }
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        answer = b"" if valid else why.encode()
        self.send_response(204 if valid else 400)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
