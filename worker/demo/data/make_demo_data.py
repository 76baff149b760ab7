#!/usr/bin/env python3
"""Writes the bundled demo data of `kvblock demo` (deterministic: same files on every run).

corpus.jsonl    one short passage per line: {"id", "title", "text"}
questions.jsonl one sample question per line: {"id", "question", "passages": [ids]} where
                "passages" are the passages a retriever would return for it (chosen here by
                construction, so the demo needs no retriever).

Run from anywhere: python3 worker/demo/data/make_demo_data.py
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(20250122)

SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "sa", "vel", "dor", "an", "is", "mar", "qu", "bel", "tor", "ny"]
KINDS = ["river town", "mountain village", "harbour city", "desert oasis", "forest hamlet", "island port"]
GOODS = ["salt", "copper", "wool", "glass", "amber", "tea", "paper", "honey", "silk", "iron"]
FESTIVALS = ["lantern night", "spring fair", "harvest race", "winter market", "boat parade"]
COLORS = ["red", "blue", "green", "white", "golden", "grey"]


def name():
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def passage(i):
    town = name()
    kind = rng.choice(KINDS)
    good = rng.choice(GOODS)
    founded = rng.randint(900, 1890)
    people = rng.randint(300, 90000)
    festival = rng.choice(FESTIVALS)
    color = rng.choice(COLORS)
    founder = name()
    article = "an" if kind[0] in "aeiou" else "a"
    text = (f"{town} is {article} {kind} founded in {founded} by {founder}. "
            f"About {people} people live there, and its markets are known for {good}. "
            f"Every year the town holds a {festival}, when the houses are painted {color}.")
    return {"id": f"p{i:04d}", "title": town, "text": text}


def main():
    passages = [passage(i) for i in range(300)]
    questions = []
    templates = [
        "When was {t} founded, and by whom?",
        "What are the markets of {t} known for?",
        "How many people live in {t}?",
        "Which festival does {t} hold every year?",
        "What colour are the houses of {t} painted?",
        "Is {t} a river town or a harbour city?",
    ]
    for q in range(6):
        chosen = rng.sample(range(len(passages)), 3)
        target = passages[chosen[0]]["title"]
        questions.append({
            "id": f"q{q}",
            "question": templates[q].format(t=target),
            "passages": [passages[c]["id"] for c in chosen],
        })
    with open(os.path.join(HERE, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for p in passages:
            f.write(json.dumps(p, sort_keys=True) + "\n")
    with open(os.path.join(HERE, "questions.jsonl"), "w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps(q, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
