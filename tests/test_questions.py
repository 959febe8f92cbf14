"""Tests for mambavl.questions: phrase masking without label leakage, templates, banks, builder."""

from __future__ import annotations

import ast
import csv
import json
import os
import random
import re
import subprocess
import sys
from functools import cache, lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mambavl.questions import (
    DEFAULT_NOUN_TEMPLATES,
    DEFAULT_VERB_TEMPLATES,
    LABEL_FREE_NOUN_TEMPLATES,
    LABEL_FREE_VERB_TEMPLATES,
    PARTICLES,
    STOP_WORDS,
    QuestionBank,
    QuestionBankError,
    QuestionBuilder,
    ek100_to_phrase,
    fill_template,
    find_leaks,
    mask_phrases,
    phrase_word_forms,
    phrase_words,
    regular_plurals,
    stable_index,
    word_forms,
)

EK100 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "epic-kitchens-100"
M = "[MASK]"
needs_ek100 = pytest.mark.skipif(
    not (EK100 / "EPIC_100_validation.csv").exists(), reason=f"EPIC-KITCHENS-100 annotations not found in {EK100}"
)


# ----------------------------------------------------------------------------------------------------
# EK100 helpers (the tiny class-list parser the data layer will own)
# ----------------------------------------------------------------------------------------------------


def _read_classes(name: str) -> dict[str, tuple[str, list[str]]]:
    """id -> (key, instances) from an EK100 class CSV (`id,key,instances,category`)."""
    with (EK100 / name).open(newline="") as handle:
        return {row["id"]: (row["key"], ast.literal_eval(row["instances"])) for row in csv.DictReader(handle)}


@lru_cache(maxsize=1)
def ek100() -> tuple[dict, dict, list[dict]]:
    verbs = _read_classes("EPIC_100_verb_classes.csv")
    nouns = _read_classes("EPIC_100_noun_classes.csv")
    with (EK100 / "EPIC_100_validation.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return verbs, nouns, rows


@cache
def _lemmas(word: str) -> frozenset[str]:
    from lemminflect import getAllLemmas

    return frozenset({word}.union(*getAllLemmas(word).values()))


def _words(text: str, mask_token: str = M) -> list[str]:
    return [w.lower() for w in re.findall(r"[^\W_]+", text.replace(mask_token, " "))]


def _spelled_form(word: str, label: str) -> bool:
    """Whether ``word`` is ``label`` with a regular inflectional ending (an oracle written apart from the
    library's rule, needing no dictionary): -s, -es, -ed, -ing, -ings, with the e-drop, y->i and doubled
    consonant spellings."""
    forms = {label + end for end in ("s", "es", "ed", "ing", "ings")}
    forms |= {label + label[-1] + end for end in ("ed", "ing", "ings")}
    if label.endswith("e"):
        forms |= {label + "d", label[:-1] + "ing", label[:-1] + "ings"}
    if label.endswith("y"):
        forms |= {label[:-1] + "ies", label[:-1] + "ied"}
    return word != label and word in forms


def _label_words(phrases) -> set[str]:
    """The words whose forms strict masking must remove: content words, and each phrase's last word."""
    out = set()
    for phrase in phrases:
        words = phrase_words(phrase)
        out |= {w for w in words if w not in STOP_WORDS and (w not in PARTICLES or len(words) == 1)}
        if words[-1] not in STOP_WORDS:
            out.add(words[-1])
    return out


# ----------------------------------------------------------------------------------------------------
# Real narrations: no leak
# ----------------------------------------------------------------------------------------------------


@needs_ek100
@pytest.mark.parametrize("use_instances", [False, True], ids=["keys", "keys+instances"])
def test_ek100_validation_narrations_do_not_leak(use_instances):
    verbs, nouns, rows = ek100()
    checked, leaks, oracle_leaks, spelled_leaks = 0, [], [], []
    for row in rows:
        phrases = [row["verb"], row["noun"]]
        synonyms = tuple(verbs[row["verb_class"]][1]) + tuple(nouns[row["noun_class"]][1]) if use_instances else ()
        masked = mask_phrases(row["narration"], phrases, M, synonyms=synonyms)
        found = find_leaks(masked, phrases, synonyms=synonyms, mask_token=M)
        if found:
            leaks.append((row["narration"], masked, found))
        # Dictionary-free oracle: no surviving word is a regular inflection (plural, -ed, -ing, -ings) of a
        # word of the verb, the noun or (with instances) a synonym ("veggie peelings" for peeling:veggie).
        label_words = _label_words(phrases + list(synonyms))
        for word in _words(masked):
            if any(_spelled_form(word, label) for label in label_words):
                spelled_leaks.append((row["narration"], masked, word))
        # Independent oracle: no surviving word shares a lemma with a non-stop word of the verb/noun.
        label_lemmas = frozenset().union(
            *(_lemmas(w) for p in phrases for w in phrase_words(p) if w not in STOP_WORDS)
        )
        for word in _words(masked):
            if _lemmas(word) & label_lemmas:
                oracle_leaks.append((row["narration"], masked, word))
        checked += 1
    assert checked == 9668, f"checked {checked} narrations, expected 9,668"
    assert not leaks, f"{len(leaks)} of {checked} narrations leak, e.g. {leaks[:5]}"
    assert not oracle_leaks, f"{len(oracle_leaks)} of {checked} narrations leak a lemma, e.g. {oracle_leaks[:5]}"
    assert not spelled_leaks, f"{len(spelled_leaks)} narrations leak a regular form, e.g. {spelled_leaks[:5]}"
    print(f"checked {checked} EPIC-KITCHENS-100 validation narrations (instances={use_instances}): no leak")


@needs_ek100
def test_ek100_narrations_are_actually_masked():
    # Guard against a vacuous pass: most narrations name their verb and noun and must change.
    _, _, rows = ek100()
    changed = sum(mask_phrases(r["narration"], [r["verb"], r["noun"]], M) != r["narration"] for r in rows)
    assert changed > 0.95 * len(rows), changed


@needs_ek100
@pytest.mark.parametrize("use_instances", [False, True], ids=["keys", "keys+instances"])
def test_default_templates_read_the_same_for_every_ek100_class(use_instances):
    # After strict masking a training template must not depend on the label at all.
    verbs, nouns, _ = ek100()
    verb_items = list(verbs.values())
    noun_items = list(nouns.values())
    pairs = [(v, noun_items[i % len(noun_items)]) for i, v in enumerate(verb_items)]
    pairs += [(verb_items[i % len(verb_items)], n) for i, n in enumerate(noun_items)]
    for template in DEFAULT_VERB_TEMPLATES + DEFAULT_NOUN_TEMPLATES:
        outputs = {}
        for (verb, verb_inst), (noun, noun_inst) in pairs:
            synonyms = tuple(verb_inst) + tuple(noun_inst) if use_instances else ()
            masked = mask_phrases(fill_template(template, verb, noun), [verb, noun], M, synonyms=synonyms)
            outputs.setdefault(masked, (verb, noun))
        assert len(outputs) == 1, f"{template!r} depends on the label: {outputs}"


# ----------------------------------------------------------------------------------------------------
# EK100 keys and word forms
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "phrase"),
    [
        ("turn-on", "turn on"),
        ("put-down", "put down"),
        ("board:chopping", "chopping board"),
        ("pan:frying", "frying pan"),
        ("machine:sous:vide", "vide sous machine"),
        ("filter:more:water", "water more filter"),
        ("open door", "open door"),
        ("  take  ", "take"),
    ],
)
def test_ek100_to_phrase(key, phrase):
    assert ek100_to_phrase(key) == phrase


def test_word_forms_cover_inflections_and_lemmas():
    assert {"open", "opens", "opened", "opening"} <= word_forms("open")
    assert {"cut", "cuts", "cutting"} <= word_forms("cut")
    assert {"take", "takes", "took", "taken", "taking"} <= word_forms("take")
    assert {"knife", "knives"} <= word_forms("knife")
    assert {"knife", "knives"} <= word_forms("knives")  # from the lemma too
    assert {"hob", "hobs"} <= word_forms("hob")  # unknown to lemminflect's dictionary
    assert "pancake" not in word_forms("pan")
    assert "tape" not in word_forms("tap")


@pytest.mark.parametrize(
    ("word", "plurals"),
    [
        ("board", {"boards"}),
        ("peeling", {"peelings"}),
        ("over", {"overs"}),
        ("glass", {"glasses"}),
        ("box", {"boxes"}),
        ("peach", {"peaches"}),
        ("dish", {"dishes"}),
        ("cutlery", {"cutleries"}),
        ("tray", {"trays"}),
        ("potato", {"potatos", "potatoes"}),
        ("leaf", {"leafs", "leaves"}),
        ("knife", {"knifes", "knives"}),
        # words no dictionary lists: the rule is spelling alone
        ("zimbery", {"zimberies"}),
        ("frobnix", {"frobnixes"}),
        ("glorping", {"glorpings"}),
        ("Quux", {"quuxes"}),
        ("", set()),
        ("t-shirt", set()),
    ],
)
def test_regular_plurals(word, plurals):
    assert regular_plurals(word) == plurals


def test_word_forms_add_regular_plurals_the_dictionary_lacks():
    assert "peelings" in word_forms("peeling") and "peelings" in word_forms("peel")  # gerund used as a noun
    assert "cutleries" in word_forms("cutlery")  # listed as uncountable
    assert "cuttings" in word_forms("cut")
    assert {"overs", "lefts"} <= phrase_word_forms("over:left")  # the last word, a particle, takes a plural
    assert "ons" in phrase_word_forms("turn-on") and "turns" in phrase_word_forms("turn-on")
    assert "ons" not in phrase_word_forms("turn on tap")  # only the last word
    assert "tape" not in word_forms("tap") and "taped" not in word_forms("tap")
    # an EK100 instance (synonym) ending in a particle: its plural is masked inside the instance only
    masked = mask_phrases("throw left overs in the bin, two overs", ["throw", "rubbish"], M, synonyms=["over:left"])
    assert masked == "[MASK] [MASK] in the bin, two overs"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="bcdfghklmnprstvz", min_size=1, max_size=3), st.sampled_from(["a", "e", "i", "o", "u"]),
       st.sampled_from(["", "y", "o", "f", "fe", "s", "x", "ch", "sh", "ing"]))  # fmt: skip
def test_unseen_words_lose_every_regular_plural(head, vowel, tail):
    # An invented noun, one for each spelling case: every regular plural of it is masked.
    word = head + vowel + "r" + tail
    assume(word not in PARTICLES | STOP_WORDS)  # "for", "her": words that are never masked alone, not nouns
    forms = set(regular_plurals(word))  # tail "ing": a gerund used as a noun ("barings")
    text = " ".join(["grab", *sorted(forms), word, "quickly"])
    masked = mask_phrases(text, [f"{word}:old"], M, merge=False)
    assert masked == " ".join(["grab", *[M] * (len(forms) + 1), "quickly"])
    # as the noun of a phrase given as a synonym (an EK100 instance) too
    masked = mask_phrases(text, ["take"], M, synonyms=[f"{word}:old"], merge=False)
    assert masked == " ".join(["grab", *[M] * (len(forms) + 1), "quickly"])


def test_phrase_word_forms():
    forms = phrase_word_forms("turn-on")
    assert {"turn", "turns", "turned", "turning", "on"} <= forms
    assert {"put", "putting", "down"} <= phrase_word_forms("put-down")
    assert {"chopping", "chop", "board", "boards"} <= phrase_word_forms("board:chopping")
    assert "the" not in phrase_word_forms("open the door")  # stop words only mask contiguously
    assert isinstance(forms, frozenset)


# ----------------------------------------------------------------------------------------------------
# Masking: tricky cases
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "phrases", "expected"),
    [
        # inflections
        ("open opens opened opening", ["open"], "[MASK] [MASK] [MASK] [MASK]"),
        ("cut, cuts, cutting", ["cut"], "[MASK], [MASK], [MASK]"),
        ("take it; took it; taken", ["take"], "[MASK] it; [MASK] it; [MASK]"),
        ("putting down the cup", ["put-down"], "[MASK] the cup"),
        ("a knife and two knives", ["knife"], "a [MASK] and two [MASK]"),
        ("a knife and two knives", ["knives"], "a [MASK] and two [MASK]"),
        # multi-word and colon nouns
        ("wash the chopping board", ["board:chopping"], "wash the [MASK]"),
        ("heat the frying pan", ["pan:frying"], "heat the [MASK]"),
        ("the board, then chopping", ["board:chopping"], "the [MASK], then [MASK]"),
        # whole words only
        ("flip the pancake in the pan", ["pan"], "flip the pancake in the [MASK]"),
        ("tape the tap", ["tap"], "tape the [MASK]"),
        ("the tapestry of taps", ["tap"], "the tapestry of [MASK]"),
        # punctuation and apostrophes
        ("Open the door.", ["open", "door"], "[MASK] the [MASK]."),
        ("The door's handle!", ["door"], "The [MASK]'s handle!"),
        ('"open" (door)', ["open", "door"], '"[MASK]" ([MASK])'),
        # capitals and repeats
        ("OPEN the Door, open the DOOR", ["open", "door"], "[MASK] the [MASK], [MASK] the [MASK]"),
        # hyphenated verbs given as keys and as text
        ("turn on the tap", ["turn-on"], "[MASK] the tap"),
        ("put-down the plate", ["put-down"], "[MASK] the plate"),
        # split phrasal verbs (strict: the particle would tell turn-on from turn-off)
        ("turn the tap on", ["turn-on", "tap"], "[MASK] the [MASK] [MASK]"),
        ("turn the tap off", ["turn-off"], "[MASK] the tap [MASK]"),
        # consecutive-mask merging
        ("put down the plate", ["put-down"], "[MASK] the plate"),
        ("put down the plate", ["put-down", "plate"], "[MASK] the [MASK]"),
        ("take plate", ["take", "plate"], "[MASK] [MASK]"),
        ("open open door", ["open"], "[MASK] [MASK] door"),
        ("chopping board", ["board:chopping"], "[MASK]"),
        ("board chopping", ["board:chopping"], "[MASK] [MASK]"),
        ("turn on tap", ["turn-on", "tap"], "[MASK] [MASK]"),
        # regular plurals the inflection dictionary lacks (gerund nouns, uncountables, a final particle)
        ("put veggie peelings in new bin", ["put-in", "peeling:veggie"], "[MASK] [MASK] [MASK] new bin"),
        ("sort the cutleries", ["cutlery"], "sort the [MASK]"),
        ("throw left overs in the bin", ["throw", "over:left"], "[MASK] [MASK] in the bin"),
        ("the left overs, then the overs", ["over:left"], "the [MASK], then the [MASK]"),
        ("collect the shavings", ["shave"], "collect the [MASK]"),
        ("wipe the hobs", ["hob"], "wipe the [MASK]"),
        # a one-word phrase is a content word even when it doubles as a function word
        ("open the cans", ["can"], "open the [MASK]"),
        ("nothing to hide", ["open"], "nothing to hide"),
        ("", ["open"], ""),
    ],
)
def test_mask_phrases_cases(text, phrases, expected):
    assert mask_phrases(text, phrases, M) == expected
    assert find_leaks(expected, phrases, mask_token=M) == []


def test_mask_without_merge_and_other_mask_tokens():
    assert mask_phrases("put down the plate", ["put-down"], M, merge=False) == "[MASK] [MASK] the plate"
    assert mask_phrases("Open the door.", ["open", "door"], "<mask>") == "<mask> the <mask>."
    # A phrase word equal to the mask token's letters does not touch the mask token itself.
    assert mask_phrases("<mask> the mask", ["mask"], "<mask>") == "<mask> the <mask>"


def test_masking_is_idempotent():
    once = mask_phrases("Turn the tap on, then turn it off.", ["turn-on", "tap"], "<mask>")
    assert mask_phrases(once, ["turn-on", "tap"], "<mask>") == once


def test_non_strict_and_synonyms():
    # non-strict: particles only inside a contiguous occurrence
    assert mask_phrases("turn the tap on", ["turn-on"], M, strict=False) == "[MASK] the tap on"
    assert mask_phrases("turn on the tap", ["turn-on"], M, strict=False) == "[MASK] the tap"
    # synonyms (class instances): content words everywhere, particles only contiguously
    text = "pick up the plate from the cupboard, grab it and pick the cup up"
    masked = mask_phrases(text, ["take", "plate"], M, synonyms=["pick-up", "grab", "take-from"])
    assert masked == "[MASK] the [MASK] from the cupboard, [MASK] it and [MASK] the cup up"
    assert find_leaks(masked, ["take", "plate"], synonyms=["pick-up", "grab", "take-from"], mask_token=M) == []
    # stop words of a phrase are masked only inside the phrase
    assert mask_phrases("add more water, more salt", ["filter:more:water"], M) == "add more [MASK], more salt"
    assert mask_phrases("the water more filter", ["filter:more:water"], M) == "the [MASK]"


def test_find_leaks_reports_words_in_order():
    assert find_leaks("Open the doors, then opened it", ["open", "door"]) == ["Open", "doors", "opened"]
    assert find_leaks("flip the pancake", ["pan"]) == []
    assert find_leaks("turn the tap on", ["turn-on"]) == ["turn", "on"]


def test_mask_phrases_bad_input():
    with pytest.raises(ValueError, match="mask_token"):
        mask_phrases("open", ["open"], "")
    with pytest.raises(ValueError, match="no words"):
        mask_phrases("open", ["--"], M)
    with pytest.raises(TypeError, match="text"):
        mask_phrases(None, ["open"], M)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="phrase"):
        mask_phrases("open", [3], M)  # type: ignore[list-item]
    assert mask_phrases("open it", "open", M) == "[MASK] it"  # a single phrase string is accepted


# ----------------------------------------------------------------------------------------------------
# Property: masking removes exactly the forms of the phrases
# ----------------------------------------------------------------------------------------------------

_PHRASES = ["open", "put-down", "board:chopping", "tap", "pan", "knife", "take", "turn-on", "cut", "pan:frying"]
_OTHER_WORDS = [
    "the", "a", "person", "pancake", "tape", "tapestry", "opener", "bowl", "red", "quickly", "of", "it",
    "knifepoint", "taking", "cuts", "board", "boarded", "frying", "chopped", "panic", "downstairs",
    "door", "water", "on", "off", "down", "and", "then", "plate", "taper", "cutter", "openly", "mask",
]  # fmt: skip
_SEPARATORS = [" ", " ", " ", ", ", ". ", "; ", " - ", "-", "'", " (", ") ", "\n"]


def _case(word: str, style: int) -> str:
    return [word, word.upper(), word.capitalize()][style]


@st.composite
def _masking_case(draw):
    phrases = draw(st.lists(st.sampled_from(_PHRASES), min_size=1, max_size=3, unique=True))
    forms = frozenset().union(*(phrase_word_forms(p) for p in phrases))
    others = [w for w in _OTHER_WORDS if w not in forms]
    form_list = sorted(forms)
    words = draw(
        st.lists(
            st.one_of(st.sampled_from(others), st.sampled_from(form_list)),
            min_size=0,
            max_size=14,
        )
    )
    styles = draw(st.lists(st.integers(0, 2), min_size=len(words), max_size=len(words)))
    seps = draw(st.lists(st.sampled_from(_SEPARATORS), min_size=len(words), max_size=len(words)))
    text = "".join(_case(w, s) + sep for w, s, sep in zip(words, styles, seps, strict=True))
    mask = draw(st.sampled_from(["[MASK]", "<mask>", "[mask]"]))
    return phrases, forms, words, text, mask


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_masking_case())
def test_masking_keeps_other_words_and_removes_every_form(case):
    phrases, forms, words, text, mask = case
    masked = mask_phrases(text, phrases, mask)
    survivors = _words(masked, mask)
    assert survivors == [w for w in words if w not in forms]
    assert not set(survivors) & forms
    assert find_leaks(masked, phrases, mask_token=mask) == []
    assert mask_phrases(masked, phrases, mask) == masked
    # every masked word became at most one mask token, and forms present means masks present
    n_forms = sum(w in forms for w in words)
    assert masked.count(mask) <= n_forms
    assert (masked.count(mask) > 0) == (n_forms > 0)


# ----------------------------------------------------------------------------------------------------
# Templates
# ----------------------------------------------------------------------------------------------------


def test_fill_template_inflects():
    assert fill_template("What is the person {verb_ing}?", "put-down", "plate") == "What is the person putting down?"
    assert fill_template("{verb_s} {verb_past} {verb_pp}", "take", "x") == "takes took taken"
    assert fill_template("{verb} the {noun}", "turn-on", "tap:water") == "turn on the water tap"
    assert fill_template("{noun_plural}", "x", "knife") == "knives"
    assert fill_template("{verb_ing} the {noun}", "cut", "board:chopping") == "cutting the chopping board"
    with pytest.raises(ValueError, match="needs a verb"):
        fill_template("{verb} it", None, "plate")


def test_bad_templates_are_rejected():
    with pytest.raises(ValueError, match="placeholder"):
        QuestionBuilder(verb_templates=["What is {object}?"])
    with pytest.raises(ValueError, match="must not use placeholders"):
        QuestionBuilder(label_free_verb_templates=["What is {noun}?"])
    with pytest.raises(ValueError, match="must not be empty"):
        QuestionBuilder(noun_templates=[])
    with pytest.raises(TypeError):
        QuestionBuilder(noun_templates="What is the {noun}?")


# ----------------------------------------------------------------------------------------------------
# Question banks
# ----------------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_bank_csv_verb_noun(tmp_path):
    path = _write(
        tmp_path / "bank.csv",
        "verb,noun,question\n"
        "open,door,What does the person do to the door?\n"
        'open,door,"Is the door being opened, or closed?"\n'
        "put-down,board:chopping,Where does the chopping board go?\n"
        "open,door,What does the person do to the door?\n",  # duplicate: dropped
    )
    bank = QuestionBank.load(path)
    assert len(bank) == 2 and bank.num_questions == 3
    assert bank.get("open", "door") == (
        "What does the person do to the door?",
        "Is the door being opened, or closed?",
    )
    assert ("put down", "chopping board") in bank
    assert "put-down:board:chopping" in bank
    assert bank.get("close", "door") == ()


def test_bank_csv_action_column(tmp_path):
    path = _write(
        tmp_path / "bank.csv",
        "id,action,question\n1,open door,Q1\n2,open:door,Q2\n3,cut board:chopping,Q3\n4,cut:board:chopping,Q4\n",
    )
    bank = QuestionBank.from_csv(path)
    assert bank.get("open", "door") == ("Q1", "Q2")
    assert bank.get("cut", "board:chopping") == ("Q3", "Q4")


def test_bank_json_formats(tmp_path):
    mapping = _write(tmp_path / "a.json", json.dumps({"open door": ["q1", "q2"], "put-down:plate": "q3"}))
    bank = QuestionBank.load(mapping)
    assert bank.get("open", "door") == ("q1", "q2") and bank.get("put-down", "plate") == ("q3",)
    records = _write(
        tmp_path / "b.json",
        json.dumps(
            [
                {"verb": "open", "noun": "door", "question": "q1"},
                {"action": "open door", "questions": ["q2", "q3"]},
            ]
        ),
    )
    assert QuestionBank.load(records).get("open", "door") == ("q1", "q2", "q3")
    assert QuestionBank.from_dict(bank.to_dict()).to_dict() == bank.to_dict()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "", "empty CSV"),
        ("a.csv", "verb,question\nopen,q\n", "header must have columns"),
        ("a.csv", "verb,noun,question\n", "no questions"),
        ("a.csv", "verb,noun,question\nopen,door,q\nopen,,q\n", r"a\.csv: line 3: 'noun'"),
        ("a.csv", "verb,noun,question\nopen,door,  \n", r"line 2: 'question'"),
        ("a.csv", "verb,noun,question\nopen,door\n", r"line 2: expected 3 fields"),
        ("a.csv", "action,question\nopen,q\n", r"line 2: action 'open' needs a verb and a noun"),
        ("a.json", "{not json", r"a\.json: invalid JSON at line 1"),
        ("a.json", "42", "expected an object"),
        ("a.json", "[]", "no questions"),
        ("a.json", '{"open door": []}', "action 'open door': expected a non-empty list"),
        ("a.json", '{"open door": ["ok", 3]}', "question 1: 'question' must be a non-empty string"),
        ("a.json", '[{"verb": "open", "question": "q"}]', "item 0: needs both 'verb' and 'noun'"),
        ("a.json", '[{"verb": "open", "noun": "door"}]', "item 0: needs 'question'"),
        ("a.json", '[{"question": "q"}]', "item 0: needs 'verb' and 'noun', or 'action'"),
        ("a.txt", "x", "unknown question-bank format"),
    ],
)
def test_bad_banks_raise_clear_errors(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(QuestionBankError, match=message) as info:
        QuestionBank.load(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_bank_file(tmp_path):
    with pytest.raises(QuestionBankError, match="cannot open"):
        QuestionBank.load(tmp_path / "nope.csv")


def test_bank_pick_random_and_deterministic():
    bank = QuestionBank({"open door": [f"question {i}" for i in range(10)]})
    picks = {bank.pick("open", "door", rng=random.Random(seed)) for seed in range(50)}
    assert len(picks) > 3
    assert bank.pick("open", "door", rng=random.Random(1)) == bank.pick("open", "door", rng=random.Random(1))
    by_key = [bank.pick("open", "door", key=f"P01_11_{i}") for i in range(30)]
    assert by_key == [bank.pick("open", "door", key=f"P01_11_{i}") for i in range(30)]
    assert len(set(by_key)) > 3
    assert bank.pick("open", "door") == "question 0"
    assert bank.pick("close", "door", key="k") is None


def test_stable_index_is_stable_across_processes():
    # Golden values (SHA-256 based): the same on every machine, Python version and process.
    expected = [2, 5, 9, 4, 8, 4, 3, 7, 9, 2, 8, 8]
    assert [stable_index(f"clip{i}", 10) for i in range(12)] == expected
    # A fresh interpreter with a different hash seed agrees (the module file is loaded on its own so
    # that the check does not pay for importing the whole package).
    import mambavl.questions as questions

    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('q', {questions.__file__!r})\n"
        "q = importlib.util.module_from_spec(spec); sys.modules['q'] = q; spec.loader.exec_module(q)\n"
        "print([q.stable_index(f'clip{i}', 10) for i in range(12)])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(expected)
    with pytest.raises(ValueError):
        stable_index("x", 0)


# ----------------------------------------------------------------------------------------------------
# Builder and policies
# ----------------------------------------------------------------------------------------------------


def test_builder_strict_hides_verb_and_noun_everywhere():
    builder = QuestionBuilder(mask_token="<mask>")
    rng = random.Random(0)
    for verb, noun in [("put-down", "board:chopping"), ("turn-on", "tap"), ("take", "knife"), ("cut", "pan")]:
        for _ in range(20):
            vq, nq = builder.build(verb, noun, train=True, rng=rng)
            for question in (vq, nq):
                assert "<mask>" in question
                assert find_leaks(question, [verb, noun], mask_token="<mask>") == []


def test_builder_paper_policy_masks_the_other_word_only():
    bank = QuestionBank({"open door": ["Open the door."]})
    strict = QuestionBuilder(bank=bank)
    paper = QuestionBuilder(bank=bank, policy="paper")
    assert strict.build("open", "door", train=True) == ("[MASK] the [MASK].", "[MASK] the [MASK].")
    # reference behaviour: the verb question hides the noun and shows the verb (its own target), and
    # the noun question hides the verb and shows the noun
    assert paper.build("open", "door", train=True) == ("Open the [MASK].", "[MASK] the door.")
    vq, nq = paper.build("put-down", "board:chopping", train=False, key="clip")
    assert find_leaks(vq, ["board:chopping"], mask_token=M) == []
    assert find_leaks(nq, ["put-down"], mask_token=M) == []
    with pytest.raises(ValueError, match="policy"):
        QuestionBuilder(policy="lenient")


def test_builder_bank_and_fallback(caplog):
    bank = QuestionBank({"open door": [f"Why open the door, take {i}?" for i in range(5)]})
    builder = QuestionBuilder(bank=bank, seed=0)
    vq, nq = builder.build("open", "door", train=True)
    assert vq == nq and vq.startswith("Why [MASK] the [MASK]")
    with caplog.at_level("WARNING", logger="mambavl.questions"):
        builder.build("close", "door", train=True)
        builder.build("wash", "cup", train=True)
    assert builder.stats["fallback"] == 2 and builder.stats["bank"] == 1
    assert builder.missing_actions == {"close door", "wash cup"}
    assert sum("not in the question bank" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_builder_deterministic_at_eval_and_random_at_train():
    builder = QuestionBuilder()
    first = [builder.build("take", "knife", train=False, key=f"clip{i}") for i in range(10)]
    again = [QuestionBuilder().build("take", "knife", train=False, key=f"clip{i}") for i in range(10)]
    assert first == again
    assert len(set(first)) > 1
    rng_a, rng_b = random.Random(3), random.Random(3)
    assert [builder.build("take", "knife", train=True, rng=rng_a) for _ in range(10)] == [
        builder.build("take", "knife", train=True, rng=rng_b) for _ in range(10)
    ]
    seeded = [QuestionBuilder(seed=7).build("take", "knife", train=True) for _ in range(3)]
    assert len(set(seeded)) == 1


def test_builder_label_free_and_partial_labels():
    builder = QuestionBuilder()
    assert builder.inference_questions() == (LABEL_FREE_VERB_TEMPLATES[0], LABEL_FREE_NOUN_TEMPLATES[0])
    vq, nq = builder.build(None, None, train=True, rng=random.Random(0))
    assert vq in LABEL_FREE_VERB_TEMPLATES and nq in LABEL_FREE_NOUN_TEMPLATES
    assert builder.build(None, None, train=False) == builder.inference_questions()
    # only a noun: verb questions that need {verb} are skipped; noun questions need {verb} -> label-free
    vq, nq = builder.build(None, "door", train=False, key="k")
    assert "[MASK]" in vq and "door" not in vq.lower()
    builder_noun_only = QuestionBuilder(noun_templates=["What is the {verb_ing} person holding?"])
    assert builder_noun_only.build(None, "door", train=False)[1] in LABEL_FREE_NOUN_TEMPLATES
    with pytest.raises(ValueError, match="verb"):
        builder.build("", "door", train=True)


def test_builder_instances():
    verb_instances = {"take": ["take", "grab", "pick-up", "take-from"]}
    noun_instances = {"tap": ["tap", "tap:water"]}
    bank = QuestionBank({"take tap": ["Grab the water tap, then pick up the cup from the sink."]})
    with_inst = QuestionBuilder(
        bank=bank, verb_instances=verb_instances, noun_instances=noun_instances, use_instances=True
    )
    vq, _ = with_inst.build("take", "tap", train=True)
    assert vq == "[MASK] the [MASK], then [MASK] the cup from the sink."
    without = QuestionBuilder(bank=bank, verb_instances=verb_instances, noun_instances=noun_instances)
    assert without.build("take", "tap", train=True)[0] == "Grab the water [MASK], then pick up the cup from the sink."
    with_inst.build("wash", "tap", train=True)
    assert with_inst.stats["missing_instances"] == 1
    with pytest.raises(ValueError, match="use_instances"):
        QuestionBuilder(use_instances=True)


def test_builder_round_trips_through_json():
    builder = QuestionBuilder(
        mask_token="<mask>",
        policy="paper",
        bank=QuestionBank({"open door": ["Open it."]}),
        verb_instances={"take": ["grab"]},
        noun_instances={"board:chopping": ["board"]},
        use_instances=True,
        seed=3,
    )
    data = json.loads(json.dumps(builder.to_dict()))
    clone = QuestionBuilder.from_dict(data)
    assert clone.to_dict() == builder.to_dict()
    assert clone.build("open", "door", train=False, key="x") == builder.build("open", "door", train=False, key="x")
    assert QuestionBuilder.from_dict(data, mask_token="[MASK]").mask_token == "[MASK]"
    with pytest.raises(ValueError, match="unknown field"):
        QuestionBuilder.from_dict({**data, "tokenizer": "roberta"})


def test_builder_bank_from_path(tmp_path):
    path = _write(tmp_path / "bank.json", json.dumps({"open door": ["Open the door please."]}))
    builder = QuestionBuilder(bank=path)
    assert builder.build("open", "door", train=True)[0] == "[MASK] the [MASK] please."
