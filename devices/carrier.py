"""The carriers a SIM can be on, and what its ICCID and IMSI say about it.

mgwsim's ICCIDs are ``prefix(7) + account(2) + fleet(3) + index(7)``: the prefix names the carrier
(KDDI or SoftBank, the networks of the service), and the metering tariff maps the same prefixes to
data-pack pools. The IMSI and MSISDN a capture shows are derived from the ICCID.
"""

from __future__ import annotations

from typing import Final

CARRIER_PREFIXES: Final = {"kddi": "8981300", "softbank": "8981200"}
"""ICCID prefix per carrier."""
MOBILE_NETWORK_CODES: Final = {"kddi": "51", "softbank": "20"}
"""MNC per carrier (MCC 440, Japan)."""


def carrier_of(iccid: str) -> str:
    """The carrier of an mgwsim ICCID (by its prefix); ``kddi`` when the prefix is not one of ours."""
    return next((name for name, prefix in CARRIER_PREFIXES.items() if iccid.startswith(prefix)), "kddi")


def imsi_of(iccid: str) -> str:
    """The SIM's IMSI: MCC 440, the carrier's MNC, and a 10-digit MSIN.

    The MSIN is account (2) + the fleet number's last 2 digits + the index's last 6 digits: unique
    while an account has fewer than 100 fleets of fewer than 10^6 SIMs each.
    """
    return f"440{MOBILE_NETWORK_CODES[carrier_of(iccid)]}{iccid[7:9]}{iccid[10:12]}{iccid[13:19]}"


def msisdn_of(iccid: str) -> str:
    """The SIM's MSISDN (E.164, 15 digits): Japan 81, a 70 number, account, fleet and index digits."""
    return f"8170{iccid[7:12]}{iccid[13:19]}"
