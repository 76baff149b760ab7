"""Synthetic retrieval-QA data: a fictional encyclopedia of towns, prompts of k passages (one or two
relevant, the rest distractors, shuffled) and a question whose answer is copied from one passage or
combined from two. Train / validation / test use disjoint towns (and founders).

The prompt layout is the one kvblock uses (worker/eval/qa_prompt.cc; keep the two in step):
blocks = [QA_INSTRUCTION, passage 1, ..., passage k], final block = final_block_text(question),
answer = " " + answer text, then EOS. Everything is deterministic given the seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import AbstractSet, Dict, Iterator, List, Sequence

QA_INSTRUCTION = "Answer the question using only the passages below.\n"


def final_block_text(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def answer_text(answer: str) -> str:
    """What the model is trained to generate before EOS (kvblock trims the leading space)."""
    return " " + answer


_SYLLABLES = [
    "ka", "lo", "mi", "ren", "tor", "vel", "an", "is", "dor", "ny", "tu", "mar", "qu", "bel",
    "sa", "fen", "gri", "hol", "ja", "ku", "lin", "mo", "nar", "os", "pel", "ri", "sel", "ta",
    "ul", "va", "wen", "yr", "zo", "bra", "cel", "dru", "el", "fa", "gor", "hu",
]
_KINDS = ["an island port", "a mountain village", "a desert oasis", "a river town",
          "a forest hamlet", "a harbour city", "a hill fort", "a lake town"]
_GOODS = ["salt", "amber", "silk", "paper", "wool", "glass", "copper", "honey", "tea", "spices",
          "linen", "pottery", "olives", "timber", "pearls", "cheese"]
_FESTIVALS = ["a winter market", "a harvest race", "a spring fair", "a lantern night",
              "a boat parade", "a music week", "a kite contest", "a flower feast"]
_COLOURS = ["golden", "blue", "red", "white", "green", "yellow", "grey", "pink", "violet", "black"]


@dataclass(frozen=True)
class Town:
    name: str
    kind: str
    founded: int
    founder: str
    population: int
    goods: str
    festival: str
    colour: str

    def passage(self) -> str:
        return (f"{self.name} is {self.kind} founded in {self.founded} by {self.founder}. "
                f"About {self.population} people live there; its markets are known for "
                f"{self.goods}. Each year it holds {self.festival} and paints its houses "
                f"{self.colour}.\n")


def _name(rng: random.Random) -> str:
    n = rng.choice([2, 2, 3, 3, 4])
    return "".join(rng.choice(_SYLLABLES) for _ in range(n)).capitalize()


def _town(rng: random.Random, name: str, founder: str) -> Town:
    """A town named `name` with random attributes (drawn in a fixed order: the data is seeded)."""
    return Town(name=name, kind=rng.choice(_KINDS), founded=rng.randint(900, 1899),
                founder=founder, population=rng.randint(100, 99999), goods=rng.choice(_GOODS),
                festival=rng.choice(_FESTIVALS), colour=rng.choice(_COLOURS))


def make_encyclopedia(num_towns: int, seed: int) -> List[Town]:
    """`num_towns` towns with distinct names; founders are distinct from every town name."""
    rng = random.Random(seed)
    names: List[str] = []
    seen = set()
    while len(names) < 2 * num_towns:
        n = _name(rng)
        if n not in seen:
            seen.add(n)
            names.append(n)
    return [_town(rng, names[2 * i], names[2 * i + 1]) for i in range(num_towns)]


def fresh_towns(rng: random.Random, count: int, taken: AbstractSet[str]) -> List[Town]:
    """`count` new towns whose names and founders are distinct and not in `taken` (the held-out
    names). Training draws every prompt's towns this way: a fact never repeats across prompts, so
    the model cannot memorize the encyclopedia and has to read the passages."""
    names: List[str] = []
    while len(names) < 2 * count:
        n = _name(rng)
        if n not in taken and n not in names:
            names.append(n)
    return [_town(rng, names[2 * i], names[2 * i + 1]) for i in range(count)]


# Question templates: (question, answer) from one town, or from two (combined answers).
def _single(t: Town, kind: int):
    return [
        (f"When was {t.name} founded?", str(t.founded)),
        (f"Who founded {t.name}?", t.founder),
        (f"How many people live in {t.name}?", str(t.population)),
        (f"What are the markets of {t.name} known for?", t.goods),
        (f"Which festival does {t.name} hold every year?", t.festival),
        (f"What colour are the houses of {t.name} painted?", t.colour),
        (f"What kind of place is {t.name}?", t.kind),
    ][kind]


def _double(a: Town, b: Town, kind: int):
    return [
        (f"When were {a.name} and {b.name} founded?", f"{a.founded} and {b.founded}"),
        (f"Who founded {a.name} and {b.name}?", f"{a.founder} and {b.founder}"),
        (f"What are the markets of {a.name} and {b.name} known for?", f"{a.goods} and {b.goods}"),
        (f"What colour are the houses of {a.name} and {b.name} painted?",
         f"{a.colour} and {b.colour}"),
    ][kind]


# Towns of the validation and test splits (the rest of the encyclopedia is for training).
NUM_VAL_TOWNS = 500
NUM_TEST_TOWNS = 1000

NUM_SINGLE_KINDS = 7
NUM_DOUBLE_KINDS = 4


@dataclass
class Example:
    id: str
    passages: List[str]          # shuffled passage texts (the non-final blocks after the instruction)
    passage_ids: List[str]       # their corpus ids
    question: str
    answer: str
    relevant: List[int] = field(default_factory=list)  # indices into passages

    def to_json(self) -> Dict:
        return {"id": self.id, "passages": self.passages, "passage_ids": self.passage_ids,
                "question": self.question, "answer": self.answer, "relevant": self.relevant}


@dataclass
class Split:
    name: str
    towns: List[Town]
    id_prefix: str

    def passage_id(self, i: int) -> str:
        return f"{self.id_prefix}{i:05d}"


def make_splits(num_train: int, num_val: int, num_test: int, seed: int) -> Dict[str, Split]:
    towns = make_encyclopedia(num_train + num_val + num_test, seed)
    return {
        "train": Split("train", towns[:num_train], "tr"),
        "val": Split("val", towns[num_train:num_train + num_val], "va"),
        "test": Split("test", towns[num_train + num_val:], "te"),
    }


def _compose(towns: Sequence[Town], ids: Sequence[str], double: bool, rng: random.Random,
             ex_id: str) -> Example:
    """The example whose relevant towns are towns[0] (and towns[1] if `double`); all shuffled."""
    order = list(range(len(towns)))
    rng.shuffle(order)
    if double:
        q, a = _double(towns[0], towns[1], rng.randrange(NUM_DOUBLE_KINDS))
    else:
        q, a = _single(towns[0], rng.randrange(NUM_SINGLE_KINDS))
    relevant = [0, 1] if double else [0]
    return Example(id=ex_id, passages=[towns[j].passage() for j in order],
                   passage_ids=[ids[j] for j in order], question=q, answer=a,
                   relevant=sorted(order.index(j) for j in relevant))


def make_example(split: Split, rng: random.Random, k: int, p_double: float, ex_id: str) -> Example:
    """k passages of the split's towns: one or two relevant towns plus distractors, shuffled."""
    double = k >= 2 and rng.random() < p_double
    chosen = rng.sample(range(len(split.towns)), k)
    return _compose([split.towns[i] for i in chosen], [split.passage_id(i) for i in chosen],
                    double, rng, ex_id)


def examples(split: Split, n: int, seed: int, k: int = 4, p_double: float = 0.25) -> List[Example]:
    rng = random.Random(seed)
    return [make_example(split, rng, k, p_double, f"{split.name}-{i:05d}") for i in range(n)]


def example_stream(split: Split, seed: int, k: int = 4, p_double: float = 0.25,
                   vary_k: bool = False, fresh_taken: AbstractSet[str] | None = None
                   ) -> Iterator[Example]:
    """Endless examples; with vary_k each has 1..k passages (uniform), a curriculum of easier
    prompts mixed in (one passage: pure copying; more: finding the named town first). With
    `fresh_taken` (the held-out names) every example gets new towns (fresh_towns) instead of the
    split's."""
    rng = random.Random(seed)
    i = 0
    while True:
        kk = rng.randint(1, k) if vary_k else k
        ex_id = f"{split.name}-{i}"
        if fresh_taken is None:
            yield make_example(split, rng, kk, p_double, ex_id)
        else:
            double = kk >= 2 and rng.random() < p_double
            towns = fresh_towns(rng, kk, fresh_taken)
            yield _compose(towns, [f"{ex_id}-{j}" for j in range(kk)], double, rng, ex_id)
        i += 1


def held_out_names(splits: Dict[str, Split]) -> AbstractSet[str]:
    """Town and founder names of the validation and test splits (fresh training towns avoid them)."""
    return frozenset(n for key in ("val", "test") for t in splits[key].towns
                     for n in (t.name, t.founder))


# ---- token ids (the byte-level tokenizer: id = byte, BOS 256, EOS 257, pad 258, vocab 259) ----
BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE = 256, 257, 258, 259


def encode(text: str) -> List[int]:
    return list(text.encode("utf-8"))


@dataclass
class Tokenized:
    ids: List[int]        # instruction + passages + final block + answer + EOS
    block: List[int]      # per token: its non-final block index, or -1 for the final block/answer
    loss: List[float]     # per token weight of predicting it (0 for the first token, 1 answer)
    prompt_len: int       # tokens before the answer


def tokenize(ex: Example, prompt_weight: float = 0.01) -> Tokenized:
    """The training sequence of one example, with the block index of every token. The answer's
    tokens weigh 1 in the loss, the prompt's `prompt_weight` (about as much in total: the task's
    signal is in the answer, and a plain language-model loss on ~800 prompt bytes drowns it)."""
    ids: List[int] = []
    block: List[int] = []
    for b, text in enumerate([QA_INSTRUCTION] + ex.passages):
        t = encode(text)
        ids += t
        block += [b] * len(t)
    fin = encode(final_block_text(ex.question))
    ids += fin
    block += [-1] * len(fin)
    prompt_len = len(ids)
    ans = encode(answer_text(ex.answer)) + [EOS_ID]
    ids += ans
    block += [-1] * len(ans)
    loss = [0.0] + [prompt_weight] * (prompt_len - 1) + [1.0] * len(ans)
    return Tokenized(ids, block, loss, prompt_len)


def write_jsonl(path: str, rows: Sequence[Dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")


def demo_files(split: Split, num_passages: int, num_questions: int, seed: int):
    """kvblock demo's bundled data: a corpus of `num_passages` towns ({"id","title","text"}) and
    questions over it ({"id","question","passages":[ids],"answer"}), each with 4 passages."""
    corpus = [{"id": split.passage_id(i), "title": t.name, "text": t.passage()}
              for i, t in enumerate(split.towns[:num_passages])]
    sub = Split(split.name, split.towns[:num_passages], split.id_prefix)
    rng = random.Random(seed)
    questions = []
    for i in range(num_questions):
        # One question of each single-passage kind first, then a combined one.
        ex = make_example(sub, rng, 4, 1.0 if i == num_questions - 1 else 0.0, f"q{i}")
        questions.append({"id": f"q{i}", "question": ex.question, "passages": ex.passage_ids,
                          "answer": ex.answer})
    return corpus, questions
