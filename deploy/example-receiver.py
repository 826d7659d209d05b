"""An example downstream receiver: prints every event sessiongate delivers, answers 204.

Verifying the Standard Webhooks signature is left to your real receiver (use the official
`standardwebhooks` or `svix` library with the target's whsec_ secret).
"""
import json
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        event = json.loads(body)
        print(event["type"], event["session"]["id"], event["id"], flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


HTTPServer(("0.0.0.0", 9000), Receiver).serve_forever()
