"""Questions about a clip, with the action words masked.

MambaVL ("Mamba Fusion: Learning Actions Through Questioning") pairs every clip with a *verb question*
and a *noun question*. At training time the questions may be written from the clip's action (templates
such as "What is the person doing to the {noun}?" or a bank of LLM-written paraphrases of "open door"),
but every word that names the action is replaced by the tokenizer's mask token, so that the text never
gives the label away: "open the door" with the action *open door* becomes "[MASK] the [MASK]".

This module has no tokenizer dependency; it only needs the mask token string.

Building blocks
---------------
- :func:`ek100_to_phrase` turns EPIC-KITCHENS-100 keys into phrases (``"turn-on"`` -> ``"turn on"``,
  ``"board:chopping"`` -> ``"chopping board"``).
- :func:`phrase_word_forms` gives every word form that strict masking removes for a phrase (all
  inflections of its content words through ``lemminflect``, working offline, and the regular plurals of
  :func:`regular_plurals` on top, plus its particles).
- :func:`mask_phrases` masks phrases in a text; :func:`find_leaks` audits a text for surviving forms.
- :class:`QuestionBank` loads per-action question lists from CSV or JSON.
- :class:`QuestionBuilder` picks and fills templates or bank questions and masks them per policy.

Masking rules (see :func:`mask_phrases`)
----------------------------------------
Words are runs of letters and digits; matching is case-insensitive and whole-word ("pan" never touches
"pancake"). Each word of a phrase is one of three kinds:

- *content words* ("open", "board", "chopping"): masked wherever they occur, in every inflection, and
  in the forms of their lemmas too ("knives" masks "knife"); the regular plural rule is applied on top
  of the dictionary to the word, its lemmas and its "-ing" forms ("peelings", "cutleries", "cuttings"),
  so that words the dictionary lacks or lists as uncountable never leak through a plural;
- *particles* (prepositions and adverbial particles such as "on", "off", "down", "up", "in", "back"):
  masked wherever they occur as written, because "on" versus "off" is all that separates the classes
  *turn-on* and *turn-off*; the last word of a phrase heads it and takes the plural rule even when it
  is a particle (EK100 "over:left", "left over", masks "left overs");
- *stop words* (articles, determiners, pronouns, conjunctions such as "the", "a", "it", "and"): masked
  only inside a contiguous occurrence of the whole phrase, since they never tell classes apart.

Class *instances* (EPIC-KITCHENS synonym lists: verb class "take" has "grab", "pick-up", "take-from",
...) are passed as ``synonyms``: their content words are masked everywhere, their particles and stop
words only inside a contiguous occurrence of the synonym ("pick up" masks both words, while "from" of
"take-from" is left alone elsewhere: masking every "from", "in", "with", ... of the many instances would
destroy the question and make the *pattern* of masks depend on the label). EK100 instance lists are
noisy (noun "plate" lists "top:plate", so "top" is masked for every plate clip): instances are opt-in.

Consecutive masked words of one phrase occurrence become one mask token ("put down the plate" ->
"[MASK] the plate"); adjacent words of two different phrases stay two masks ("take plate" ->
"[MASK] [MASK]"). A mask token already present in the text is never touched, so masking is idempotent.

Masking policies
----------------
- ``"strict"`` (default): both questions are masked with the verb *and* the noun (and their instances
  when ``use_instances``), so neither question contains any form of the clip's action.
- ``"paper"``: as the paper's reference implementation: the noun question masks only the verb and the
  verb question masks only the noun. **This leaks each question's own target word** (the verb question
  of "open door" still says "open"); use it only to reproduce the reference behaviour.

Leakage caveat for evaluation
-----------------------------
Even when every action word is masked, a question built from the ground-truth action depends on the
label in other ways: which bank entry exists for the action, how many words a paraphrase has, which
template was chosen, where the masks are. A model can learn those cues. Questions derived from labels
are therefore for *training* only; evaluation and inference must use label-free questions
(:meth:`QuestionBuilder.inference_questions`, or :meth:`QuestionBuilder.build` with ``verb=None`` and
``noun=None``). The default action-aware templates are written so that, after strict masking without
instances, each template gives the same text for every EPIC-KITCHENS-100 verb and noun class; bank
questions carry no such guarantee.

Example
-------
>>> mask_phrases("Open the door.", ["open", "door"], "[MASK]")
'[MASK] the [MASK].'
>>> mask_phrases("put down the plate", ["put-down"], "[MASK]")
'[MASK] the plate'
>>> mask_phrases("turn the tap on", ["turn-on", "tap"], "<mask>")
'<mask> the <mask> <mask>'
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import logging
import random
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_NOUN_TEMPLATES",
    "DEFAULT_VERB_TEMPLATES",
    "LABEL_FREE_NOUN_TEMPLATES",
    "LABEL_FREE_VERB_TEMPLATES",
    "MASKING_POLICIES",
    "PARTICLES",
    "STOP_WORDS",
    "TEMPLATE_FIELDS",
    "QuestionBank",
    "QuestionBankError",
    "QuestionBuilder",
    "ek100_to_phrase",
    "fill_template",
    "find_leaks",
    "mask_phrases",
    "phrase_word_forms",
    "phrase_words",
    "regular_plurals",
    "stable_index",
    "word_forms",
]

logger = logging.getLogger(__name__)

MASKING_POLICIES: tuple[str, ...] = ("strict", "paper")

# Label-free questions, used at inference/evaluation and whenever a clip has no label.
LABEL_FREE_VERB_TEMPLATES: tuple[str, ...] = (
    "What action is performed using hands in the video?",
    "What is the person doing in the video?",
    "Which action does the person perform?",
)
LABEL_FREE_NOUN_TEMPLATES: tuple[str, ...] = (
    "What is the object in the video?",
    "Which object is the person interacting with?",
    "What object does the person handle?",
)

# Action-aware training templates. Placeholders (see TEMPLATE_FIELDS) are filled from the clip's verb
# and noun and then masked. Their own words avoid every form of the EPIC-KITCHENS-100 class keys (e.g.
# no "on", "hand", "use", "going", "can", "clip"), so that after strict masking a template reads the
# same for every class: the masked text carries no trace of the label.
DEFAULT_VERB_TEMPLATES: tuple[str, ...] = (
    "What is the person doing to the {noun}?",
    "What does the person do with the {noun}?",
    "What action does the person perform with the {noun}?",
    "The person is about to {verb} the {noun}. What is the action?",
)
DEFAULT_NOUN_TEMPLATES: tuple[str, ...] = (
    "Which object does the person {verb}?",
    "What is the person {verb_ing}?",
    "What object is the person about to {verb}?",
    "The person is about to {verb} the {noun}. What is the object?",
)

#: Placeholders a template may use: the verb phrase as given and inflected (its first word), the noun
#: phrase and its plural (its last word).
TEMPLATE_FIELDS: tuple[str, ...] = (
    "verb",
    "verb_ing",
    "verb_s",
    "verb_past",
    "verb_pp",
    "noun",
    "noun_plural",
)
_VERB_FIELD_TAGS = {"verb_ing": "VBG", "verb_s": "VBZ", "verb_past": "VBD", "verb_pp": "VBN"}


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Prepositions and adverbial particles: masked as written (never inflected); everywhere for a strict
#: phrase, only inside a contiguous occurrence for a synonym.
PARTICLES: frozenset[str] = _wordset(
    """
    about above across acros against along alongside apart around aside at away back backward backwards
    behind below beneath beside besides between beyond by down for forth forward forwards from in inside
    into near next of off on onto out outside over past round through throughout to together toward
    towards under underneath unto up upon upside with within without
    """
)
#: Articles, determiners, pronouns, conjunctions, auxiliaries: masked only inside a contiguous
#: occurrence of their phrase, in every mode.
STOP_WORDS: frozenset[str] = _wordset(
    """
    a an the this that these those some any all each every either neither both more most much many other
    another such no not own same few less least
    i me my mine we us our ours you your yours he him his she her hers it its they them their theirs one
    someone something somebody anything everything
    and or but nor so if then than as because while though although whether
    is am are was were be been being do does did has have had will would shall should may might must
    could
    there here where when what which who whom whose why how
    """
)

_WORD_RE = re.compile(r"[^\W_]+")
# Separators across which two words still count as adjacent (for merging and contiguous phrases).
_JOINABLE_RE = re.compile(r"\s*-\s*|\s+")

_CONTENT, _PARTICLE, _STOP = 0, 1, 2


# ----------------------------------------------------------------------------------------------------
# Phrases and word forms
# ----------------------------------------------------------------------------------------------------


def ek100_to_phrase(key: str) -> str:
    """Turn an EPIC-KITCHENS-100 verb or noun key into plain words.

    Hyphens (and underscores) separate the words of verbs: ``"turn-on"`` -> ``"turn on"``,
    ``"put-down"`` -> ``"put down"``. Colons separate a noun from its modifiers, which come first in
    English: ``"board:chopping"`` -> ``"chopping board"``, ``"pan:frying"`` -> ``"frying pan"``; with
    more than one colon all parts are reversed (``"machine:sous:vide"`` -> ``"vide sous machine"``).
    Plain phrases pass through (whitespace normalised).
    """
    if not isinstance(key, str):
        raise TypeError(f"ek100_to_phrase: key must be a str, got {type(key).__name__}")
    text = key.strip()
    if ":" in text:
        parts = [part.strip() for part in text.split(":")]
        text = " ".join(part for part in reversed(parts) if part)
    text = text.replace("-", " ").replace("_", " ")
    return " ".join(text.split())


def phrase_words(phrase: str) -> tuple[str, ...]:
    """The lower-cased words of a phrase (EK100 keys accepted: ``"turn-on"`` -> ``("turn", "on")``)."""
    return tuple(match.group(0).lower() for match in _WORD_RE.finditer(ek100_to_phrase(phrase)))


def _word_kind(word: str) -> int:
    if word in STOP_WORDS:
        return _STOP
    if word in PARTICLES:
        return _PARTICLE
    return _CONTENT


def word_forms(word: str) -> frozenset[str]:
    """Every form of one content word, lower-cased, via ``lemminflect`` (offline).

    The word itself, its lemmas (any part of speech: ``"knives"`` -> ``"knife"``, ``"took"`` ->
    ``"take"``), and all inflections of the word and of those lemmas (``"open"`` -> opens, opened,
    opening; ``"cut"`` -> cuts, cutting; ``"take"`` -> took, taken). Words lemminflect does not know
    (``"hob"``, ``"aubergine"``) get the regular noun and verb forms of its out-of-vocabulary rules.
    On top of the dictionary, :func:`regular_plurals` of the word, of its lemmas and of its "-ing" forms
    are added ("cutlery" -> cutleries, "peeling" -> peelings, "cut" -> cuttings), which the dictionary
    lacks for uncountable nouns and gerunds.
    Particles and stop words (see :data:`PARTICLES`, :data:`STOP_WORDS`) are returned as written; a
    phrase of one word is always treated as a content word (see :func:`phrase_word_forms`).
    """
    word = word.lower()
    if not word or _word_kind(word) != _CONTENT:
        return frozenset([word]) if word else frozenset()
    return _inflected_forms(word)


@lru_cache(maxsize=65536)
def _inflected_forms(word: str) -> frozenset[str]:
    from lemminflect import getAllInflections, getAllInflectionsOOV, getAllLemmas, getAllLemmasOOV

    forms: set[str] = {word}
    lemma_map = getAllLemmas(word)
    known = bool(lemma_map)
    lemmas: set[str] = set()
    if known:
        for values in lemma_map.values():
            lemmas.update(values)
    else:
        lemmas.update(getAllLemmasOOV(word, "NOUN").get("NOUN", ()))
        if word.endswith(("ed", "ing")):
            lemmas.update(getAllLemmasOOV(word, "VERB").get("VERB", ()))
    forms.update(lemmas)
    for lemma in (lemmas | {word}) if known else (lemmas or {word}):
        inflections = getAllInflections(lemma)
        if not inflections:
            if known:
                continue  # an inflected form whose lemmas are already expanded
            inflections = {}
            for upos in ("NOUN", "VERB"):
                inflections.update(getAllInflectionsOOV(lemma, upos))
        elif "NNS" not in inflections and "VBZ" not in inflections:
            # Known only as an adjective/adverb: still catch a regular plural.
            inflections = {**inflections, **getAllInflectionsOOV(lemma, "NOUN")}
        for values in inflections.values():
            forms.update(values)
    # The dictionary lacks many regular plurals ("peelings", "cutleries", "leftovers" of an unlisted
    # word): add the regular plurals of the word, of its lemmas and of every "-ing" form (gerunds
    # used as nouns: "peelings", "cuttings", "shavings").
    forms = {form.lower() for form in forms if form}
    bases = {word} | {lemma.lower() for lemma in lemmas} | {form for form in forms if form.endswith("ing")}
    for base in bases:
        forms.update(regular_plurals(base))
    return frozenset(forms)


_VOWELS = frozenset("aeiou")


def regular_plurals(word: str) -> frozenset[str]:
    """The regular English plural (or third-person "-s") forms of ``word``, by spelling rule only.

    ``-s`` in general ("board" -> boards, "peeling" -> peelings, "over" -> overs); ``-es`` after a
    sibilant ("glass", "box", "quiz", "peach", "dish" -> glasses, ...); ``-ies`` for a consonant + ``y``
    ("cutlery" -> cutleries, "fry" -> fries; "tray" -> trays); both ``-s`` and ``-es`` after a
    consonant + ``o`` ("potato" -> potatoes, "avocado" -> avocados); both ``-s`` and ``-ves`` after
    ``f``/``fe`` ("leaf" -> leaves, "knife" -> knives, "roof" -> roofs). The rule needs no dictionary,
    so it covers words never seen before; irregular plurals ("mice") come from ``lemminflect`` in
    :func:`word_forms`. Returns lower-cased forms (an empty set for an empty or non-alphabetic word).
    """
    word = word.lower()
    if not word.isalpha():
        return frozenset()
    last, before = word[-1], word[-2] if len(word) > 1 else ""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return frozenset([word + "es"])
    if last == "y" and before and before not in _VOWELS:
        return frozenset([word[:-1] + "ies"])
    if last == "o" and before and before not in _VOWELS:
        return frozenset([word + "s", word + "es"])
    if last == "f":
        return frozenset([word + "s", word[:-1] + "ves"])
    if word.endswith("fe"):
        return frozenset([word + "s", word[:-2] + "ves"])
    return frozenset([word + "s"])


def phrase_word_forms(phrase: str) -> frozenset[str]:
    """The word forms that strict masking removes *wherever they occur* for ``phrase``.

    The union of :func:`word_forms` of its content words and of its particles as written (a particle
    that ends the phrase with its :func:`regular_plurals` too: "over:left" gives "overs"); stop words
    are left out, since they are masked only inside a contiguous occurrence of the phrase. A phrase of
    a single word is always a content word, whatever its kind ("can" the noun, not the modal).
    ``phrase_word_forms("turn-on")`` contains turn, turns, turned, turning and on.
    """
    return frozenset(_compile((phrase,), (), True).everywhere)  # exactly what the strict matcher finds anywhere


# ----------------------------------------------------------------------------------------------------
# Matching and masking
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Matcher:
    # word form -> ((phrase index, word position), ...) for words masked wherever they occur
    everywhere: Mapping[str, tuple[tuple[int, int], ...]]
    # (phrase index, forms of each word position) for contiguous-occurrence matching
    sequences: tuple[tuple[int, tuple[frozenset[str], ...]], ...]


def _normalize_phrases(phrases: Iterable[str] | str, argname: str) -> tuple[str, ...]:
    if isinstance(phrases, str):
        phrases = [phrases]
    out = []
    for phrase in phrases:
        if not isinstance(phrase, str):
            raise TypeError(f"{argname}: every phrase must be a str, got {type(phrase).__name__}: {phrase!r}")
        if not phrase_words(phrase):
            raise ValueError(f"{argname}: phrase {phrase!r} has no words")
        out.append(phrase)
    return tuple(out)


@lru_cache(maxsize=8192)
def _compile(phrases: tuple[str, ...], synonyms: tuple[str, ...], strict: bool) -> _Matcher:
    everywhere: dict[str, list[tuple[int, int]]] = {}
    sequences = []
    for index, phrase in enumerate(phrases + synonyms):
        is_strict_phrase = strict and index < len(phrases)
        words = phrase_words(phrase)
        position_forms = []
        for position, word in enumerate(words):
            kind = _CONTENT if len(words) == 1 else _word_kind(word)
            forms = _inflected_forms(word) if kind == _CONTENT else frozenset([word])
            if kind == _PARTICLE and position == len(words) - 1:
                # The last word heads the phrase: "left over" (EK100 "over:left") is also "left overs".
                forms = forms | regular_plurals(word)
            position_forms.append(forms)
            if kind == _CONTENT or (kind == _PARTICLE and is_strict_phrase):
                for form in forms:
                    everywhere.setdefault(form, []).append((index, position))
        sequences.append((index, tuple(position_forms)))
    return _Matcher(
        everywhere={form: tuple(hits) for form, hits in everywhere.items()},
        sequences=tuple(sequences),
    )


def _segments(text: str, mask_token: str | None) -> list[tuple[int, int]]:
    """Spans of ``text`` outside occurrences of ``mask_token`` (those are never matched)."""
    if not mask_token:
        return [(0, len(text))]
    spans, start = [], 0
    for match in re.finditer(re.escape(mask_token), text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return spans


def _match(
    text: str, matcher: _Matcher, mask_token: str | None
) -> tuple[list[tuple[int, int]], list[set[tuple[int, int]]], list[bool]]:
    """Tokens (start, end), their phrase matches, and whether token i is joinable to token i + 1."""
    tokens: list[tuple[int, int]] = []
    joinable: list[bool] = []
    for seg_start, seg_end in _segments(text, mask_token):
        first = True
        for match in _WORD_RE.finditer(text, seg_start, seg_end):
            if not first:
                gap = text[tokens[-1][1] : match.start()]
                joinable[-1] = _JOINABLE_RE.fullmatch(gap) is not None
            tokens.append((match.start(), match.end()))
            joinable.append(False)
            first = False
    lowered = [text[start:end].lower() for start, end in tokens]
    hits: list[set[tuple[int, int]]] = [set(matcher.everywhere.get(word, ())) for word in lowered]
    n_tokens = len(tokens)
    for index, position_forms in matcher.sequences:
        length = len(position_forms)
        first_forms = position_forms[0]
        for start in range(n_tokens - length + 1):
            if lowered[start] not in first_forms:
                continue
            ok = True
            for offset in range(1, length):
                if not joinable[start + offset - 1] or lowered[start + offset] not in position_forms[offset]:
                    ok = False
                    break
            if ok:
                for offset in range(length):
                    hits[start + offset].add((index, offset))
    return tokens, hits, joinable


def _check_mask_token(mask_token: Any) -> str:
    if not isinstance(mask_token, str) or not mask_token.strip():
        raise ValueError(f"mask_token must be a non-empty string, got {mask_token!r}")
    return mask_token


def mask_phrases(
    text: str,
    phrases: Iterable[str] | str,
    mask_token: str = "[MASK]",
    *,
    synonyms: Iterable[str] = (),
    strict: bool = True,
    merge: bool = True,
) -> str:
    """Replace every word form of ``phrases`` in ``text`` by ``mask_token``.

    Args:
        text: the question or narration.
        phrases: the phrases to hide (plain words or EK100 keys: ``"turn-on"``, ``"board:chopping"``).
        mask_token: the tokenizer's mask token string, e.g. ``"[MASK]"`` or ``"<mask>"``.
        synonyms: further phrases (e.g. a class's EK100 ``instances``) whose content words are masked
            everywhere and whose particles/stop words only inside a contiguous occurrence.
        strict: when True (default) the particles of ``phrases`` are masked wherever they occur ("turn
            the tap on" with "turn-on" masks "on" too); when False ``phrases`` are treated like
            ``synonyms``.
        merge: merge consecutive masked words of one phrase occurrence into one mask token.

    Matching is case-insensitive and on whole words; content words match in every inflection (see
    :func:`word_forms`). Punctuation, apostrophes and spacing around words are kept ("Open the door's
    handle." -> "[MASK] the [MASK]'s handle."). Occurrences of ``mask_token`` in ``text`` are left
    untouched, so masking twice changes nothing.
    """
    if not isinstance(text, str):
        raise TypeError(f"mask_phrases: text must be a str, got {type(text).__name__}")
    mask_token = _check_mask_token(mask_token)
    matcher = _compile(_normalize_phrases(phrases, "phrases"), _normalize_phrases(synonyms, "synonyms"), bool(strict))
    tokens, hits, joinable = _match(text, matcher, mask_token)
    pieces: list[str] = []
    cursor = 0
    index = 0
    while index < len(tokens):
        if not hits[index]:
            index += 1
            continue
        run_start, run_end = tokens[index]
        active = hits[index]
        nxt = index + 1
        if merge:
            while nxt < len(tokens) and joinable[nxt - 1] and hits[nxt]:
                following = {(p, k) for (p, k) in hits[nxt] if (p, k - 1) in active}
                if not following:
                    break
                active = following
                run_end = tokens[nxt][1]
                nxt += 1
        pieces.append(text[cursor:run_start])
        pieces.append(mask_token)
        cursor = run_end
        index = nxt
    pieces.append(text[cursor:])
    return "".join(pieces)


def find_leaks(
    text: str,
    phrases: Iterable[str] | str,
    *,
    synonyms: Iterable[str] = (),
    strict: bool = True,
    mask_token: str | None = None,
) -> list[str]:
    """The words of ``text`` (as written, in order) that :func:`mask_phrases` would mask.

    An empty list means that ``text`` gives none of ``phrases`` away under the same rules (same
    ``synonyms`` and ``strict``). Words inside occurrences of ``mask_token`` are ignored, so a mask
    token such as ``"<mask>"`` is not reported when a phrase contains "mask".
    """
    if not isinstance(text, str):
        raise TypeError(f"find_leaks: text must be a str, got {type(text).__name__}")
    matcher = _compile(_normalize_phrases(phrases, "phrases"), _normalize_phrases(synonyms, "synonyms"), bool(strict))
    tokens, hits, _ = _match(text, matcher, mask_token or None)
    return [text[start:end] for (start, end), hit in zip(tokens, hits, strict=True) if hit]


# ----------------------------------------------------------------------------------------------------
# Templates
# ----------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1024)  # templates are few and fixed, and parsed for every question
def _template_fields(template: str) -> frozenset[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"invalid template {template!r}: {err}") from err
    fields = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS or spec or conversion:
            raise ValueError(
                f"template {template!r} uses placeholder {{{name}}}; allowed: "
                + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
            )
        fields.add(name)
    return frozenset(fields)


@lru_cache(maxsize=4096)
def _inflect_word(word: str, tag: str) -> str:
    from lemminflect import getInflection, getLemma

    upos = "NOUN" if tag.startswith("NN") else "VERB"
    lemmas = getLemma(word, upos, lemmatize_oov=True)
    lemma = lemmas[0] if lemmas else word
    forms = getInflection(lemma, tag, inflect_oov=True)
    return forms[0] if forms else word


def fill_template(template: str, verb: str | None = None, noun: str | None = None) -> str:
    """Fill a template's placeholders from a verb and a noun (plain or EK100 keys).

    ``{verb}``: the verb phrase (``"put-down"`` -> "put down"); ``{verb_ing}``, ``{verb_s}``,
    ``{verb_past}``, ``{verb_pp}``: its first word inflected ("putting down", "puts down", "put down",
    "taken"); ``{noun}``: the noun phrase (``"board:chopping"`` -> "chopping board");
    ``{noun_plural}``: its last word pluralised. A placeholder whose verb/noun is None raises
    ``ValueError``.
    """
    fields = _template_fields(template)
    values: dict[str, str] = {}
    for field in fields:
        if field.startswith("verb"):
            if verb is None:
                raise ValueError(f"template {template!r} needs a verb, got verb=None")
            words = ek100_to_phrase(verb).split()
            if field != "verb":
                words[0] = _inflect_word(words[0].lower(), _VERB_FIELD_TAGS[field])
            values[field] = " ".join(words)
        else:
            if noun is None:
                raise ValueError(f"template {template!r} needs a noun, got noun=None")
            words = ek100_to_phrase(noun).split()
            if field == "noun_plural":
                words[-1] = _inflect_word(words[-1].lower(), "NNS")
            values[field] = " ".join(words)
    return template.format(**values)


def stable_index(key: str, n: int, *, salt: str = "") -> int:
    """A deterministic index in ``range(n)`` from a string key (SHA-256; stable across processes,
    unlike Python's salted ``hash``)."""
    if n <= 0:
        raise ValueError(f"stable_index: n must be positive, got {n}")
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


# ----------------------------------------------------------------------------------------------------
# Question banks
# ----------------------------------------------------------------------------------------------------


class QuestionBankError(ValueError):
    """A question-bank file or mapping is malformed; the message names the file and the row."""


def _action_key(verb: str, noun: str) -> str:
    words = phrase_words(verb) + phrase_words(noun)
    return " ".join(words)


def _action_string_key(action: str) -> str:
    """Canonical key of an action string: ``"open door"``, ``"open:door"``, ``"cut board:chopping"``
    or ``"cut:board:chopping"``."""
    action = action.strip()
    if not action:
        raise ValueError("empty action")
    if any(ch.isspace() for ch in action):
        # Whitespace-separated words, each possibly an EK100 key ("cut board:chopping").
        return " ".join(w for token in action.split() for w in phrase_words(token))
    if ":" in action:
        verb, noun = action.split(":", 1)
        if not phrase_words(verb) or not phrase_words(noun):
            raise ValueError(f"action {action!r} needs a verb and a noun ('verb:noun')")
        return _action_key(verb, noun)
    raise ValueError(f"action {action!r} needs a verb and a noun ('open door' or 'open:door')")


class QuestionBank:
    """Questions per action (verb, noun), e.g. ten LLM-written paraphrases of "open door".

    Actions are keyed by their lower-cased words, verb first, so ``("put-down", "board:chopping")``,
    ``"put down chopping board"`` and ``"put-down:board:chopping"`` are the same action. Questions are
    kept as written (masking happens in :class:`QuestionBuilder`); duplicates within an action are
    dropped with a log line.
    """

    def __init__(self, entries: Mapping[str, Sequence[str]] | None = None, *, source: str = "<dict>"):
        self._questions: dict[str, list[str]] = {}
        self._duplicates = 0
        self.source = source
        if entries is not None:
            if not isinstance(entries, Mapping):
                raise QuestionBankError(
                    f"{source}: expected a mapping of action -> list of questions, got {type(entries).__name__}"
                )
            for action, questions in entries.items():
                where = f"{source}: action {action!r}"
                if isinstance(questions, str):
                    questions = [questions]
                if not isinstance(questions, Sequence) or not questions:
                    raise QuestionBankError(f"{where}: expected a non-empty list of questions, got {questions!r}")
                for number, question in enumerate(questions):
                    self._add(action, None, question, f"{where}, question {number}")
        self._log_duplicates()

    # -- construction --------------------------------------------------------------------------
    def _add(self, action: Any, noun: Any, question: Any, where: str) -> None:
        if noun is None:
            if not isinstance(action, str):
                raise QuestionBankError(f"{where}: 'action' must be a string, got {action!r}")
            try:
                key = _action_string_key(action)
            except ValueError as err:
                raise QuestionBankError(f"{where}: {err}") from None
        else:
            for name, value in (("verb", action), ("noun", noun)):
                if not isinstance(value, str) or not phrase_words(value):
                    raise QuestionBankError(f"{where}: '{name}' must be a non-empty string, got {value!r}")
            key = _action_key(action, noun)
        if not isinstance(question, str) or not question.strip():
            raise QuestionBankError(f"{where}: 'question' must be a non-empty string, got {question!r}")
        bucket = self._questions.setdefault(key, [])
        question = " ".join(question.split())
        if question in bucket:
            self._duplicates += 1
        else:
            bucket.append(question)

    def _log_duplicates(self) -> None:
        if self._duplicates:
            logger.info("%s: dropped %d duplicate question(s)", self.source, self._duplicates)
        self._duplicates = 0

    def add(self, verb: str, noun: str, question: str) -> None:
        """Add one question for the action (verb, noun)."""
        self._add(verb, noun, question, f"{self.source}: add({verb!r}, {noun!r})")
        self._log_duplicates()

    @classmethod
    def from_csv(cls, path: str | Path) -> QuestionBank:
        """Load a CSV with a header and columns ``verb,noun,question`` or ``action,question``
        (other columns are ignored). Errors name the file and the line."""
        path = Path(path)
        bank = cls(source=str(path))
        try:
            handle = path.open(newline="", encoding="utf-8-sig")
        except OSError as err:
            raise QuestionBankError(f"{path}: cannot open question bank: {err}") from err
        with handle:
            reader = csv.reader(handle)
            try:
                header = next(reader)
            except StopIteration:
                raise QuestionBankError(f"{path}: empty CSV file, expected a header row") from None
            except csv.Error as err:
                raise QuestionBankError(f"{path}: line 1: malformed CSV: {err}") from None
            columns = [name.strip().lower() for name in header]
            if "question" not in columns or not ({"verb", "noun"} <= set(columns) or "action" in columns):
                raise QuestionBankError(
                    f"{path}: CSV header must have columns 'verb,noun,question' or 'action,question', got {header}"
                )
            col = {name: columns.index(name) for name in ("verb", "noun", "action", "question") if name in columns}
            rows = 0
            try:
                for row in reader:
                    line = reader.line_num
                    if not any(cell.strip() for cell in row):
                        continue
                    where = f"{path}: line {line}"
                    if len(row) != len(columns):
                        raise QuestionBankError(
                            f"{where}: expected {len(columns)} fields ({','.join(columns)}), got {len(row)}: {row}"
                        )
                    if "verb" in col and "noun" in col:
                        bank._add(row[col["verb"]].strip(), row[col["noun"]].strip(), row[col["question"]], where)
                    else:
                        bank._add(row[col["action"]], None, row[col["question"]], where)
                    rows += 1
            except csv.Error as err:
                raise QuestionBankError(f"{path}: line {reader.line_num}: malformed CSV: {err}") from None
        if rows == 0:
            raise QuestionBankError(f"{path}: no questions (only a header)")
        bank._log_duplicates()
        return bank

    @classmethod
    def from_json(cls, path: str | Path) -> QuestionBank:
        """Load JSON: ``{"open door": ["q1", ...], ...}`` or a list of objects with
        ``verb``/``noun`` or ``action``, and ``question`` (a string) or ``questions`` (a list)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except OSError as err:
            raise QuestionBankError(f"{path}: cannot open question bank: {err}") from err
        except json.JSONDecodeError as err:
            raise QuestionBankError(
                f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
            ) from None
        if isinstance(data, dict):
            if not data:
                raise QuestionBankError(f"{path}: no questions (empty object)")
            return cls(data, source=str(path))
        if not isinstance(data, list):
            raise QuestionBankError(
                f"{path}: expected an object {{action: [questions]}} or a list of "
                f"{{verb, noun, question}} objects, got {type(data).__name__}"
            )
        if not data:
            raise QuestionBankError(f"{path}: no questions (empty list)")
        bank = cls(source=str(path))
        for number, item in enumerate(data):
            where = f"{path}: item {number}"
            if not isinstance(item, dict):
                raise QuestionBankError(f"{where}: expected an object, got {item!r}")
            if "question" in item:
                questions = [item["question"]]
            elif "questions" in item and isinstance(item["questions"], list) and item["questions"]:
                questions = item["questions"]
            else:
                raise QuestionBankError(f"{where}: needs 'question' (string) or 'questions' (non-empty list)")
            if "verb" in item or "noun" in item:
                if "verb" not in item or "noun" not in item:
                    raise QuestionBankError(f"{where}: needs both 'verb' and 'noun'")
                for question in questions:
                    bank._add(item["verb"], item["noun"], question, where)
            elif "action" in item:
                for question in questions:
                    bank._add(item["action"], None, question, where)
            else:
                raise QuestionBankError(f"{where}: needs 'verb' and 'noun', or 'action'")
        bank._log_duplicates()
        return bank

    @classmethod
    def load(cls, path: str | Path) -> QuestionBank:
        """Load a ``.csv`` or ``.json`` question bank."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return cls.from_csv(path)
        if suffix == ".json":
            return cls.from_json(path)
        raise QuestionBankError(f"{path}: unknown question-bank format {suffix!r}; expected .csv or .json")

    # -- access -------------------------------------------------------------------------------
    @staticmethod
    def action_key(verb: str, noun: str) -> str:
        """The canonical key of an action: its lower-cased words, verb first."""
        return _action_key(verb, noun)

    def get(self, verb: str, noun: str) -> tuple[str, ...]:
        """The questions of an action, or ``()`` when it is missing."""
        return tuple(self._questions.get(_action_key(verb, noun), ()))

    def __contains__(self, action: object) -> bool:
        if isinstance(action, tuple) and len(action) == 2:
            return _action_key(*action) in self._questions
        if isinstance(action, str):
            try:
                return _action_string_key(action) in self._questions
            except ValueError:
                return False
        return False

    def __len__(self) -> int:
        return len(self._questions)

    @property
    def num_questions(self) -> int:
        return sum(len(questions) for questions in self._questions.values())

    def pick(self, verb: str, noun: str, *, rng: random.Random | None = None, key: str | None = None) -> str | None:
        """One question of the action: ``rng.choice`` when ``rng`` is given (training), else the
        entry at :func:`stable_index` of ``key`` (index 0 without a key). None when missing."""
        questions = self._questions.get(_action_key(verb, noun))
        if not questions:
            return None
        if rng is not None:
            return rng.choice(questions)
        return questions[stable_index(key, len(questions), salt="bank")] if key is not None else questions[0]

    def to_dict(self) -> dict[str, list[str]]:
        return {action: list(questions) for action, questions in self._questions.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[str]]) -> QuestionBank:
        return cls(data)

    def __repr__(self) -> str:
        return f"QuestionBank(actions={len(self)}, questions={self.num_questions}, source={self.source!r})"


# ----------------------------------------------------------------------------------------------------
# Builder
# ----------------------------------------------------------------------------------------------------


def _check_templates(templates: Sequence[str] | None, default: Sequence[str], argname: str, *, label_free: bool):
    if templates is None:
        templates = default
    if isinstance(templates, str) or not isinstance(templates, Sequence):
        raise TypeError(f"{argname} must be a list of strings, got {type(templates).__name__}")
    if not templates:
        raise ValueError(f"{argname} must not be empty")
    out = []
    for template in templates:
        if not isinstance(template, str) or not template.strip():
            raise ValueError(f"{argname}: every template must be a non-empty string, got {template!r}")
        fields = _template_fields(template)
        if label_free and fields:
            raise ValueError(f"{argname}: label-free template {template!r} must not use placeholders")
        out.append(template)
    return tuple(out)


def _normalize_instances(instances: Mapping[str, Sequence[str]] | None, argname: str):
    if instances is None:
        return None
    if not isinstance(instances, Mapping):
        raise TypeError(f"{argname} must be a mapping of class key -> list of instance strings")
    out: dict[str, tuple[str, ...]] = {}
    for key, values in instances.items():
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise TypeError(f"{argname}[{key!r}] must be a list of strings, got {type(values).__name__}")
        kept = []
        for value in values:
            if not isinstance(value, str):
                raise TypeError(f"{argname}[{key!r}]: instance {value!r} is not a string")
            if phrase_words(value):
                kept.append(value)
        out[" ".join(phrase_words(key))] = tuple(dict.fromkeys(kept))
    return out


class QuestionBuilder:
    """Builds the (verb question, noun question) of a clip, with the action words masked.

    Args:
        mask_token: the tokenizer's mask token string (e.g. ``tokenizer.mask_token``).
        policy: ``"strict"`` (default) or ``"paper"``; see the module docstring.
        verb_templates, noun_templates: action-aware training templates with placeholders from
            :data:`TEMPLATE_FIELDS` (defaults: :data:`DEFAULT_VERB_TEMPLATES`, ...).
        label_free_verb_templates, label_free_noun_templates: questions without placeholders for
            unlabelled clips and inference (defaults: :data:`LABEL_FREE_VERB_TEMPLATES`, ...).
        bank: a :class:`QuestionBank` (or a mapping/path to load one); actions found there use a bank
            question for both questions, the others fall back to templates (counted in ``stats``).
        verb_instances, noun_instances: class key -> synonym strings (EK100 ``instances``).
        use_instances: mask the instances of the clip's verb and noun too (as ``synonyms``).
        seed: seed of the builder's own ``random.Random``, used at training time when no ``rng`` is
            passed to :meth:`build` (pass one ``rng`` per data-loader worker to avoid repeats).

    The builder holds no tokenizer and serialises to JSON with :meth:`to_dict`.
    """

    def __init__(
        self,
        mask_token: str = "[MASK]",
        policy: str = "strict",
        verb_templates: Sequence[str] | None = None,
        noun_templates: Sequence[str] | None = None,
        bank: QuestionBank | Mapping[str, Sequence[str]] | str | Path | None = None,
        verb_instances: Mapping[str, Sequence[str]] | None = None,
        noun_instances: Mapping[str, Sequence[str]] | None = None,
        use_instances: bool = False,
        label_free_verb_templates: Sequence[str] | None = None,
        label_free_noun_templates: Sequence[str] | None = None,
        seed: int | None = None,
    ):
        self.mask_token = _check_mask_token(mask_token)
        if policy not in MASKING_POLICIES:
            raise ValueError(f"policy must be one of {MASKING_POLICIES}, got {policy!r}")
        self.policy = policy
        self.verb_templates = _check_templates(
            verb_templates, DEFAULT_VERB_TEMPLATES, "verb_templates", label_free=False
        )
        self.noun_templates = _check_templates(
            noun_templates, DEFAULT_NOUN_TEMPLATES, "noun_templates", label_free=False
        )
        self.label_free_verb_templates = _check_templates(
            label_free_verb_templates, LABEL_FREE_VERB_TEMPLATES, "label_free_verb_templates", label_free=True
        )
        self.label_free_noun_templates = _check_templates(
            label_free_noun_templates, LABEL_FREE_NOUN_TEMPLATES, "label_free_noun_templates", label_free=True
        )
        if bank is None or isinstance(bank, QuestionBank):
            self.bank = bank
        elif isinstance(bank, (str, Path)):
            self.bank = QuestionBank.load(bank)
        elif isinstance(bank, Mapping):
            self.bank = QuestionBank(bank)
        else:
            raise TypeError(f"bank must be a QuestionBank, a mapping or a path, got {type(bank).__name__}")
        self.verb_instances = _normalize_instances(verb_instances, "verb_instances")
        self.noun_instances = _normalize_instances(noun_instances, "noun_instances")
        self.use_instances = bool(use_instances)
        if self.use_instances and self.verb_instances is None and self.noun_instances is None:
            raise ValueError("use_instances=True needs verb_instances and/or noun_instances")
        self.seed = seed
        self._rng = random.Random(seed)
        self.stats = {"bank": 0, "template": 0, "label_free": 0, "fallback": 0, "missing_instances": 0}
        self.missing_actions: set[str] = set()
        self._warned: set[str] = set()

    # -- helpers --------------------------------------------------------------------------------
    def _warn_once(self, kind: str, message: str, *args: Any) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(message, *args)
        else:
            logger.debug(message, *args)

    def _instances(self, table, label: str | None, kind: str) -> tuple[str, ...]:
        if label is None or not self.use_instances or table is None:
            return ()
        found = table.get(" ".join(phrase_words(label)))
        if found is None:
            self.stats["missing_instances"] += 1
            self._warn_once(
                f"instances:{kind}",
                "no %s instances for %r: masking only the %s itself (further misses are counted in "
                "QuestionBuilder.stats['missing_instances'])",
                kind,
                label,
                kind,
            )
            return ()
        return found

    @staticmethod
    def _choose(options: Sequence[str], *, train: bool, rng: random.Random, key: str | None, salt: str) -> str:
        if train:
            return rng.choice(list(options))
        if key is None:
            return options[0]
        return options[stable_index(key, len(options), salt=salt)]

    def _mask(self, text: str, phrases: Sequence[str | None], synonyms: Sequence[str]) -> str:
        phrases = [p for p in phrases if p is not None]
        if not phrases and not synonyms:
            return text
        return mask_phrases(text, phrases, self.mask_token, synonyms=synonyms, strict=True)

    # -- public API -----------------------------------------------------------------------------
    def inference_questions(self) -> tuple[str, str]:
        """The label-free (verb question, noun question) used at inference: the first templates."""
        return self.label_free_verb_templates[0], self.label_free_noun_templates[0]

    def build(
        self,
        verb: str | None,
        noun: str | None,
        *,
        train: bool,
        key: str | None = None,
        rng: random.Random | None = None,
    ) -> tuple[str, str]:
        """(verb question, noun question) of one clip, masked per ``policy``.

        Args:
            verb, noun: the clip's verb and noun (class keys or EK100 raw forms such as
                ``"put-down"``, ``"board:chopping"``); both None gives label-free questions.
            train: True picks at random (``rng``, else the builder's own); False picks
                deterministically: by :func:`stable_index` of ``key`` (e.g. the narration id), or the
                first option without a key.
            key: the clip's identifier, for deterministic picking.
            rng: a ``random.Random`` for training-time picking.

        Evaluation must not rely on label-derived questions (see the module docstring): pass
        ``verb=None, noun=None`` there.
        """
        for name, value in (("verb", verb), ("noun", noun)):
            if value is not None and (not isinstance(value, str) or not phrase_words(value)):
                raise ValueError(f"build: {name} must be None or a non-empty string, got {value!r}")
        rng = rng if rng is not None else self._rng
        if verb is None and noun is None:
            self.stats["label_free"] += 1
            return (
                self._choose(self.label_free_verb_templates, train=train, rng=rng, key=key, salt="verb"),
                self._choose(self.label_free_noun_templates, train=train, rng=rng, key=key, salt="noun"),
            )
        if not train:
            self._warn_once(
                "eval-labels",
                "QuestionBuilder.build(train=False) with ground-truth verb/noun: the questions depend on "
                "the label; evaluate with label-free questions (verb=None, noun=None).",
            )

        verb_question = noun_question = None
        if self.bank is not None and verb is not None and noun is not None:
            question = self.bank.pick(verb, noun, rng=rng if train else None, key=key)
            if question is not None:
                self.stats["bank"] += 1
                verb_question = noun_question = question
            else:
                self.stats["fallback"] += 1
                action = QuestionBank.action_key(verb, noun)
                self.missing_actions.add(action)
                self._warn_once(
                    "bank-miss",
                    "action %r is not in the question bank: using templates (further misses are counted "
                    "in QuestionBuilder.stats['fallback'] and .missing_actions)",
                    action,
                )
        if verb_question is None:
            self.stats["template"] += 1
            verb_question = self._from_templates(
                self.verb_templates, self.label_free_verb_templates, verb, noun, train, rng, key, "verb"
            )
            noun_question = self._from_templates(
                self.noun_templates, self.label_free_noun_templates, verb, noun, train, rng, key, "noun"
            )

        return self.mask_questions(verb_question, noun_question, verb, noun)

    def mask_questions(
        self, verb_question: str, noun_question: str, verb: str | None, noun: str | None
    ) -> tuple[str, str]:
        """Mask a (verb question, noun question) pair with the clip's verb and noun per ``policy``.

        Used by :meth:`build`, and for questions supplied by the user (e.g. ``MambaVLProcessor(questions=...)``).
        ``verb``/``noun`` of None mask nothing for that word.
        """
        verb_syn = self._instances(self.verb_instances, verb, "verb")
        noun_syn = self._instances(self.noun_instances, noun, "noun")
        if self.policy == "strict":
            return (
                self._mask(verb_question, [verb, noun], verb_syn + noun_syn),
                self._mask(noun_question, [verb, noun], verb_syn + noun_syn),
            )
        # "paper": the verb question hides the noun, the noun question hides the verb (leaks targets).
        return self._mask(verb_question, [noun], noun_syn), self._mask(noun_question, [verb], verb_syn)

    def _from_templates(self, templates, label_free, verb, noun, train, rng, key, salt) -> str:
        available = {"verb"} if verb is not None else set()
        if noun is not None:
            available.add("noun")
        usable = [t for t in templates if {f.split("_")[0] for f in _template_fields(t)} <= available]
        if not usable:
            return self._choose(label_free, train=train, rng=rng, key=key, salt=salt)
        return fill_template(self._choose(usable, train=train, rng=rng, key=key, salt=salt), verb, noun)

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (for ``save_pretrained``); counters and RNG state are not
        included."""
        return {
            "mask_token": self.mask_token,
            "policy": self.policy,
            "verb_templates": list(self.verb_templates),
            "noun_templates": list(self.noun_templates),
            "label_free_verb_templates": list(self.label_free_verb_templates),
            "label_free_noun_templates": list(self.label_free_noun_templates),
            "bank": self.bank.to_dict() if self.bank is not None else None,
            "verb_instances": {k: list(v) for k, v in self.verb_instances.items()}
            if self.verb_instances is not None
            else None,
            "noun_instances": {k: list(v) for k, v in self.noun_instances.items()}
            if self.noun_instances is not None
            else None,
            "use_instances": self.use_instances,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> QuestionBuilder:
        """Rebuild from :meth:`to_dict` output; keyword ``overrides`` replace fields (e.g. the
        ``mask_token`` of a new tokenizer)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"from_dict expects a mapping, got {type(data).__name__}")
        kwargs = {**dict(data), **overrides}
        allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise ValueError(f"QuestionBuilder.from_dict: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**kwargs)  # a mapping `bank` becomes a QuestionBank in __init__

    def __repr__(self) -> str:
        return (
            f"QuestionBuilder(mask_token={self.mask_token!r}, policy={self.policy!r}, "
            f"verb_templates={len(self.verb_templates)}, noun_templates={len(self.noun_templates)}, "
            f"bank={self.bank!r}, use_instances={self.use_instances})"
        )
