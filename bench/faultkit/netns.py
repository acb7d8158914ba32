"""A network namespace of its own for one server, joined to this host by a veth pair (iproute2
only, needs root): the host end gets <subnet>.1/24, the namespace end <subnet>.2/24. Agents,
HAProxy and Redis stay on the host; the server dials Redis over the veth (<subnet>.1). `cut`
takes the namespace's end down, as a server whose link fails: its packets go nowhere and
nothing answers the others (their packets are dropped at the host end, no reset, no
unreachable); `heal` brings it up again (the kernel restores the subnet's route with it).

    netns = Netns.create("fk")       # ip netns add, veth pair, addresses, links up
    args = netns.wrap(["-m", "msrv", "serve", ...])   # python args that exec inside it
    netns.cut(); netns.heal(); netns.delete()
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
from dataclasses import dataclass

# python -c: exec `ip netns exec NAME python ARGS...` in place (the pid, and a parent-death
# signal set before it, are kept: `ip netns exec` execs the command after entering the namespace)
EXEC_IN = (
    "import os, sys; "
    "os.execvp('ip', ['ip', 'netns', 'exec', sys.argv[1], sys.executable, *sys.argv[2:]])"
)


def available() -> bool:
    """Whether namespaces can be made here (root and iproute2)."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass(frozen=True)
class Netns:
    name: str
    subnet: str  # a.b.c: the pair's /24

    @property
    def host_end(self) -> str:
        return f"{self.name}h"

    @property
    def inner_end(self) -> str:
        return f"{self.name}n"

    @property
    def host_address(self) -> str:
        return f"{self.subnet}.1"

    @property
    def address(self) -> str:
        """The namespace's address, where its server listens."""
        return f"{self.subnet}.2"

    @classmethod
    def create(cls, prefix: str) -> Netns:
        netns = cls(f"{prefix}{secrets.token_hex(3)}", f"10.78.{random.randint(1, 250)}")
        ip("netns", "add", netns.name)
        try:
            ip("link", "add", netns.host_end, "type", "veth", "peer", "name", netns.inner_end)
            ip("link", "set", netns.inner_end, "netns", netns.name)
            ip("addr", "add", f"{netns.host_address}/24", "dev", netns.host_end)
            ip("link", "set", netns.host_end, "up")
            ip("-n", netns.name, "link", "set", "lo", "up")
            ip("-n", netns.name, "addr", "add", f"{netns.address}/24", "dev", netns.inner_end)
            ip("-n", netns.name, "link", "set", netns.inner_end, "up")
        except BaseException:
            netns.delete()
            raise
        return netns

    def wrap(self, args: list[str]) -> list[str]:
        """Arguments for `python` (msctl.children.LoggedProcess) that run `python *args` in the
        namespace, in the same process."""
        return ["-c", EXEC_IN, self.name, *args]

    def cut(self) -> None:
        ip("-n", self.name, "link", "set", self.inner_end, "down")

    def heal(self) -> None:
        ip("-n", self.name, "link", "set", self.inner_end, "up")

    def delete(self) -> None:
        """The namespace and its veth pair (both ends go with it); idempotent."""
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.host_end], capture_output=True, check=False)
