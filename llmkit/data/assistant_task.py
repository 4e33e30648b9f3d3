"""The built-in assistant task: questions about Shakespeare's plays, made by code from the corpus.

A pretrained model has read the plays but does not answer questions; post-training should teach it to.
Four kinds of question, each with one right answer and a plausible wrong one (a preference pair). Three
offer the two answers in the question (answering with either is the format; choosing the right one is
knowledge a language model of the plays has: which continuation, speaker or play is likelier), the
fourth is answered by reading the prompt:

    play      In which play does Shylock appear: The Merchant of Venice or Othello?   knowledge, 2 options
    speaker   In Othello, who says "...": Iago or Cassio?                              knowledge, 2 options
    continue  Continue this line from Julius Caesar: "Friends, Romans, countrymen," - "lend me your ears"
              or "the noble Brutus"?                                                 memory of the text
    passage   <3 short speeches>  In this passage, who says "..."?                     reading the prompt

Held-out questions are about characters and blocks of speeches that no training question asks about,
shows or names beside their play (make_questions says how), so accuracy on them measures what the model
learned, not what it was shown. The answer is checked by
exact match after normalisation (case, punctuation, surrounding quotes); `accuracy` reports it with a
Wilson 95% interval, overall and per kind. Only the training plays are used (the pretraining corpus;
hamlet, macbeth and tempest stay unseen), so the knowledge questions are answerable from pretraining.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from llmkit.atomic import atomic_write_text
from llmkit.errors import DataError
from llmkit.eval.stats import paired_comparison as compare_paired
from llmkit.eval.stats import wilson_interval

KINDS = ("play", "speaker", "continue", "passage")
SPEAKER_TAG = re.compile(r"^((?:MRS?\. |Mrs?\. )?[A-Z][A-Za-z'\-]*(?: [A-Za-z'\-]+){0,3})\.?$")
# what the lines call the characters tagged "MRS. PAGE." and "MR. FORD." (The Merry Wives of Windsor)
TAG_TITLES = {"mrs": "Mistress", "mr": "Master"}
# tags that name no one character, or are left of a name the text cuts ("Ost" in Henry IV Part 1); other
# short names are characters (Sly, Nym, Lord Say, the Bishop of Ely)
NOT_NAMES = {"All", "Boy", "Son", "Man", "Her", "Off", "Ost", "Car"}
SMALL_WORDS = {"and", "of", "the", "or", "to", "a", "in", "on", "for"}
# The usual short titles where the Gutenberg headings are long ("The Life and Death of King Richard III"):
# shorter answers to copy, and the names people use.
SHORT_TITLES = {
    "coriolanus_gut": "Coriolanus", "henry_iv_part_1_gut": "Henry IV Part 1", "henry_iv_part_2_gut": "Henry IV Part 2",
    "henry_v_gut": "Henry V", "henry_vi_part_1_gut": "Henry VI Part 1", "henry_vi_part_2_gut": "Henry VI Part 2",
    "henry_vi_part_3_gut": "Henry VI Part 3", "henry_viii_gut": "Henry VIII", "lear_gut": "King Lear",
    "othello_gut": "Othello", "pericles_gut": "Pericles", "richard_ii_gut": "Richard II",
    "richard_iii_gut": "Richard III", "timon_of_athens_gut": "Timon of Athens",
    "tragedy_of_titus_andronicus_gut": "Titus Andronicus", "troilus_and_cressida_gut": "Troilus and Cressida",
}


@dataclass
class Speech:
    speaker: str
    lines: list[str]


@dataclass
class Play:
    title: str
    speeches: list[Speech]


@dataclass
class Question:
    kind: str
    prompt: str  # the user's message
    answer: str  # the right reply
    wrong: str  # a plausible wrong reply
    subject: str  # what the question asks about: the line, or the character ("play")
    unit: str = ""  # what is held out with it: the character, or the block of three speeches holding the line

    def sft_record(self) -> dict:
        return {"messages": [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.answer}]}

    def preference_record(self) -> dict:
        return {"prompt": [{"role": "user", "content": self.prompt}],
                "chosen": [{"role": "assistant", "content": self.answer}],
                "rejected": [{"role": "assistant", "content": self.wrong}],
                "kind": self.kind, "answer": self.answer}


# --- parsing the corpus ---------------------------------------------------------------------------------------
def title_case(text: str) -> str:
    words = text.strip().lower().split()
    out = []
    for i, w in enumerate(words):
        if re.fullmatch(r"[ivx]+,?", w) and i:
            out.append(w.upper())  # King Henry IV
        else:
            out.append(w if (i and w in SMALL_WORDS) else w[:1].upper() + w[1:])
    return " ".join(out)


def parse_play(path: Path) -> Play | None:
    """Speeches of a play text (Project Gutenberg layout: a speaker's name alone on a line, then the
    speech, blocks separated by blank lines). None for poems (no speakers). Stage directions are left out
    of the speeches, also within a line ("Softly, dear sir! [Picks his pocket.] good sir"); speaker tags cut
    short are written out (`full_names`: "Fal." is Falstaff, "Edg." Edgar)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    title = SHORT_TITLES.get(path.stem) or title_case(text.strip().split("\n", 1)[0].split(";")[0])
    tagged = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.strip().split("\n")]
        if len(lines) < 2:
            continue
        tag = SPEAKER_TAG.match(lines[0])
        if not tag or not (lines[0].endswith(".") or lines[0].isupper()) or not _looks_like_a_name(tag.group(1)):
            continue
        speech = _without_stage_directions(lines[1:])
        if speech:
            name = re.sub(r"^(?i:(mrs?))\. ", lambda m: TAG_TITLES[m.group(1).lower()] + " ", tag.group(1))
            tagged.append((title_case(name), speech))
    names = full_names({t for t, _ in tagged}, text, "\n".join(line for _, speech in tagged for line in speech))
    speeches = [Speech(names[t], speech) for t, speech in tagged
                if names[t] not in NOT_NAMES and not re.fullmatch(r"[IVX]+", names[t], re.I)]
    if len(speeches) < 100:
        return None
    return Play(title, speeches)


def _looks_like_a_name(tag: str) -> bool:
    """A tag, not a short sentence alone on a line ("Saddle my horse.") nor a heading ("Act I")."""
    if re.fullmatch(r"(?i)(act|scene) [ivx]+", tag):
        return False
    return tag.isupper() or all(w[:1].isupper() or w in SMALL_WORDS for w in tag.split())


def _without_stage_directions(lines: list[str]) -> list[str]:
    """A speech's lines without its stage directions: whole bracketed lines, bracketed spans within a line,
    and a direction that runs on over lines ("[Enter Lear, Cornwall, Albany, Goneril, Regan, Cordelia, and" /
    "Attendants.]"). A "[" that no later line closes ends with its line (three in Henry VI Part 1 hid ten lines)."""
    kept, inside = [], False
    for k, line in enumerate(lines):
        if inside:  # the rest of a direction begun on an earlier line
            if "]" not in line:
                continue
            line, inside = line.split("]", 1)[1], False
        line = re.sub(r"\[[^\]]*\]", " ", line)
        if "[" in line:
            # a direction runs on only to a line that closes it; one never closed ends with its line ("[Going.")
            line, inside = line.split("[", 1)[0], any("]" in later.split("[", 1)[0] for later in lines[k + 1:])
        line = " ".join(line.split())
        if line:
            kept.append(line)
    return kept


# the one tag whose written-out name does not begin with it (King Lear's "Glou." is Gloster in the directions)
TAG_SPELLINGS = {"Glou": "Gloster"}


def full_names(tags: set[str], text: str, spoken: str) -> dict[str, str]:
    """{tag: the character's name}: a tag cut short ("Fal", "Edg", "First Serv") written out as the likeliest
    name beginning with it among those the stage directions and the list of characters use ("[Enter Prince
    Henry and Falstaff.]"). Only a short word the lines (`spoken`) say less often than longer words beginning
    with it is cut short (`cut_short`): "Casca" is a name, "Hot" is Hotspur. "Cor" beside the tag "Corn" is
    Cordelia, not Cornwall. King Lear lost Edgar, Edmund, Regan and five more to tags under four letters, Henry
    IV Part 1 Falstaff and Hotspur."""
    cast_text = " ".join(re.findall(r"\[[^\]]*\]", text))
    listed = re.search(r"Dramatis Person\w*(.*?)\n\s*(?:ACT|Act) [IV1]", text, re.S)
    cast_text += " " + (listed.group(1) if listed else "")
    words: dict[str, int] = {}
    for w in re.findall(r"\b[A-Z][A-Za-z]+\b", cast_text):  # in capitals too ("[Enter AGAMEMNON]")
        words[w.capitalize()] = words.get(w.capitalize(), 0) + 1
    tag_words = {w for t in tags for w in t.split()}

    def write_out(short: str) -> str:
        if short in TAG_SPELLINGS:
            return TAG_SPELLINGS[short]
        # a tag the lines never say is cut short too ("Mess", "Cham": the lines say "messenger", "chamberlain")
        if not 3 <= len(short) <= 5 or not (cut_short(short, spoken) or not re.search(rf"\b{short}\b", spoken)):
            return short
        longer_tags = [t for t in tag_words if len(t) > len(short) and t.startswith(short)]
        found = [(n, w) for w, n in words.items() if w.startswith(short) and w not in (short + "s", short + "es")
                 and not any(w.startswith(t) for t in longer_tags)]
        if not found or max(found)[0] <= words.get(short, 0):
            return short
        name = max(found)[1]
        # a tag names one speaker: "First Serv" is a Servant, though the directions write "Servants"
        one = name[:-1]
        return one if name.endswith("s") and (one in words or re.search(rf"\b{one}\b", spoken, re.I)) else name

    return {t: " ".join(write_out(w) for w in t.split()) for t in tags}


def read_plays(corpus_dir: Path) -> list[Play]:
    files = sorted(Path(corpus_dir).glob("*.txt"))
    if not files:
        raise DataError(f"{corpus_dir}: no .txt plays found")
    return [p for p in (parse_play(f) for f in files) if p is not None]


# --- questions ------------------------------------------------------------------------------------------------
def _held_out(subject: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _verse_lines(speech: Speech, min_words: int) -> list[str]:
    return [line for line in speech.lines if len(line.split()) >= min_words and '"' not in line]


# words that do not name a character alone ("First Fisherman" is not named by "first"); a longer name is
# also named by each of its other words ("Philip" names King Philip, "Pedro" Don Pedro)
NAME_TITLES = {"First", "Second", "Third", "Fourth", "Old", "Young", "King", "Queen", "Lady", "Lord", "Duke", "Sir",
               "Don", "Prince", "French", "Chief", "Master", "Mistress"}


# the shorter forms the lines use ("He hath released him, Isabel, from the world")
NAME_VARIANTS = {"Isabella": ["Isabel"], "Cressida": ["Cressid"], "Desdemona": ["Desdemon"], "Dumaine": ["Dumain"]}


def name_pattern(name: str) -> re.Pattern:
    """Where a text names the character: the name or (for a longer name) a distinctive word of it, in any case
    ("[To ISABELLA.]"), possessive or plural ("Hector's heels", "Marcius' tongue", "the Capulets")."""
    forms = [name] + [w for w in name.split() if w not in NAME_TITLES and w[:1].isupper()] * (" " in name)
    forms += NAME_VARIANTS.get(name, [])
    return re.compile(rf"(?<!\w)(?:{'|'.join(map(re.escape, forms))})(?:e?s)?(?!\w)", re.IGNORECASE)


def cut_short(name: str, text: str) -> bool:
    """Whether `name` is a speaker tag cut short: the text has longer words that begin with it ("Glendower"
    for "Glend", "Cornwall" for "Corn") more often than the name itself ("Lear" beside "Learn" is not)."""
    longer = len(re.findall(rf"\b{re.escape(name)}[a-z]{{2,}}", text))
    return longer > len(re.findall(rf"\b{re.escape(name)}\b", text))


def _syllables(text: str) -> int:
    """A rough syllable count (vowel groups, less a silent final e): enough to keep a line's metre."""
    n = 0
    for w in re.findall(r"[a-z']+", text.lower()):
        groups = len(re.findall(r"[aeiouy]+", w))
        n += max(groups - (groups > 1 and w.endswith("e") and not w.endswith(("le", "ee"))), 1)
    return n


# characters with two speaker tags in one play: neither is the other's wrong option ("who says ...: Marcius or
# Coriolanus?" has two right answers)
SAME_CHARACTER = {
    "Coriolanus": [{"Marcius", "Coriolanus"}], "Richard III": [{"Gloster", "King Richard"}],
    "Henry VI Part 3": [{"Edward", "King Edward"}, {"Richard", "Gloster"}, {"Lady Grey", "Queen Elizabeth"},
                        {"George", "Clarence"}],
    "Henry IV Part 2": [{"Prince", "King"}],  # the Prince is tagged "King" once crowned
    "Henry VI Part 1": [{"Plantagenet", "York"}], "Henry VIII": [{"Queen Katherine", "Katherine"}],
}


def same_character(title: str, speaker: str) -> set[str]:
    """The speaker's other tags in the play (SAME_CHARACTER), with the speaker; empty for one tag alone."""
    return set().union(*(names for names in SAME_CHARACTER.get(title, []) if speaker in names))


def _ending_kind(ending: str) -> tuple[int, str]:
    """What a continue question's wrong ending must share with the right one: its syllables (the metre), and how
    it closes (a sentence, a pause, or running on). The asked line is often a short speech's last, so "the
    ending that closes a sentence" scored 0.57 on held-out continue questions when endings shared only syllables."""
    last = ending.rstrip(" '\")")[-1:]
    return _syllables(ending), "stop" if last in ".!?" else "pause" if last in ",;:-" else "run"


def _shared_words(prefix: str, ending: str) -> int:
    """Words of the ending the line's beginning already has: the ending that repeats more of them was right
    81% of the time (a wrong ending drawn from another line rarely echoes this one). Words as the answer is
    checked: "to-night" is "to night"."""
    return len(set(normalise_answer(prefix).split()) & set(normalise_answer(ending).split()))


def _first_word(text: str) -> str:
    return (normalise_answer(text).split() or [""])[0]


def _last_word(text: str) -> str:
    return (normalise_answer(text).split() or [""])[-1]


# how far from a speaker question's line its wrong option is drawn, in speeches
NEARBY = 6


def _pick_two(rng: random.Random, right: str, wrong: str) -> tuple[str, str]:
    return (right, wrong) if rng.random() < 0.5 else (wrong, right)


def make_questions(plays: list[Play], seed: int = 0, train_per_kind: int = 1000, heldout_per_kind: int = 100,
                   heldout_fraction: float = 0.2) -> tuple[list[Question], list[Question]]:
    """(training questions, held-out questions), deterministic in the seed.

    What is held out: whole characters (for "play" questions) and whole blocks of three consecutive
    speeches (for the three kinds about lines), chosen by a hash of that unit. A block's speeches are
    asked about only in held-out questions, and a passage is exactly one block, so no training passage
    shows a held-out speech. Then any training question that mentions something a held-out question asks
    or shows is dropped: a line of the same text elsewhere (repeated lines, a wrong option drawn from a
    held-out line), or a held-out character named beside the play's title, in an option ("In Othello, who
    says ...: Iago or Cassio?" would tell that Iago is in Othello) or in the quoted line ("Didst thou not
    tell me, Griffith"; any case, possessive, or a distinctive word of a longer name: `name_pattern`), or
    speaking or named in a passage of its play ("Kent: ... Gloucester: ..." beside "In King Lear, who says
    ...: Gloucester or Edmund?" told 46 of the 50 held-out characters' plays).
    Characters the plays cannot keep apart from their title are not asked about (`askable`)."""
    rng = random.Random(seed)
    pools: dict[str, tuple[list, list]] = {k: ([], []) for k in KINDS}

    def add(q: Question, shows: set[str], names: tuple[str, ...] = ()):
        """`shows`: the characters and lines the question asks about or shows; `names`: characters it names
        beside a play's title (only a training question must avoid those when they are held out)."""
        held = _held_out(q.unit, heldout_fraction, seed)
        pools[q.kind][1 if held else 0].append((q, shows, shows | {"name:" + n for n in names}))

    def said(line: str) -> str:
        return "line:" + normalise_answer(line)

    def named(i: int, text: str) -> tuple[str, ...]:
        """The major characters of play i that `text` names. Beside the play's title, a quoted line such as
        "Didst thou not tell me, Griffith, ..." tells that Griffith is in Henry VIII as plainly as an
        option would."""
        return tuple(n for n, pattern in name_patterns[i].items() if pattern.search(text))

    # major characters: >= 8 speeches; "play" questions only for names found in one play alone
    counts = [{} for _ in plays]
    for i, play in enumerate(plays):
        for s in play.speeches:
            counts[i][s.speaker] = counts[i].get(s.speaker, 0) + 1
    major = [[n for n, c in sorted(cnt.items()) if c >= 8] for cnt in counts]
    name_patterns = [{n: name_pattern(n) for n in names} for names in major]
    plays_of: dict[str, set] = {}
    for i, names in enumerate(counts):
        for n in names:
            plays_of.setdefault(n, set()).add(i)

    def askable(i: int, name: str) -> bool:
        """Whether "In which play does `name` appear" asks for knowledge, not string matching or a name the
        training questions cannot avoid showing."""
        play = plays[i]
        return (len(plays_of[name]) == 1  # in one play alone
                # not named in its play's title (Othello, Romeo, Pericles)
                and name not in named(i, play.title)
                # nor one word of a name shared with another character of the play ("Dromio of Syracuse"
                # beside "Dromio of Ephesus", "First Fisherman" beside "Second Fisherman")
                and not any(o != name and name_patterns[i][name].search(o) for o in counts[i])
                # nor a word that begins like a word of the title ("Old Athenian", "Timon of Athens")
                and not any(re.search(rf"(?i)\b{re.escape(w[:5])}", play.title) for w in name.split()
                            if len(w) >= 5 and w not in NAME_TITLES)
                # nor a speaker tag cut short ("Glend." for Glendower in Henry IV Part 1): the lines name the
                # character by the whole name, which the name check above would not see
                and not cut_short(name, texts[i]))

    texts = ["\n".join(line for s in play.speeches for line in s.lines) for play in plays]
    asked = [[name for name in major[i] if askable(i, name)] for i in range(len(plays))]
    # a play question's wrong title is drawn like its answer, in proportion to the characters asked about on the
    # same side of the split: drawn uniformly, "the title right more often in training" scored 0.68 on held-out
    # play questions
    title_draw = {side: [j for j, names in enumerate(asked) for n in names if _held_out(n, heldout_fraction, seed) == side]
                  for side in (False, True)}
    for i, play in enumerate(plays):
        for name in asked[i]:
            others = ([j for j in title_draw[_held_out(name, heldout_fraction, seed)] if j != i]
                      or [j for j in range(len(plays)) if j != i])  # (a small corpus: any other play)
            if not others:  # one play: nothing to choose between
                break
            other = plays[rng.choice(others)].title
            a, b = _pick_two(rng, play.title, other)
            add(Question("play", f"In which play does {name} appear: {a} or {b}?", play.title, other, name, name),
                {"name:" + name})
    for i, play in enumerate(plays):
        cast = major[i]
        if len(cast) < 2:
            continue
        # a speaker question's wrong option is drawn like its answer, in proportion to the speeches that can be
        # asked (a line of six words or more): drawn uniformly from the cast, "the one who speaks more" was right
        # 63% of the time without the line
        cast_at = [(k, s.speaker) for k, s in enumerate(play.speeches) if s.speaker in cast and _verse_lines(s, 6)]
        cast_speeches = [c for _, c in cast_at]
        said_by: dict[str, set[str]] = {}  # a line said by two characters has two right answers
        for s in play.speeches:
            for verse in s.lines:
                said_by.setdefault(normalise_answer(verse), set()).add(s.speaker)
        # a continue question's wrong ending sounds like the right one (`_ending_kind`, `_shared_words`): with
        # any ending, "the one that makes a ten-syllable line" scored 0.60 on held-out continue questions
        endings: dict[tuple, list[str]] = {}
        for s in play.speeches:
            for verse in _verse_lines(s, 8):
                endings.setdefault(_ending_kind(" ".join(verse.split()[-3:])), []).append(verse)
        # and follows the line's last word as the right one does: drawn from any line, "the ending whose first word
        # more often follows the line's last word in the plays" was right 200 times to 76 (a bigram's knowledge,
        # not the line's). First choice: endings that follow the same word in their own line; then endings whose
        # first word follows it somewhere in the play
        after: dict[tuple, list[str]] = {}  # (ending kind, the word before the ending) -> lines
        starting: dict[tuple, list[str]] = {}  # (ending kind, the ending's first word) -> lines
        follows: dict[str, set[str]] = {}  # word -> the words that follow it in the play
        for kind, verses in endings.items():
            for verse in verses:
                words = verse.split()
                before, first = _last_word(" ".join(words[:-3])), _first_word(" ".join(words[-3:]))
                after.setdefault((kind, before), []).append(verse)
                starting.setdefault((kind, first), []).append(verse)
        for s in play.speeches:
            for verse in s.lines:
                words = normalise_answer(verse).split()
                for a, b in zip(words, words[1:]):
                    follows.setdefault(a, set()).add(b)
        for s_idx, speech in enumerate(play.speeches):
            block = f"{play.title}:{s_idx // 3 * 3}"  # the unit of every question about this speech
            lines, other = _verse_lines(speech, 6), None
            if speech.speaker in cast and lines:
                line = rng.choice(lines)
                same = said_by[normalise_answer(line)] | same_character(play.title, speech.speaker)
                # drawn among the speeches near this one when there are any (within NEARBY speeches): drawn from
                # the whole play, "the option who speaks in neighbouring training questions" was right 0.77 of
                # the time on held-out questions (who is on stage), without the line
                around = cast_at[bisect.bisect_left(cast_at, (s_idx - NEARBY,)):
                                 bisect.bisect_left(cast_at, (s_idx + NEARBY + 1,))]
                near = [c for _, c in around if c not in same]
                others = near or [c for c in cast_speeches if c not in same]
                other = rng.choice(others) if others else None
                # and a line that names either option is not asked: near the speaker, "the one the line names is
                # not the one saying it" (the addressee) would be a guess
                if other and any(name_patterns[i][n].search(line) for n in (speech.speaker, other)):
                    other = None
            if other:
                a, b = _pick_two(rng, speech.speaker, other)
                add(Question("speaker", f'In {play.title}, who says "{line}": {a} or {b}?', speech.speaker, other,
                             line, block), {said(line)}, names=(speech.speaker, other, *named(i, f"{line} {a} {b}")))
            lines = _verse_lines(speech, 8)
            if lines:
                line = rng.choice(lines)
                words = line.split()
                cut = len(words) - 3  # the line's last three words are the answer
                answer, start = " ".join(words[cut:]), " ".join(words[:cut])
                kind, last, echoes = _ending_kind(answer), _last_word(start), _shared_words(start, answer)
                fluent = [d for w in sorted(follows.get(last, ())) for d in starting.get((kind, w), [])]
                wrong = None
                # a few draws from each pool for one that echoes the beginning as much as the answer does
                for pool in (after.get((kind, last), []), fluent, endings[kind]):
                    for _ in range(20 if pool else 0):
                        donor_line = rng.choice(pool)
                        candidate = " ".join(donor_line.split()[-3:])
                        if (_shared_words(start, candidate) == echoes
                                and normalise_answer(candidate) != normalise_answer(answer)):
                            wrong = candidate
                            break
                    if wrong:
                        break
                if wrong:
                    a, b = _pick_two(rng, answer, wrong)
                    add(Question("continue", f'Continue this line from {play.title}: "{" ".join(words[:cut])}" - '
                                 f'"{a}" or "{b}"?', answer, wrong, line, block), {said(line), said(donor_line)},
                        names=named(i, f"{line} {wrong}"))
            window = play.speeches[s_idx:s_idx + 3]
            speakers = {w.speaker for w in window}
            if (s_idx % 3 == 0 and len(window) == 3 and len(speakers) >= 2
                    and all(len(w.lines) <= 3 for w in window)):
                target = rng.choice(window)
                lines = _verse_lines(target, 4)
                if lines:
                    passage = "\n".join(f"{w.speaker}: {' '.join(w.lines)}" for w in window)
                    line = rng.choice(lines)
                    wrong_speakers = sorted(speakers - {target.speaker} - same_character(play.title, target.speaker))
                    # the line is said once in the passage, however punctuated ("I' the city of kites and crows!--")
                    if wrong_speakers and sum(normalise_answer(line) in normalise_answer(" ".join(w.lines))
                                              for w in window) == 1:
                        wrong = rng.choice(wrong_speakers)
                        add(Question("passage", f'{passage}\n\nIn this passage, who says "{line}"?', target.speaker,
                                     wrong, line, block), {said(shown) for w in window for shown in w.lines},
                            # its speakers are shown beside characters that other training questions show
                            # beside the title, so a held-out character may neither speak nor be named in it
                            names=(*speakers, *named(i, passage)))
    held_out = set().union(*(shows for kind in KINDS for _, shows, _ in pools[kind][1]))
    # the held-out draw has its own generator, so a change to what training drops leaves it as it is
    rng_held = random.Random(f"{seed}:heldout")
    train, heldout = [], []
    for kind in KINDS:
        pool_train = [q for q, _, mentions in pools[kind][0] if not mentions & held_out]
        pool_held = [q for q, _, _ in pools[kind][1]]
        rng.shuffle(pool_train)
        rng_held.shuffle(pool_held)
        train += pool_train[:train_per_kind]
        heldout += pool_held[:heldout_per_kind]
    rng.shuffle(train)
    return train, heldout


# --- files --------------------------------------------------------------------------------------------------------
TASK_FILES = {"sft": "sft_train.jsonl", "preference": "preference_train.jsonl", "heldout": "heldout.jsonl"}


def write_task(out: str | Path, corpus_dir: str | Path, seed: int = 0, train_per_kind: int = 1000,
               heldout_per_kind: int = 100) -> dict[str, Path]:
    """Write the task's files into `out`: sft_train.jsonl (conversations), preference_train.jsonl
    and heldout.jsonl (prompt / chosen / rejected, plus "kind" and "answer"). The SFT and preference
    files ask different questions (up to train_per_kind of each kind each), as preference data is
    collected after SFT in practice (InstructGPT, Ouyang et al. 2022)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = make_questions(read_plays(Path(corpus_dir)), seed, 2 * train_per_kind, heldout_per_kind)
    sft, preference = train[0::2], train[1::2]
    paths = {k: out / v for k, v in TASK_FILES.items()}
    for key, rows in (("sft", [q.sft_record() for q in sft]), ("preference", [q.preference_record() for q in preference]),
                      ("heldout", [q.preference_record() for q in heldout])):
        atomic_write_text(paths[key], "".join(json.dumps(r) + "\n" for r in rows))
    def by_kind(questions: list[Question]) -> dict[str, int]:  # the plays give fewer passage and play questions
        return {k: sum(q.kind == k for q in questions) for k in KINDS}

    atomic_write_text(out / "questions.json", json.dumps({
        "seed": seed, "sft": len(sft), "preference": len(preference), "heldout": len(heldout),
        "by_kind": {"sft": by_kind(sft), "preference": by_kind(preference), "heldout": by_kind(heldout)},
        "examples": [asdict(q) for q in heldout[:8]]}, indent=2))
    return paths


def builtin_task(seed: int = 0, train_per_kind: int = 1000, heldout_per_kind: int = 100) -> dict[str, Path]:
    """The task's files for the built-in corpus, made once and cached ($LLMKIT_CACHE/data/)."""
    from llmkit.data.corpus import cache_root, fetch_shakespeare

    base = cache_root() / "data"
    corpus = fetch_shakespeare(base / "shakespeare")
    # v2: held-out blocks of speeches and characters (the first version's held-out questions asked lines,
    # passages and characters that training questions showed); v3: training lines that name a held-out
    # character beside its play, and training passages where one speaks or is named, are dropped too; some
    # characters are not asked (`askable`); wrong options are drawn like the answers (speakers by speeches,
    # titles by characters asked, endings by syllables), so no guess without the knowledge beats chance; v4: stage
    # directions out of the lines, speaker tags cut short written out (King Lear's Edgar, Henry IV's Falstaff),
    # a wrong ending that closes and echoes the line as the right one does, no wrong speaker who says the line too;
    # v5: a wrong ending that follows the line's last word as the right one does, a wrong speaker drawn from the
    # speeches nearby, no speaker question whose line names an option, more tags written out (Messenger, Sly, Nym,
    # Mistress Page).
    # A new folder each time, so old caches are not reused.
    out = base / f"assistant-task-v5-s{seed}-n{train_per_kind}-h{heldout_per_kind}"
    paths = {k: out / v for k, v in TASK_FILES.items()}
    if not all(p.exists() for p in paths.values()):
        write_task(out, corpus / "train", seed, train_per_kind, heldout_per_kind)
    return paths


# --- the metric -----------------------------------------------------------------------------------------------------
def normalise_answer(text: str) -> str:
    """A reply's first line, lower-cased, without punctuation or extra spaces: what is_correct compares."""
    text = text.strip().split("\n", 1)[0].lower() if text.strip() else ""
    text = re.sub(r"[^\w\s']|(?<!\w)'|'(?!\w)", " ", text)  # quotes too, not the apostrophe in "liv'd"
    return " ".join(text.split())


def require_answers(records: list, needed_by: str, otherwise: str) -> None:
    """Stop with `file:line` at the first record without the "answer" field that `needed_by` scores against."""
    missing = next((r for r in records if "answer" not in r.extra), None)
    if missing is not None:
        raise DataError(f'{missing.where}: field "answer" missing; {needed_by} needs the reference answer of every '
                        f"prompt ({otherwise})")
    wrong = next((r for r in records if not isinstance(r.extra["answer"], str)), None)
    if wrong is not None:  # compared as text: 2 and "2" alike must be written "2"
        raise DataError(f'{wrong.where}: field "answer" must be a string, not {type(wrong.extra["answer"]).__name__} '
                        f'{wrong.extra["answer"]!r}; write it in quotes')


def is_correct(reply: str, answer: str) -> bool:
    """Exact match of the reply's first line with the answer, ignoring case, punctuation and spacing."""
    return normalise_answer(reply) == normalise_answer(answer) != ""


def accuracy(kinds: list[str], correct: list[bool]) -> dict:
    """{"accuracy", "ci95", "n", "by_kind": {kind: accuracy}}."""
    n, k = len(correct), sum(correct)
    by_kind = {}
    for kind in sorted(set(kinds)):
        marks = [c for kd, c in zip(kinds, correct) if kd == kind]
        by_kind[kind] = sum(marks) / len(marks)
    return {"accuracy": k / max(n, 1), "ci95": wilson_interval(k, n), "n": n, "by_kind": by_kind}


def paired_comparison(before: list[bool], after: list[bool]) -> dict:
    """Two models' correctness on the same questions, as the reports record it: the accuracy difference,
    questions gained and lost, and the exact McNemar p-value (llmkit.eval.stats)."""
    c = compare_paired(before, after)
    return {"difference": (c.only_b - c.only_a) / max(c.n, 1), "gained": c.only_b, "lost": c.only_a,
            "p_value": c.p_value}
