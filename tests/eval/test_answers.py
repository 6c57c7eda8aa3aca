"""Answer extraction and matching on the formats real models and teachers write."""

from __future__ import annotations

import pytest

from medsft_pipelines.answers import (
    AnswerKind,
    extract_choice,
    extract_label,
    extract_number,
    extract_open,
    extract_yes_no,
    grade_answer,
    grade_response,
    match_numeric,
    match_open,
    normalize_answer,
    split_think_answer,
    token_f1,
)

# A MedQA-style item: option texts that start with the article "A" on purpose.
MEDQA_OPTIONS = {
    "A": "Ampicillin",
    "B": "Ceftriaxone",
    "C": "A beta blocker",
    "D": "Doxycycline",
    "E": "Nitrofurantoin",
}


# --------------------------------------------------------------------- think / answer split


def test_split_closed_think_block() -> None:
    text = "<think>\nThe patient is pregnant, so avoid D.\n</think>\n\nAnswer: B"
    split = split_think_answer(text)
    assert split.think == "The patient is pregnant, so avoid D."
    assert split.answer == "Answer: B"
    assert split.think_closed


def test_split_think_opened_by_the_prompt() -> None:
    # Qwen3-style templates write "<think>\n" in the prompt: the generation has only the end tag.
    split = split_think_answer("reasoning here\n</think>\nAnswer: C")
    assert (split.think, split.answer, split.think_closed) == ("reasoning here", "Answer: C", True)


def test_split_unclosed_think_has_no_answer() -> None:
    split = split_think_answer("<think>Let me consider each option. Option A is")
    assert split.answer == "" and not split.think_closed
    opened = split_think_answer("still thinking, Answer: A maybe", opened_in_prompt=True)
    assert opened.answer == "" and not opened.think_closed


def test_split_without_think_tags_is_all_answer() -> None:
    split = split_think_answer("The answer is (B).")
    assert split.think == "" and split.answer == "The answer is (B)." and split.think_closed


def test_forced_exit_generation_splits_at_the_appended_tag() -> None:
    # The harness appends "</think>" to a truncated think block and lets the model go on.
    forced = "<think>Option A is wrong because" + "</think>" + "\n\nAnswer: D"
    assert grade_response(forced, "D", "choice", MEDQA_OPTIONS).correct
    assert not grade_response(
        "<think>Option A is wrong because", "D", "choice", MEDQA_OPTIONS
    ).parsed


def test_answer_inside_think_is_not_the_answer() -> None:
    text = "<think>Initially I think Answer: A, but no.</think>\nAnswer: B"
    assert grade_response(text, "B", "choice", MEDQA_OPTIONS).prediction == "B"


# --------------------------------------------------------------------- multiple choice


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("Answer: B", "B"),
        ("Answer: (B)", "B"),
        ("Answer: B. Ceftriaxone", "B"),
        ("**Answer:** B", "B"),
        ("**Final Answer: (D) Doxycycline**", "D"),
        ("The answer is E.", "E"),
        ("The correct answer is option D.", "D"),
        ("the correct option is (A)", "A"),
        ("Therefore, the final answer is $\\boxed{B}$.", "B"),
        ("\\boxed{\\text{E}}", "E"),
        ("\\boxed{E. Nitrofurantoin}", "E"),
        ("B", "B"),
        ("(C)", "C"),
        ("D.", "D"),
        ("Option B", "B"),
        ("E) Nitrofurantoin is safe in the second trimester.", "E"),
        ("Answer: Ceftriaxone", "B"),
        ("Answer: a beta blocker", "C"),  # option text wins over reading "a" as a letter
        ("Ceftriaxone", "B"),
        ("The answer is B because gonococcal infection needs a cephalosporin.", "B"),
        ("Answer: B\n\nExplanation: Ceftriaxone covers N. gonorrhoeae; Option A does not.", "B"),
    ],
)
def test_choice_extraction(answer: str, letter: str) -> None:
    assert extract_choice(answer, MEDQA_OPTIONS) == letter


@pytest.mark.parametrize(
    "answer",
    [
        "",  # no answer
        "I am not sure.",
        "Answer: A or B",  # several answers
        "Answer: B, D",
        "Answer: A and C",
        "Answer: B. Doxycycline",  # letter and text disagree
        "(A) is plausible but (C) fits better",  # two letters named, no statement
        "Answer: K",  # not an option
        "A 24-year-old woman presents with dysuria.",  # the article is not option A
    ],
)
def test_choice_none_for_missing_or_several_answers(answer: str) -> None:
    assert extract_choice(answer, MEDQA_OPTIONS) is None


def test_choice_with_ten_options_and_list_options() -> None:
    options = [f"choice {i}" for i in range(10)]  # MMLU-Pro: A-J
    assert extract_choice("The answer is (J)", options) == "J"
    assert extract_choice("Answer: choice 7", options) == "H"


def test_longest_option_text_wins_over_contained_option() -> None:
    options = {"A": "Hypertension", "B": "Pulmonary hypertension", "C": "Asthma"}
    assert extract_choice("Answer: pulmonary hypertension", options) == "B"
    assert extract_choice("Answer: hypertension", options) == "A"


def test_grade_choice_accepts_gold_as_text() -> None:
    assert grade_answer("Answer: D", "Doxycycline", AnswerKind.CHOICE, MEDQA_OPTIONS).correct
    wrong = grade_answer("Answer: A", "D", AnswerKind.CHOICE, MEDQA_OPTIONS)
    assert (wrong.prediction, wrong.correct, wrong.score) == ("A", False, 0.0)
    none = grade_answer("no idea", "D", AnswerKind.CHOICE, MEDQA_OPTIONS)
    assert (none.prediction, none.correct, none.parsed) == (None, False, False)


def test_grade_choice_rejects_bad_items() -> None:
    with pytest.raises(ValueError, match="options"):
        grade_answer("Answer: A", "A", AnswerKind.CHOICE, None)
    with pytest.raises(ValueError, match="names no option"):
        grade_answer("Answer: A", "Z", AnswerKind.CHOICE, MEDQA_OPTIONS)


# --------------------------------------------------------------------- yes / no / labels


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("Answer: yes", "yes"),
        ("Yes, the regions of the brain are infarcted.", "yes"),
        ("No.", "no"),
        ("**Answer:** Maybe", "maybe"),
        ("The answer is no", "no"),
        ("\\boxed{yes}", "yes"),
        ("Answer: yes or no", None),
        ("", None),
        ("It depends on the clinical context and further imaging.", None),
    ],
)
def test_yes_no_maybe(answer: str, label: str | None) -> None:
    assert extract_yes_no(answer) == label


def test_yes_no_last_statement_wins_and_to_answer_this_is_not_one() -> None:
    text = "To answer this, weigh the trial.\nAnswer: no\n\nOn reflection, Final answer: yes"
    assert extract_yes_no(text) == "yes"
    assert extract_yes_no("Answer: maybe\nFinal answer: yes or no") is None


def test_yes_no_without_maybe() -> None:
    assert extract_yes_no("Answer: maybe", allow_maybe=False) is None


def test_classification_labels() -> None:
    labels = ["glioma", "meningioma", "no tumor", "pituitary"]
    assert extract_label("Answer: No tumor", labels) == "no tumor"
    assert extract_label("Answer: Meningioma", labels) == "meningioma"
    assert extract_label("Answer: glioma or meningioma", labels) is None
    grade = grade_answer("Answer: Pituitary tumor", "pituitary", "label", labels)
    assert grade.correct and grade.prediction == "pituitary"


# --------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("answer", "number"),
    [
        ("Answer: 42", 42.0),
        ("The answer is 1,250 mL.", 1250.0),
        ("\\boxed{3.5}", 3.5),
        ("Answer: -0.5", -0.5),
        ("Answer: 3/4", 0.75),
        ("Answer: 45%", 45.0),
        ("So the dose is 2 mg/kg, giving 140 mg total", 140.0),  # last number without statement
        ("Answer: 12\nAnswer: 14", 14.0),  # the last statement is the final answer
        ("no number here", None),
    ],
)
def test_extract_number(answer: str, number: float | None) -> None:
    assert extract_number(answer) == number


def test_numeric_tolerance() -> None:
    assert match_numeric(100.5, 100.0)  # within 1 %
    assert not match_numeric(103.0, 100.0)
    assert match_numeric(103.0, 100.0, rel_tol=0.05)
    assert not match_numeric(None, 1.0)
    assert grade_answer("Answer: 0.33", "1/3", "numeric").correct


# --------------------------------------------------------------------- open answers


def test_normalize_and_token_f1() -> None:
    assert normalize_answer("The Left Temporal Lobe.") == "left temporal lobe"
    assert token_f1("left temporal lobe", "The left temporal lobe") == 1.0
    assert token_f1("temporal lobe", "left temporal lobe") == pytest.approx(0.8)
    assert token_f1("liver", "left temporal lobe") == 0.0
    assert match_open(None, "CT") == (False, 0.0)


def test_open_answer_extraction_and_grade() -> None:
    assert extract_open("Answer: Ring-enhancing lesion") == "Ring-enhancing lesion"
    assert extract_open("Right upper lobe\nThe opacity is in the RUL.") == "Right upper lobe"
    assert extract_open("Answer: CT\nAnswer: MRI") == "MRI"
    assert extract_open("") is None
    exact = grade_answer("Answer: ring enhancing lesion", "Ring-enhancing lesion", "open")
    assert exact.correct and exact.score == 1.0
    partial = grade_answer("Answer: lesion in the liver", "hypodense lesion", "open")
    assert not partial.correct and 0 < partial.score < 1


def test_chain_of_thought_without_think_tags() -> None:
    # A non-thinking model in CoT mode: the whole text is the answer part.
    cot = (
        "Let's analyze each option.\nA. Ampicillin is not first line here.\n"
        "B. Ceftriaxone covers gonorrhoea.\nD. Doxycycline is contraindicated in pregnancy.\n"
        "Therefore, the answer is B."
    )
    assert extract_choice(cot, MEDQA_OPTIONS) == "B"
    undecided = "Option A is reasonable, and option D is also reasonable."
    assert extract_choice(undecided, MEDQA_OPTIONS) is None


# --------------------------------------------------------------------- conflicts and real patterns

MMLU_PRO_OPTIONS = {
    "A": "Louis Pasteur",
    "B": "Robert Koch",
    "C": "Edward Jenner",
    "D": "Joseph Lister",
    "E": "Alexander Fleming",
    "F": "Martinus Beijerinck",
    "G": "Jonas Salk",
    "H": "Paul Ehrlich",
    "I": "Dmitri Iwanowsky",
    "J": "Walter Reed",
}


def test_last_explicit_statement_wins_over_earlier_ones() -> None:
    # A model that corrects itself: the final statement is its answer.
    assert extract_choice("\\boxed{A} ... on reflection \\boxed{C}", MEDQA_OPTIONS) == "C"
    assert extract_choice("Answer: B\nAnswer: D", MEDQA_OPTIONS) == "D"
    restated = "The answer is (G).\n\nFinal Answer: The answer is (J)."
    assert extract_choice(restated, MMLU_PRO_OPTIONS) == "J"
    # Two statements on one line: the later one, not the rest of the line after the first.
    same_line = "the best answer is (J) and (B) but since we must choose one. The answer is (J)."
    assert extract_choice(same_line, MMLU_PRO_OPTIONS) == "J"


def test_to_answer_this_and_a_letter_inside_a_name_do_not_block_the_final_answer() -> None:
    # The failure the issue reports: earlier text names other letters, the last line one.
    cot = (
        "To answer this, recall who first described filterable agents. Dmitri Iwanowsky (I) "
        "showed in 1892 that the tobacco mosaic agent passed through filters; Beijerinck (F) "
        "later called it a contagium vivum fluidum.\nThe answer is I."
    )
    assert extract_choice(cot, MMLU_PRO_OPTIONS) == "I"
    grade = grade_response(cot, "I", "choice", MMLU_PRO_OPTIONS)
    assert grade.correct
    # "To answer this" is not a statement: without one the last sentence decides.
    assert (
        extract_choice("To answer this, think of filtration. It was (I).", MMLU_PRO_OPTIONS) == "I"
    )


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("Let's think step by step. Koch's postulates fail here. The answer is (E).", "E"),
        ("After weighing the options:\n\n**A. Ampicillin**", "A"),
        ("Reasoning about coverage...\nAnswer: b", "B"),
        ("so the choice is clear: $\\boxed{C}$", "C"),
        ("The drug of choice in pregnancy here is doxycycline? No — it is ceftriaxone.", "B"),
        ("Ceftriaxone covers gonorrhoea; doxycycline is avoided in pregnancy.\nCeftriaxone", "B"),
        ("Therefore, among A through D, the answer is D) Doxycycline", "D"),
        ("Therefore, B is the correct answer.", "B"),
        ("The answer is most likely to be D.", "D"),
        ("older workers need no longer prove D. Doxycycline to win.", "D"),
    ],
)
def test_choice_patterns_of_real_models(answer: str, letter: str) -> None:
    assert extract_choice(answer, MEDQA_OPTIONS) == letter


@pytest.mark.parametrize(
    "answer",
    [
        "Therefore, among A through D, the answer is A, B, or C.",  # a hedge is no answer
        "Therefore, the correct options are (C) and (E). The answer is CE.",
        "The answer is either A or B.",
        "The correct answers are A and B, as both fit; spontaneous remission is rare.",
        "Therefore, among A through D, the answer is none of the above.",
        "Therefore, among A through E, the answer is F.",  # not an option of this item
    ],
)
def test_hedges_and_non_answers_are_none(answer: str) -> None:
    assert extract_choice(answer, MEDQA_OPTIONS) is None


def test_closing_sentence_settles_a_hedge_on_an_earlier_line() -> None:
    text = "The answer is A or B.\nOn balance, (B) fits the pregnancy best."
    assert extract_choice(text, MEDQA_OPTIONS) == "B"


def test_capitalised_option_text_is_not_a_run_of_letters() -> None:
    options = ["DNA polymerase", "RNA polymerase", "Reverse transcriptase"]
    assert extract_choice("The answer is DNA polymerase.", options) == "A"
    assert extract_choice("The answer is (AC).", options) is None


def test_single_letter_option_texts_do_not_shadow_letters() -> None:
    # MedMCQA combination items: options "a", "c", "bc", "ad".
    options = ["a", "c", "bc", "ad"]
    assert extract_choice("Therefore, among A through D, the answer is C.", options) == "C"


def test_a_run_on_into_an_invented_question_keeps_the_first_answer() -> None:
    text = (
        "Vitamin E is the main lipid-soluble antioxidant. The answer is (A).\n\n"
        "Now, let's summarize all the answers:\nA. Ventral\nB. Dorsal\nC. Buccal\n"
        "D. Thoracic\n\nThe answer is (D)."
    )
    assert extract_choice(text, MEDQA_OPTIONS) == "A"
    # Reviewing this item's own options is not a run-on.
    review = "The answer is (A).\nA. Ampicillin - no\nB. Ceftriaxone - yes\nC. A beta blocker - no"
    assert extract_choice(review + "\nThe answer is (B).", MEDQA_OPTIONS) == "B"


def test_think_less_output_is_all_answer_and_verifier_agrees() -> None:
    text = "To answer this, consider Iwanowsky (I) and Beijerinck (F).\nThe answer is I."
    assert grade_response(text, "I", "choice", MMLU_PRO_OPTIONS).correct
    assert verifier_accepts(text, "I", MMLU_PRO_OPTIONS)


def verifier_accepts(text: str, answer: str, options: dict[str, str]) -> bool:
    """Whether the curation verifier keeps ``text`` as a correct trace (no think required)."""
    from medsft_pipelines.curation.sample import Sample
    from medsft_pipelines.curation.verify import ACCEPTED, verify
    from medsft_pipelines.specs.curation import VerificationSpec

    sample = Sample(
        id="q1",
        source="test",
        task_type="mcq",
        modality="text",
        question="Which one?",
        answer=answer,
        options=list(options.values()),
    )
    return verify(sample, text, "option", VerificationSpec(require_think=False)).reason == ACCEPTED


# --------------------------------------------------------------------- formats of other pipelines
# Issue 26: reply formats of other public medical evaluation pipelines (structured JSON,
# answer-first) and openings the statement patterns missed. Each case failed before.


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ('{"answer": "B"}', "B"),
        ('```json\n{"answer_choice": "B", "explanation": "Option A is wrong."}\n```', "B"),
        # The reasoning field names another option (and even "the answer is A"): the field wins.
        (
            '{"reasoning": "A is tempting, and one might say the answer is A, but pregnancy '
            'rules out D.", "answer": "B"}',
            "B",
        ),
        ('{"answer": "B. Ceftriaxone"}', "B"),
        ('{"Answer": "(B)"}\n\n{"Answer": "(B)"}', "B"),  # repeated
        ('{"answer": "Ceftriaxone"}', "B"),
        ('Step by step: A is wrong.\n```json\n{\n  "final_answer": "E"\n}\n```', "E"),
    ],
)
def test_json_answer_fields(answer: str, letter: str) -> None:
    assert extract_choice(answer, MEDQA_OPTIONS) == letter


def test_json_answer_field_naming_several_options_is_none() -> None:
    assert extract_choice('{"answer": "A or B"}', MEDQA_OPTIONS) is None


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        # Answer first, then a discussion that names other options.
        (
            "B. Ceftriaxone\n\nCeftriaxone treats gonorrhoea. Doxycycline (D) is avoided in "
            "pregnancy and ampicillin (A) does not cover it.",
            "B",
        ),
        # Answer first, then the other options listed as wrong.
        (
            "B. Ceftriaxone\n\nExplanation: first-line in pregnancy. The other options are not "
            "the best choice:\nA. Ampicillin: resistance.\nD. Doxycycline: contraindicated.\n"
            "E. Nitrofurantoin: no gonococcal cover.",
            "B",
        ),
        ("(B) Ceftriaxone is first-line; option D would harm the fetus.", "B"),
    ],
)
def test_answer_first_replies(answer: str, letter: str) -> None:
    assert extract_choice(answer, MEDQA_OPTIONS) == letter


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        # Each opening is followed by a mention of another option, which used to win.
        ("B.. Explanation: ceftriaxone is first-line; option (D) is contraindicated.", "B"),
        ("'C'. A beta blocker lowers the rate; option (A) is irrelevant.", "C"),
        ("\u201cC\u201d. A beta blocker lowers the rate; option (A) is irrelevant.", "C"),
        ("The answer is \u2018D\u2019.", "D"),
        ("A (Ampicillin). It covers the organism, unlike (D).", "A"),
        ("B\n\nExplanation: Option D is contraindicated.", "B"),
        # A "Final Answer" heading, the letter on the next line, discussion after it.
        ("## Final Answer\nB\n\nOption (D) is wrong.", "B"),
        ("## Step 1: (D) is contraindicated.\n## Final Answer\nB\nThe others (A), (D) fail.", "B"),
        ("## Final Answer\n\n**B**\n\nWhy not D: teratogenic. Why not (E): no cover.", "B"),
        ("### Final Answer\n(B)\n### Explanation\nOption D and option E are wrong.", "B"),
    ],
)
def test_openings_and_headings(answer: str, letter: str) -> None:
    assert extract_choice(answer, MEDQA_OPTIONS) == letter


def test_rh_d_is_not_a_mention_of_option_d() -> None:
    text = "The mother is Rh(D) negative, so anti-D prophylaxis is given.\nB"
    assert extract_choice(text, MEDQA_OPTIONS) == "B"
    assert extract_choice("She is Rh(D) negative; give (B).", MEDQA_OPTIONS) == "B"


@pytest.mark.parametrize(
    "answer",
    [
        "A or B. Both could fit; option D is out.",
        '{"answer": "A, B"}',
        "## Final Answer\nA or C",
    ],
)
def test_new_formats_keep_hedges_unanswered(answer: str) -> None:
    assert extract_choice(answer, MEDQA_OPTIONS) is None


def test_the_curation_verifier_reads_the_new_formats_too() -> None:
    # One implementation: a JSON reply the eval reads as B is accepted by the verifier as B.
    text = '{"reasoning": "A is tempting but wrong.", "answer": "B"}'
    assert grade_response(text, "B", "choice", MEDQA_OPTIONS).correct
    assert verifier_accepts(text, "B", MEDQA_OPTIONS)


def test_how_an_answer_was_read() -> None:
    from medsft_pipelines.answers import Reading, read_choice

    cases = {
        '{"reasoning": "not A", "answer": "B"}': ("B", Reading.STRUCTURED),
        "Coverage matters.\nAnswer: B": ("B", Reading.STATEMENT),
        "B. Ceftriaxone\n\nOption (D) is wrong.": ("B", Reading.ANSWER_FIRST),
        "Ceftriaxone covers it, so (B).": ("B", Reading.INFERRED),
        "The answer is A or B.": (None, Reading.UNANSWERED),
    }
    for text, expected in cases.items():
        assert read_choice(text, MEDQA_OPTIONS) == expected, text
    thought = grade_response(
        "<think>\nweighing D\n</think>\n\nAnswer: B", "B", "choice", MEDQA_OPTIONS
    )
    assert thought.reading == "think + statement"
    assert grade_response("<think>\nstill weighing", "B", "choice", MEDQA_OPTIONS).reading == (
        "unanswered"
    )
    assert grade_answer("The answer is yes.", "yes", "yes_no").reading == "statement"


# Issue 26, measured on the outputs of MIRAGE/MedRAG (JSON replies) and MMMU (chain-of-thought
# ending "Answer: X", refusals): each case was misread before (benchmarks/README.md).
@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        # A statement with nothing on its line, then "Answer: X" on a line of its own.
        ("Olfaction bypasses the thalamus. So the correct answer is:\n\nAnswer: C", "C"),
        # LaTeX inline delimiters around the letter.
        ("Rounded, the mass is 207 amu.\n\nAnswer: \\( B \\)", "B"),
        # The answer field gives the letter and its option's own text, whose first part
        # (before a comma) is another option's whole text.
        (
            '{"step_by_step_thinking": "All apply.", "answer_choice": '
            '"E. Ampicillin, then ceftriaxone, then doxycycline"}',
            "E",
        ),
    ],
)
def test_formats_measured_on_mirage_and_mmmu(answer: str, letter: str) -> None:
    options = {**MEDQA_OPTIONS, "E": "Ampicillin, then ceftriaxone, then doxycycline"}
    assert extract_choice(answer, options) == letter


@pytest.mark.parametrize(
    "answer",
    [
        # The answer field says no option: the reasoning, which weighs options, does not answer.
        '{"step_by_step_thinking": "So the answer is not B (Ceftriaxone) but a drug that is not '
        'listed.", "answer_choice": "None of the above"}',
        '{"step_by_step_thinking": "Option D is plausible.", "answer_choice": "Cannot be determined"}',
        # Hedges in the answer field stay unanswered.
        '{"step_by_step_thinking": "Either could be right.", "answer_choice": "B/D"}',
        '{"step_by_step_thinking": "All apply.", "answer_choice": "A, B, C, D"}',
        # A refusal: the pronoun is not option I.
        "I'm sorry, I can't determine that from the image.",
    ],
)
def test_no_option_in_the_answer_field_or_a_refusal_is_unanswered(answer: str) -> None:
    from medsft_pipelines.answers import Reading, read_choice

    more = ["Fluconazole", "Gentamicin", "Heparin", "Isoniazid", "Jejunal biopsy"]
    options = [*MEDQA_OPTIONS.values(), *more]  # ten options: I is one
    assert read_choice(answer, options) == (None, Reading.UNANSWERED)
