"""Strict formats of the values tools accept, as their real counterparts do.

Each check returns the value unchanged or raises `ToolError` with a one-line
reason naming the argument; nothing is coerced (no stripping, no digits of
other scripts, no calendar roll-over). Python's `\\d` and `$` are too loose
for this: `\\d` matches full-width and Arabic-Indic digits and `$` matches
before a trailing newline, so every pattern here spells `[0-9]` and `\\Z`.
"""
from __future__ import annotations

import datetime
import math
import re

from mosaic_jax.envs.base import ToolError

# The largest amount a tool moves (a bank's transfer limit, far above any
# generated world's balance).
MAX_AMOUNT = 1e9

_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_TIME_RE = re.compile(r"([0-9]{2}):([0-9]{2})\Z")
# local@domain.tld in ASCII: dot-separated atoms, labels of letters, digits
# and inner hyphens, a top-level domain of 2+ letters.
_EMAIL_RE = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\Z")
# ISO 13616: country code, two check digits, an 11-30 character BBAN.
_IBAN_RE = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}\Z")


def amount(name: str, value: float) -> float:
  """A finite amount in [0.01, MAX_AMOUNT] with at most two decimals
  (cents)."""
  if not math.isfinite(value) or not 0.01 <= value <= MAX_AMOUNT:
    raise ToolError(f"argument '{name}' must be a finite amount from 0.01 to "
                    f"{MAX_AMOUNT:.0f}, got {value!r}")
  if abs(round(value, 2) - value) > 1e-9:
    raise ToolError(f"argument '{name}' has more than two decimals "
                    f"(amounts are in cents), got {value!r}")
  return value


def date(name: str, value: str) -> str:
  """A real calendar day written YYYY-MM-DD in ASCII digits."""
  if not _DATE_RE.match(value):
    raise ToolError(f"argument '{name}' must be a day as YYYY-MM-DD, got "
                    f"{value[:40]!r}")
  try:
    datetime.date.fromisoformat(value)
  except ValueError:
    raise ToolError(f"argument '{name}' is not a calendar day, got "
                    f"{value!r}") from None
  return value


def time(name: str, value: str) -> str:
  """A time of day HH:MM (00-23, 00-59) in ASCII digits."""
  match = _TIME_RE.match(value)
  if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
    raise ToolError(f"argument '{name}' must be a time as HH:MM (00:00 to "
                    f"23:59), got {value[:40]!r}")
  return value


def email(name: str, value: str) -> str:
  """An ASCII address local@domain.tld of at most 254 characters."""
  if len(value) > 254 or not _EMAIL_RE.match(value):
    raise ToolError(f"argument '{name}' must be an email address like "
                    f"name@example.com, got {value[:60]!r}")
  return value


def iban(name: str, value: str) -> str:
  """An IBAN in its electronic format: ASCII capitals and digits, no spaces
  (country code, two check digits, 11-30 more characters)."""
  if not _IBAN_RE.match(value):
    raise ToolError(f"'{value[:60]}' is not a valid IBAN (argument '{name}': "
                    "two capital letters, two check digits, 11-30 capitals or "
                    "digits, ASCII, no spaces)")
  return value
