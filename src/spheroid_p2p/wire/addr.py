"""Peer addresses: ``host:port`` text parsed into a validated value (spec: 02 §2.4).

Every address a peer sends (a record's ``addrs``, a ``HELLO``'s listen addresses, a route's
hop addresses, a traversal's ``reply``) is checked here when its message is decoded, so the
layers above never see one they cannot dial. The grammar is deliberately narrow:

* ``host`` is a dotted IPv4 address, a bracketed IPv6 address (``[::1]``) or a DNS name
  (letters, digits, ``-`` and ``.``; labels of 1..63 characters, 253 in all);
* ``port`` is a decimal integer in 1..65535 (0, "any free port", only where we listen).

An address that breaks it is a ``MALFORMED_MESSAGE`` (``BadAddressError``) in the message that
carried it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from spheroid_p2p.errors import ErrorCode, LocalProtocolError
from spheroid_p2p.params import MAX_ADDR_LEN, MAX_ADDRS

__all__ = ["BadAddressError", "PeerAddr", "check_addr", "check_addrs", "parse_addr"]

_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


class BadAddressError(LocalProtocolError):
    """Text that is not a ``host:port`` address; its code is ``MALFORMED_MESSAGE``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorCode.MALFORMED_MESSAGE)


@dataclass(frozen=True, slots=True)
class PeerAddr:
    """A validated address: ``host`` without brackets, ``port`` in 0..65535."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            return isinstance(ipaddress.ip_address(host[1:-1]), ipaddress.IPv6Address)
        except ValueError:
            return False
    if not host or len(host) > 253:
        return False
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    if host[-1:].isdigit() and all(c.isdigit() or c == "." for c in host):
        return False  # looks like IPv4 but is not one ("1.2.3", "999.0.0.1")
    return all(_LABEL.match(label) for label in host.split("."))


def parse_addr(text: object, allow_any_port: bool = False) -> PeerAddr:
    """``host:port`` -> :class:`PeerAddr`; raises :class:`BadAddressError` naming the text."""
    if not isinstance(text, str) or len(text) > MAX_ADDR_LEN:
        raise BadAddressError(f"not a host:port address: {str(text)[:64]!r}")
    host, sep, port = text.rpartition(":")
    low = 0 if allow_any_port else 1
    if (
        not sep
        or not port.isascii()
        or not port.isdigit()
        or len(port) > 5
        or not low <= int(port) <= 65535
        or not _valid_host(host)
    ):
        raise BadAddressError(f"not a host:port address: {text[:64]!r}")
    return PeerAddr(host.strip("[]"), int(port))


def check_addr(name: str, text: object) -> str:
    """Validate one address field at decode; returns it unchanged."""
    try:
        parse_addr(text)
    except BadAddressError as exc:
        raise BadAddressError(f"{name}: {exc.args[0]}") from None
    assert isinstance(text, str)
    return text


def check_addrs(name: str, values: object) -> None:
    """Validate a list of addresses (at most ``MAX_ADDRS``)."""
    if not isinstance(values, tuple) or len(values) > MAX_ADDRS:
        raise BadAddressError(f"{name}: at most {MAX_ADDRS} addresses")
    for value in values:
        check_addr(name, value)
