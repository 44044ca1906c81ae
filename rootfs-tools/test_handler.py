#!/usr/bin/env python3
"""faasd handler protocol in Python, standard library only.

Connects to /control.sock, receives one fd over SCM_RIGHTS, reads the HTTP request from it
up to the end of the headers (or EOF), answers "Hello from FaaS handler!" followed by the
request line, closes and exits.
"""
import array
import os
import socket
import sys

CONTROL_SOCK = "/control.sock"
HEAD = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
        b"Connection: close\r\n\r\nHello from FaaS handler!\n")


def receive_fd(sock):
    fds = array.array("i")
    _, anc, _, _ = sock.recvmsg(64, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    if not fds:
        raise OSError("recvmsg: no file descriptor in the message")
    for extra in fds[1:]:
        os.close(extra)
    return fds[0]


def main():
    try:
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ctl.connect(CONTROL_SOCK)
        fd = receive_fd(ctl)
        ctl.close()
        conn = socket.socket(fileno=fd)
        req = b""
        while b"\r\n\r\n" not in req and len(req) < 65536:
            chunk = conn.recv(8192)
            if not chunk:
                break
            req += chunk
        line = req.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
        conn.sendall(HEAD + line + b"\n")
        conn.close()
    except OSError as e:
        print(f"test_handler.py: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
