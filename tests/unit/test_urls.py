"""The address rule every fetch goes through (crawler pages, robots.txt, ingest sources)."""

import pytest

from tasks.urls import is_public_address


@pytest.mark.parametrize("addr", [
    "169.254.169.254", "10.0.0.1", "127.0.0.1", "::1", "fe80::1", "192.168.1.1", "::ffff:127.0.0.1",
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64 of loopback and of the cloud metadata address
    "2002:7f00:1::1", "2002:a9fe:a9fe::1", "2002:a00:1::1",  # 6to4 of loopback, metadata, 10.0.0.1
    "::127.0.0.1", "64:ff9b:1::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # IPv4-compatible, local-use NAT64, Teredo
])
def test_private_addresses_in_every_form_are_refused(addr):
    assert not is_public_address(addr)


@pytest.mark.parametrize("addr", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "64:ff9b::5db8:d822", "2002:5db8:d822::1"])
def test_public_addresses_pass_in_every_form(addr):
    assert is_public_address(addr)
