"""Synthetic sentences with character-level entity spans, from the word lists and templates.

Every fifth name, organisation, place and template is held out of training: the held-out split
draws half of its slots and templates from those, so its F1 measures more than memorisation.
Training also fills some slots with invented words (random syllables), so that the model learns
from context and capitalisation rather than from a list of names it has seen.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import wordlists as wl

Span = tuple[int, int, str]  # (start, end, label), character offsets, end exclusive
SLOT = re.compile(r"\{(\w+)\}")
_ONSETS = wl.words("b c d f g h j k l m n p r s t v w z br dr gr kr st tr ch sh th")
_VOWELS = wl.words("a e i o u a e i o ai ei ou ia é á ö ü")
_CODAS = ["", "", "", "n", "r", "l", "s", "t", "rn", "nd", "k", "m"]


def invented_word(rng: random.Random) -> str:
    """A pronounceable capitalised non-word of 2-3 syllables ("Brelanor", "Kisöt")."""
    syllables = rng.randint(2, 3)
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))
    return word[0].upper() + word[1:]


@dataclass(frozen=True)
class Pools:
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    orgs: tuple[str, ...]
    org_stems: tuple[str, ...]
    locations: tuple[str, ...]
    templates: tuple[str, ...]


def _split(items: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    kept = tuple(x for i, x in enumerate(items) if i % 5 != 4)
    held = tuple(x for i, x in enumerate(items) if i % 5 == 4)
    return kept, held


def split_pools() -> tuple[Pools, Pools]:
    """(train, held_out) pools; the held-out pool has no item in common with the train pool."""
    parts = [_split(x) for x in (wl.FIRST_NAMES, wl.LAST_NAMES, wl.ORG_NAMES, wl.ORG_STEMS, wl.LOCATIONS, wl.TEMPLATES)]
    return Pools(*(p[0] for p in parts)), Pools(*(p[1] for p in parts))


def all_pools() -> Pools:
    return Pools(
        tuple(wl.FIRST_NAMES), tuple(wl.LAST_NAMES), tuple(wl.ORG_NAMES), tuple(wl.ORG_STEMS),
        tuple(wl.LOCATIONS), tuple(wl.TEMPLATES),
    )


# Plain words of every template, held-out ones included: a pretrained model would know them all.
COMMON_WORDS = sorted({w for t in wl.TEMPLATES + wl.NO_ENTITY_SENTENCES for w in re.findall(r"\b[a-z]+\b", SLOT.sub(" ", t))})


class SentenceMaker:
    """Fills templates from one or two pools; `mix` is the chance of drawing from `other`."""

    def __init__(self, rng: random.Random, pools: Pools, other: Pools | None = None, mix: float = 0.0,
                 invented: float = 0.0, word_salad: float = 0.0,
                 inventors: tuple[Callable[[random.Random], str], ...] = (invented_word,)):
        self.rng, self.pools, self.other, self.mix, self.invented = rng, pools, other, mix, invented
        self.word_salad, self.inventors = word_salad, inventors

    def _pool(self) -> Pools:
        return self.other if self.other is not None and self.rng.random() < self.mix else self.pools

    def _name(self, choices: tuple[str, ...]) -> str:
        return self.rng.choice(self.inventors)(self.rng) if self._invent() else self.rng.choice(choices)

    def _invent(self) -> bool:
        return bool(self.invented) and self.rng.random() < self.invented

    def person(self) -> tuple[str, str]:
        """(prefix that is not part of the entity, person name)."""
        rng = self.rng
        first, last = self._name(self._pool().first_names), self._name(self._pool().last_names)
        kind = rng.random()
        if kind < 0.55:
            return "", f"{first} {last}"
        if kind < 0.7:
            return "", first
        if kind < 0.8:
            return "", f"{first} {rng.choice('ABCDEFGHJKLMNPRSTW')}. {last}"
        return rng.choice(wl.TITLES) + " ", last if rng.random() < 0.5 else f"{first} {last}"

    def org(self) -> str:
        pool = self._pool()
        if self.rng.random() < 0.6 and not self._invent():
            return self.rng.choice(pool.orgs)
        return f"{self._name(pool.org_stems)} {self.rng.choice(wl.ORG_SUFFIXES)}"

    def filler(self, slot: str) -> str:
        rng = self.rng
        if slot == "NUM":
            return rng.choice([str(rng.randint(2, 950)), f"{rng.randint(1, 99)}.{rng.randint(1, 9)}", f"{rng.randint(1, 9)},{rng.randint(100, 999)}"])
        if slot == "YEAR":
            return str(rng.randint(1950, 2025))
        if slot == "MONTH":
            return rng.choice(wl.MONTHS)
        if slot == "DAY":
            return str(rng.randint(1, 28))
        raise ValueError(f"unknown template slot {slot!r}; expected PER, ORG, LOC, NUM, YEAR, MONTH or DAY")

    def fill(self, template: str) -> tuple[str, list[Span]]:
        text, spans, pos = "", [], 0
        for match in SLOT.finditer(template):
            text += template[pos:match.start()]
            slot, prefix = match.group(1), ""
            if slot == "PER":
                prefix, value = self.person()
            elif slot == "ORG":
                value = self.org()
            elif slot == "LOC":
                value = self._name(self._pool().locations)
            else:
                text += self.filler(slot)
                pos = match.end()
                continue
            text += prefix
            spans.append((len(text), len(text) + len(value), slot))
            text += value
            pos = match.end()
        text += template[pos:]
        return text, spans

    def sentence(self) -> tuple[str, list[Span]]:
        if self.word_salad and self.rng.random() < self.word_salad:
            # common words in random order, no entity: trains the embedding of every common word
            words = self.rng.choices(COMMON_WORDS, k=self.rng.randint(5, 14))
            return " ".join([words[0].capitalize(), *words[1:]]) + ".", []
        if self.rng.random() < 0.15:
            return self.fill(self.rng.choice(wl.NO_ENTITY_SENTENCES))
        return self.fill(self.rng.choice(self._pool().templates))

    def paragraph(self, n_sentences: int) -> tuple[str, list[Span]]:
        text, spans = "", []
        for i in range(n_sentences):
            sentence, sentence_spans = self.sentence()
            if i:
                text += " "
            spans += [(s + len(text), e + len(text), label) for s, e, label in sentence_spans]
            text += sentence
        return text, spans
