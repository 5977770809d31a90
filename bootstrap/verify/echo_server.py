#!/usr/bin/python3 -IS
"""The lab's pod workload and its client: an HTTP server that answers with the address it
sees, so a check can tell whether a packet was NATed on the way.

    echo_server.py serve --port 8080 --name nginx-worker-1
    echo_server.py fetch 10.244.1.2 8080     # prints the JSON answer; exit 1 when unreachable
    echo_server.py fetch 10.244.1.2 8080 --path /large   # the same, padded to LARGE_BYTES

The large answer spans many full-size packets: where an MTU mismatch drops them, small answers
(and ping) still pass and only this one fails.

Standard library only: it runs on the lab's nodes and internet host with the system Python.
"""

from __future__ import annotations

import argparse
import json
import socket
import socketserver
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LARGE_PATH = "/large"
LARGE_BYTES = 64 * 1024


def serve(port: int, name: str) -> None:
    class Echo(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer = {"server": name, "client": self.client_address[0]}
            if self.path == LARGE_PATH:
                answer["padding"] = "x" * LARGE_BYTES
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per probe would only fill the node's log

    with QuickServer(("0.0.0.0", port), Echo) as server:
        server.serve_forever()


class QuickServer(ThreadingHTTPServer):
    allow_reuse_address = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves its own name (getfqdn): a DNS query that a pod
        # without a route to a resolver waits ~10 s for. The name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "pod", self.server_address[1]


def fetch(host: str, port: int, timeout: float, path: str = "/") -> int:
    """GET `path` and print the answer; no urllib, to keep a probe's start-up short. An
    answer cut short (fewer bytes than its Content-Length) counts as unreachable."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
    except OSError as error:
        print(f"unreachable: {error}")
        return 1
    head, _, body = reply.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), len(body))
    if len(body) < length:
        print(f"unreachable: answer cut short, {len(body)} of {length} bytes")
        return 1
    print(body.decode())
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    serve_args = verbs.add_parser("serve")
    serve_args.add_argument("--port", type=int, default=8080)
    serve_args.add_argument("--name", default=socket.gethostname())
    fetch_args = verbs.add_parser("fetch")
    fetch_args.add_argument("host")
    fetch_args.add_argument("port", type=int)
    fetch_args.add_argument("--timeout", type=float, default=2.0)
    fetch_args.add_argument("--path", default="/")
    args = parser.parse_args(argv)
    if args.verb == "serve":
        serve(args.port, args.name)
        return 0
    return fetch(args.host, args.port, args.timeout, args.path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
