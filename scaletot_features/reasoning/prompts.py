"""Every prompt the teacher and the student see, in one place.

The scoring modes read the same pieces differently (DESIGN.md 4.4):

- ``label``: the taxonomy is listed, and each value's *label* is scored after ``<type>:``;
- ``calibrated``: each value's *description* is scored as a continuation of the profile
  ("This user is a retired older person."), minus the same score after a content-free profile;
- ``channel``: the *profile* is scored as a continuation of each value's description
  (log p(profile | "This user is <description>. Their profile reads:"));
- ``chat``: the model's own chat template, one question per state type as a conversation
  turn, the value word scored as the start of the assistant's answer (instruct models answer
  best the way they were tuned);
- ``factored``: ``chat`` asked about one profile line (one field) at a time.

Every mode but ``channel`` takes ``demos``: a block of labelled users (reasoning/demonstrations.py)
put first (in ``chat``, in the system message), the same text for every user and node, so the
backend's prompt-prefix reuse computes it once.

Continuations start with a space or a newline, so tokenising prefix and continuation apart gives
the same tokens as tokenising them together for the tokenizers we use.
"""

from __future__ import annotations

from scaletot_features.taxonomy import StateType, Taxonomy

NO_PROFILE = "(no profile information)"


def describe(state: StateType, value: str) -> str:
    return state.values[value]


def chain_so_far_sentences(taxonomy: Taxonomy, values: list[str]) -> str:
    """The committed nodes as plain sentences ("This user is a student. ...")."""
    return " ".join(
        f"This user is {describe(t, v)}." for t, v in zip(taxonomy.types, values)
    )


# ---- label mode -------------------------------------------------------------------------------

def taxonomy_block(taxonomy: Taxonomy) -> str:
    lines = []
    for t in taxonomy.types:
        lines.append(f"- {t.name} ({t.description}): {', '.join(t.value_names)}")
    return "\n".join(lines)


def _lead(demos: str) -> str:
    return f"{demos}\n\n" if demos else ""


def label_prefix(profile_text: str, taxonomy: Taxonomy, values: list[str], demos: str = "") -> str:
    """Prompt ending in ``<next type>:``; candidates are `` <value>`` labels."""
    state = taxonomy.types[len(values)]
    done = "".join(f"{t.name}: {v}\n" for t, v in zip(taxonomy.types, values))
    return (
        f"{_lead(demos)}User profile:\n"
        f"{profile_text}\n\n"
        "Describe this user with exactly one value for each state, choosing from the options.\n"
        f"{taxonomy_block(taxonomy)}\n\n"
        f"{done}{state.name}:"
    )


def label_continuations(state: StateType) -> list[str]:
    return [f" {v}" for v in state.value_names]


# ---- calibrated mode --------------------------------------------------------------------------

def calibrated_prefix(profile_text: str, taxonomy: Taxonomy, values: list[str],
                      demos: str = "") -> str:
    """Profile, the chain so far as sentences, then ``This user is``; candidates: descriptions."""
    so_far = chain_so_far_sentences(taxonomy, values)
    return (f"{_lead(demos)}User profile:\n{profile_text}\n\n"
            f"{so_far + ' ' if so_far else ''}This user is")


def calibrated_content_free_prefix(taxonomy: Taxonomy, demos: str = "") -> str:
    """The same template after a profile that says nothing: computed once per taxonomy."""
    return f"{_lead(demos)}User profile:\n{NO_PROFILE}\n\nThis user is"


def description_continuations(state: StateType) -> list[str]:
    return [f" {d}." for d in state.values.values()]


# ---- channel mode -----------------------------------------------------------------------------

def channel_prefixes(state: StateType, taxonomy: Taxonomy, values: list[str]) -> list[str]:
    """One prefix per candidate value; the continuation is the profile text."""
    so_far = chain_so_far_sentences(taxonomy, values)
    lead = f"{so_far} " if so_far else ""
    return [f"{lead}This user is {d}. Their profile reads:" for d in state.values.values()]


def channel_continuation(profile_text: str) -> str:
    return "\n" + profile_text


# ---- chat mode --------------------------------------------------------------------------------

CHAT_SYSTEM = ("You estimate facts about a person from the sparse profile an app holds about them. "
               "Answer with exactly one of the options given, nothing else.")


def chat_question(state: StateType) -> str:
    """"Which best describes this user's spending power (how much ...)? Answer with one of: ..."."""
    return (f"Which best describes this user's {state.name.replace('_', ' ')} "
            f"({state.description})? Answer with one of: {', '.join(state.value_names)}.")


def chat_opening(profile_text: str, state: StateType, demos: str = "") -> list[dict[str, str]]:
    """System message (with the demonstrations), then the profile and the question about
    ``state``."""
    system = f"{CHAT_SYSTEM}\n\n{demos}" if demos else CHAT_SYSTEM
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"User profile:\n{profile_text}\n\n{chat_question(state)}"}]


def chat_messages(profile_text: str, taxonomy: Taxonomy, values: list[str],
                  demos: str = "") -> list[dict[str, str]]:
    """The conversation so far: the profile with the first question, then one turn per committed
    node (its answer, the next question), ending on the question of the next node."""
    msgs = chat_opening(profile_text, taxonomy.types[0], demos)
    for value, nxt in zip(values, taxonomy.types[1:]):
        msgs += [{"role": "assistant", "content": value},
                 {"role": "user", "content": chat_question(nxt)}]
    return msgs


def chat_answers(state: StateType) -> list[str]:
    """The assistant's answer starts right after the template's header: no leading space."""
    return list(state.value_names)


def profile_lines(profile_text: str) -> list[str]:
    """One line per present field (profile.to_text's form): the evidence units of ``factored``."""
    return [] if profile_text == NO_PROFILE else [ln for ln in profile_text.split("\n") if ln]


# ---- student (SFT / OSIPO) ----------------------------------------------------------------------

STUDENT_INSTRUCTION = (
    "Read the user profile and write the user's state chain: one line per state, "
    "`<state>: <value>`, in this order: "
)


def student_prompt(profile_text: str, taxonomy: Taxonomy) -> str:
    """The student's prompt; its completion is the chain text (chain.chain_text)."""
    order = ", ".join(taxonomy.type_names)
    return f"{STUDENT_INSTRUCTION}{order}.\n\nUser profile:\n{profile_text}\n\nState chain:\n"
