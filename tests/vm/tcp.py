"""Tiny TCP tools for the guest checks (python3 is in the guest's root filesystem).

`serve NAME PORT`: answer every connection with NAME. `spread HOST PORT N`: make N connections
and print how many answers came from each name; fails if any connection fails.
"""
import collections
import socket
import socketserver
import sys


class Reply(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(self.server.name.encode() + b"\n")


def serve(name, port):
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("0.0.0.0", int(port)), Reply) as srv:
        srv.name = name
        srv.serve_forever()


def spread(host, port, n):
    seen = collections.Counter()
    for _ in range(int(n)):
        # A reply from any address but the VIP would not complete the handshake on this socket,
        # so an answer here means the node translated the replies back to the VIP.
        with socket.create_connection((host, int(port)), timeout=5) as s:
            peer = s.getpeername()[0]
            if peer != host:
                sys.exit(f"reply from {peer}, not {host}")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(64)
                if not chunk:
                    break
                data += chunk
            seen[data.decode().strip() or "<empty>"] += 1
    for name, count in sorted(seen.items()):
        print(f"{name} {count}")


if __name__ == "__main__":
    {"serve": serve, "spread": spread}[sys.argv[1]](*sys.argv[2:])
