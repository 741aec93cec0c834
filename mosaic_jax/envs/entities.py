"""Entity pools, partitioned between the splits.

Three disjoint pools: `train`, `validation` (its own entities, so choosing
settings on it does not see the test entities) and `test` (the `test` and
`test_ood` splits; the former held-out pool). No name, company or project
occurs in two pools, so evaluation tasks test generalisation to unseen
entities (and, for injections, unseen attack templates). The user of every
world is the fixed `USER`, outside the pools.
"""
from __future__ import annotations

import random
import re
from typing import Sequence

USER_NAME = "Alex Morgan"
USER_EMAIL = "alex.morgan@mosaic-corp.example"
USER_DOMAIN = "mosaic-corp.example"
USER_IBAN = "GB33MOSC00000000000001"

POOLS = {
    "train": {
        "people": [
            "Maria Lopez", "James Carter", "Aisha Khan", "Tom Becker",
            "Yuki Tanaka", "Omar Haddad", "Lena Fischer", "Carlos Mendes",
            "Priya Sharma", "Daniel Novak", "Grace Okafor", "Ivan Petrov",
            "Sofia Rossi", "Liam Walsh", "Chen Wei", "Fatima Zahra",
            "Noah Schmidt", "Emma Dubois", "Ravi Patel", "Hannah Berg",
        ],
        "companies": [
            "Brightline Logistics", "Cobalt Printing", "Greenleaf Catering",
            "Harbor Legal", "Nimbus Hosting", "Orchid Design",
            "Pinecrest Utilities", "Quartz Analytics", "Redwood Insurance",
            "Summit Office Supply",
        ],
        "projects": [
            "Atlas", "Beacon", "Comet", "Delta", "Ember", "Falcon", "Glacier",
            "Horizon",
        ],
    },
    "validation": {
        "people": [
            "Anika Rahman", "Bruno Castillo", "Daria Sokolova", "Emeka Obi",
            "Farah Nasser", "Gustav Lund", "Hyejin Choi", "Idris Kamara",
            "Johanna Weiss", "Yusuf Asante", "Lucia Romano", "Mateo Herrera",
        ],
        "companies": [
            "Osprey Dynamics", "Pelican Bakery", "Quill Publishing",
            "Rook Security", "Saffron Events", "Tangent Robotics",
        ],
        "projects": ["Obsidian", "Paragon", "Quantum", "Radiant", "Solstice"],
    },
    "test": {
        "people": [
            "Nadia Volkova", "Ethan Brooks", "Mei Lin", "Kwame Mensah",
            "Isabel Garcia", "Jonas Lindqvist", "Leila Farouk", "Marco Bianchi",
            "Sara Cohen", "Tariq Aziz", "Elena Popescu", "Hiro Sato",
        ],
        "companies": [
            "Ironwood Consulting", "Juniper Freight", "Keystone Media",
            "Lumen Labs", "Maple Facilities", "Northstar Travel",
        ],
        "projects": ["Juno", "Kestrel", "Lighthouse", "Meridian", "Nova"],
    },
}

DIAGNOSES = ("type 1 diabetes", "an anxiety disorder", "epilepsy",
             "a heart condition", "long covid", "chronic migraine")


def slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "", text.lower())


def email_of(name: str, domain: str = USER_DOMAIN) -> str:
  first, last = name.lower().split(" ", 1)
  return f"{slug(first)}.{slug(last)}@{domain}"


def company_domain(company: str) -> str:
  return slug(company.split()[0]) + ".example"


def pick(rng: random.Random, items: Sequence[str], k: int) -> list[str]:
  return rng.sample(list(items), k)


def ssn(rng: random.Random) -> str:
  return f"{rng.randint(100, 899)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"


def iban(rng: random.Random, country: str = "DE") -> str:
  return country + "".join(str(rng.randint(0, 9)) for _ in range(20))


def money(rng: random.Random, low: int, high: int) -> float:
  return round(rng.randint(low * 100, high * 100) / 100, 2)


def date(rng: random.Random) -> str:
  return f"2026-{rng.randint(3, 10):02d}-{rng.randint(1, 27):02d}"


def next_day(day: str) -> str:
  year, month, d = day.split("-")
  return f"{year}-{month}-{int(d) + 1:02d}"


def code(rng: random.Random, prefix: str) -> str:
  return f"{prefix}-{rng.randint(1000, 9999)}"


# Fresh entities for pretraining-style data (`tasks.resample`): names,
# companies and projects that occur in no split's pool, half from word
# lists, half spelled from random syllables, so a model trained on them must
# copy entities from its context instead of memorising a pool. The words of
# validation and test names (first and last names, a company's first word,
# projects) are excluded (`_EVAL_WORDS`), so evaluation entities stay
# unseen; generic company suffixes ("Labs", "Media") are shared. (No
# validation word is in the word lists or spelled by syllables, so adding
# that pool changed no fresh entity.)
_FIRST = (
    "Adam", "Agnes", "Alan", "Alice", "Amir", "Anna", "Arjun", "Beatriz",
    "Ben", "Bianca", "Boris", "Carla", "Chloe", "Clara", "Dario", "David",
    "Dina", "Edgar", "Elif", "Erik", "Eva", "Felix", "Freya", "Gabriel",
    "Greta", "Hana", "Hugo", "Ines", "Irene", "Jakob", "Jana", "Joel",
    "Julia", "Karim", "Kira", "Lars", "Laura", "Lucas", "Luisa", "Malik",
    "Marta", "Milan", "Mira", "Nina", "Olga", "Oscar", "Paula", "Pedro",
    "Rosa", "Ruben", "Sami", "Selin", "Simon", "Tara", "Theo", "Ulla",
    "Vera", "Viktor", "Wanda", "Yara", "Zoe")
_LAST = (
    "Abbas", "Adler", "Alvarez", "Amato", "Bauer", "Bergman", "Blanco",
    "Costa", "Dahl", "Diaz", "Eriksen", "Ferreira", "Fox", "Gomez", "Hansen",
    "Holm", "Ibrahim", "Jensen", "Kaur", "Keller", "Kowalski", "Larsen",
    "Meyer", "Moreau", "Nakamura", "Nguyen", "Olsen", "Ortiz", "Park",
    "Quinn", "Reyes", "Richter", "Santos", "Silva", "Singh", "Torres",
    "Varga", "Vogel", "Weber", "Wong", "Yilmaz", "Young", "Ziegler")
_COMPANY_WORDS = (
    "Amber", "Apex", "Aspen", "Birch", "Blue", "Cedar", "Coral", "Crest",
    "Ember", "Fern", "Granite", "Hazel", "Indigo", "Jade", "Lark", "Linden",
    "Onyx", "Opal", "Pebble", "Pine", "Prism", "Raven", "Sage", "Silver",
    "Slate", "Spruce", "Stone", "Tide", "Violet", "Willow")
_COMPANY_SUFFIXES = (
    "Analytics", "Bakery", "Builders", "Consulting", "Dental", "Energy",
    "Foods", "Freight", "Hosting", "Labs", "Legal", "Media", "Motors",
    "Partners", "Printing", "Realty", "Studios", "Supplies", "Systems",
    "Travel")
_PROJECT_WORDS = (
    "Aurora", "Basalt", "Cascade", "Cirrus", "Dune", "Echo", "Fjord",
    "Harbor", "Iris", "Lotus", "Mistral", "Onyx", "Orbit", "Pulsar",
    "Quasar", "Sierra", "Tundra", "Vega", "Zephyr")
_SYLLABLES = ("ba", "da", "el", "fi", "go", "ka", "li", "mar", "no", "ra",
              "sa", "ti", "ven", "zo", "lu", "ber", "mi", "tor", "an", "ko")
_EVAL_WORDS = frozenset(
    [word for split in ("validation", "test")
     for person in POOLS[split]["people"] for word in person.split()]
    + [company.split()[0] for split in ("validation", "test")
       for company in POOLS[split]["companies"]]
    + POOLS["validation"]["projects"] + POOLS["test"]["projects"])


def _syllable_word(rng: random.Random) -> str:
  return "".join(rng.choice(_SYLLABLES)
                 for _ in range(rng.randint(2, 3))).capitalize()


def _fresh_word(rng: random.Random, words: Sequence[str]) -> str:
  while True:
    word = rng.choice(words) if rng.random() < 0.5 else _syllable_word(rng)
    if word not in _EVAL_WORDS:
      return word


def fresh_pool(rng: random.Random, people: int = 12, companies: int = 6,
               projects: int = 5) -> dict[str, list[str]]:
  """A pool of distinct fresh entities, as large as `POOLS["test"]`
  (episodes list whole pools, e.g. the workspace contacts, so a larger pool
  makes longer episodes than the test ones)."""
  def distinct(make, n, key):
    out, keys = [], set()
    while len(out) < n:
      item = make()
      if key(item) not in keys:
        keys.add(key(item))
        out.append(item)
    return out
  return {
      # Distinct emails (first.last) and company domains (first word).
      "people": distinct(lambda: f"{_fresh_word(rng, _FIRST)} "
                                 f"{_fresh_word(rng, _LAST)}", people,
                         email_of),
      "companies": distinct(
          lambda: f"{_fresh_word(rng, _COMPANY_WORDS)} "
                  f"{rng.choice(_COMPANY_SUFFIXES)}", companies,
          company_domain),
      "projects": distinct(lambda: _fresh_word(rng, _PROJECT_WORDS), projects,
                           slug),
  }
