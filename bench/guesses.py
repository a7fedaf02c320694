#!/usr/bin/env python3
"""Server memory during a crowd of parallel password guesses (issue 23, part 3).

Starts `parley server` (plain TCP, temporary folders), registers the accounts to guess at,
then opens GUESSES connections at once, each from a loopback address of its own
(127.0.x.y), and sends each a `hello` with a wrong password. Meanwhile it samples the
server's resident memory (VmRSS in /proc) every 10 ms, and prints the resting RSS, the peak
during the guesses, the kernel's high-water mark (VmHWM), how long until every guess was
answered, and the answers by code.

    python3 bench/guesses.py target/release/parley            # 256 guesses at one name
    python3 bench/guesses.py target/release/parley --names 256  # at 256 names, one each

Guesses at one name wait in line behind each other, so one name shows the line; guesses
at many names show the server-wide bound on Argon2 checks running at once.
"""

import argparse
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time


def frame(message):
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body) + 1) + b"\x01" + body


def read_control(sock, buffer):
    """The next control message on `sock` as a dict (pings are answered), or None at EOF."""
    while True:
        while len(buffer) >= 4:
            (length,) = struct.unpack(">I", buffer[:4])
            if len(buffer) < 4 + length:
                break
            kind, body = buffer[4], bytes(buffer[5 : 4 + length])
            del buffer[: 4 + length]
            if kind == 1:
                return json.loads(body)
            if kind == 3:
                sock.sendall(b"\x00\x00\x00\x01\x04")
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer.extend(chunk)


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def register(port, name, password):
    with socket.create_connection(("127.0.0.1", port)) as sock:
        buffer = bytearray()
        sock.sendall(frame({"id": 0, "type": "hello", "versions": [1], "name": name}))
        assert read_control(sock, buffer)["type"] == "ok"
        sock.sendall(frame({"id": 1, "type": "register", "password": password}))
        reply = read_control(sock, buffer)
        while reply.get("id") != 1:  # events (others arriving, leaving) come between
            reply = read_control(sock, buffer)
        assert reply["type"] == "ok", reply
        sock.sendall(frame({"id": 2, "type": "quit"}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parley", help="the parley binary")
    parser.add_argument("--guesses", type=int, default=256)
    parser.add_argument("--names", type=int, default=1, help="accounts the guesses spread over")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen(
            [args.parley, "server", "0", "--host", "127.0.0.1", "--no-tls",
             "--data-dir", os.path.join(folder, "data"),
             "--shared-dir", os.path.join(folder, "shared")],
            stdout=subprocess.PIPE, text=True,
            env={**os.environ, "RUST_LOG": "error"},
        )
        try:
            line = server.stdout.readline()
            port = int(re.search(r":(\d+) ", line).group(1))
            names = [f"user{i}" for i in range(args.names)]
            for name in names:
                register(port, name, "correct horse")
            time.sleep(1)
            resting = rss_kib(server.pid)

            samples = []
            done = threading.Event()

            def sample():
                while not done.is_set():
                    samples.append(rss_kib(server.pid))
                    time.sleep(0.01)

            sockets = []
            for i in range(args.guesses):
                sock = socket.socket()
                sock.bind((f"127.0.{1 + i // 250}.{1 + i % 250}", 0))
                sock.connect(("127.0.0.1", port))
                sockets.append(sock)
            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.monotonic()
            for i, sock in enumerate(sockets):
                hello = {"id": 0, "type": "hello", "versions": [1],
                         "name": names[i % len(names)], "password": "a wrong guess"}
                sock.sendall(frame(hello))
            codes = {}
            lock = threading.Lock()

            def answer(sock):
                reply = read_control(sock, bytearray())
                code = "closed" if reply is None else reply.get("code", reply["type"])
                with lock:
                    codes[code] = codes.get(code, 0) + 1

            readers = [threading.Thread(target=answer, args=(s,)) for s in sockets]
            for reader in readers:
                reader.start()
            for reader in readers:
                reader.join()
            elapsed = time.monotonic() - started
            done.set()
            sampler.join()
            peak = max(samples)
            hwm = rss_kib(server.pid, "VmHWM")
            print(f"{args.guesses} guesses at {args.names} name(s), "
                  f"all answered in {elapsed:.2f} s: {codes}")
            print(f"server RSS: resting {resting / 1024:.1f} MiB, "
                  f"peak during the guesses {peak / 1024:.1f} MiB, VmHWM {hwm / 1024:.1f} MiB")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    sys.exit(main())
