"""ISO 4217 currency codes a store may sell in, with the number of decimals of their minor unit.

The list is ISO 4217 list one (active codes) as of 2025, including fund codes that carry a minor
unit (``BOV``, ``CHE``, ``CLF``, ``USN``, ...), the withdrawn-but-circulating ``ANG``/``SLL``/
``ZWL`` beside their successors ``XCG``/``SLE``/``ZWG``, and nothing without a minor unit: precious
metals (``XAU``...), the SDR and bond-market units (``XDR``, ``XBA``...), the testing code ``XTS``
and "no currency" ``XXX`` are refused, since money here is an integer count of minor units. A code
missing from this table is an error naming it (the order's dead letter says so); add it here when
ISO publishes one.
"""

from __future__ import annotations

__all__ = ["CURRENCY_EXPONENTS", "is_currency", "minor_unit_exponent"]

_THREE = ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")
_ZERO = (
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
)  # fmt: skip
_FOUR = ("CLF", "UYW")
_TWO = (
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF",
    "CHE", "CHF", "CHW", "CNY", "COP", "COU", "CRC", "CUC", "CUP", "CVE", "CZK", "DKK", "DOP",
    "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR",
    "KPW", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK",
    "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO",
    "NOK", "NPR", "NZD", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB",
    "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SLL", "SOS", "SRD", "SSP", "STN",
    "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "USD",
    "USN", "UYU", "UZS", "VED", "VES", "WST", "XCD", "XCG", "YER", "ZAR", "ZMW", "ZWG", "ZWL",
)  # fmt: skip

#: Code -> decimals of the minor unit (USD 2: cents; JPY 0; KWD 3; CLF 4).
CURRENCY_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(_TWO, 2),
    **dict.fromkeys(_ZERO, 0),
    **dict.fromkeys(_THREE, 3),
    **dict.fromkeys(_FOUR, 4),
}


def is_currency(code: object) -> bool:
    """Whether ``code`` is one of :data:`CURRENCY_EXPONENTS` (exact, upper case)."""
    return isinstance(code, str) and code in CURRENCY_EXPONENTS


def minor_unit_exponent(code: str) -> int:
    """Decimals of ``code``'s minor unit; ``KeyError`` for a code not in the table."""
    return CURRENCY_EXPONENTS[code]
