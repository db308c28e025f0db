"""Run a command with the loopback interface up: the first step inside a fresh network namespace
(``distributed.loopback_only_command``), where ``lo`` starts down and is the only interface.

    python -m alti_onnx.corpus.loopback PROGRAM [ARGS...]
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import sys

#: ioctl requests and the flag of <linux/sockios.h> and <net/if.h>
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | _IFF_UP, b""))


def main() -> None:
    bring_up_loopback()
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
