"""Properties of the synthetic retrieval-QA generator."""

import json
import re
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kvqa import data  # noqa: E402

SPLITS = data.make_splits(2000, 200, 300, seed=11)


def town_of(passage):
    return passage.split(" is ")[0]


def named_at(town, question):
    """Where `town` is named in `question` as a whole word, or -1."""
    m = re.search(r"\b" + town + r"\b", question)
    return m.start() if m else -1


class DataTest(unittest.TestCase):
    def test_splits_have_disjoint_towns_and_founders(self):
        names = {k: {t.name for t in s.towns} | {t.founder for t in s.towns} for k, s in SPLITS.items()}
        self.assertEqual(len(names["train"]), 2 * 2000)
        self.assertFalse(names["train"] & names["val"])
        self.assertFalse(names["train"] & names["test"])
        self.assertFalse(names["val"] & names["test"])

    def test_deterministic(self):
        a = data.examples(data.make_splits(500, 50, 50, seed=5)["test"], 20, seed=9)
        b = data.examples(data.make_splits(500, 50, 50, seed=5)["test"], 20, seed=9)
        self.assertEqual([e.to_json() for e in a], [e.to_json() for e in b])
        c = data.examples(data.make_splits(500, 50, 50, seed=5)["test"], 20, seed=10)
        self.assertNotEqual([e.to_json() for e in a], [e.to_json() for e in c])

    def test_examples_answerable_from_relevant_passages_only(self):
        exs = data.examples(SPLITS["val"], 400, seed=3, k=4, p_double=0.3)
        doubles = 0
        for e in exs:
            self.assertEqual(len(e.passages), 4)
            self.assertEqual(len(set(e.passage_ids)), 4)
            self.assertIn(len(e.relevant), (1, 2))
            doubles += len(e.relevant) == 2
            parts = e.answer.split(" and ") if len(e.relevant) == 2 else [e.answer]
            # Parts of a combined answer follow the order in which the question names the towns.
            relevant = sorted((e.passages[i] for i in e.relevant),
                              key=lambda p: named_at(town_of(p), e.question))
            # Each part of the answer is copied from its relevant passage, whose town the
            # question names; no distractor is about a town the question names.
            for part, passage in zip(parts, relevant):
                self.assertIn(part, passage)
                self.assertGreaterEqual(named_at(town_of(passage), e.question), 0)
            for i, p in enumerate(e.passages):
                if i not in e.relevant:
                    self.assertEqual(named_at(town_of(p), e.question), -1)
        self.assertTrue(60 < doubles < 180, doubles)

    def test_relevant_position_is_shuffled(self):
        exs = data.examples(SPLITS["val"], 400, seed=4, k=4, p_double=0.0)
        positions = {e.relevant[0] for e in exs}
        self.assertEqual(positions, {0, 1, 2, 3})

    def test_stream_curriculum_varies_passage_count(self):
        stream = data.example_stream(SPLITS["train"], seed=5, k=4, vary_k=True)
        counts = {len(next(stream).passages) for _ in range(200)}
        self.assertEqual(counts, {1, 2, 3, 4})
        fixed = data.example_stream(SPLITS["train"], seed=5, k=4)
        self.assertEqual({len(next(fixed).passages) for _ in range(50)}, {4})

    def test_fresh_stream_never_repeats_facts_nor_uses_held_out_names(self):
        taken = data.held_out_names(SPLITS)
        self.assertEqual(len(taken), 2 * (200 + 300))
        stream = data.example_stream(SPLITS["train"], seed=6, k=4, vary_k=True, fresh_taken=taken)
        seen = set()
        for _ in range(300):
            e = next(stream)
            towns = [town_of(p) for p in e.passages]
            self.assertEqual(len(set(towns)), len(towns))
            self.assertFalse(set(towns) & taken)
            # A name may come back (2-syllable names are few), its facts do not.
            self.assertFalse(set(e.passages) & seen)
            seen |= set(e.passages)
            # Still answerable: each answer part is copied from a relevant passage.
            for part, i in zip(e.answer.split(" and "), e.relevant):
                self.assertIn(part, "".join(e.passages))
        again = data.example_stream(SPLITS["train"], seed=6, k=4, vary_k=True, fresh_taken=taken)
        first = data.example_stream(SPLITS["train"], seed=6, k=4, vary_k=True, fresh_taken=taken)
        self.assertEqual(next(again).to_json(), next(first).to_json())  # seeded

    def test_loss_weights_favour_the_answer(self):
        t = data.tokenize(data.examples(SPLITS["test"], 1, seed=1)[0], prompt_weight=0.01)
        self.assertEqual(t.loss[0], 0.0)
        self.assertEqual(set(t.loss[1:t.prompt_len]), {0.01})
        self.assertEqual(set(t.loss[t.prompt_len:]), {1.0})

    def test_tokenize_layout(self):
        e = data.examples(SPLITS["test"], 1, seed=1)[0]
        t = data.tokenize(e)
        text = data.QA_INSTRUCTION + "".join(e.passages) + data.final_block_text(e.question)
        self.assertEqual(t.ids[:t.prompt_len], list(text.encode()))
        self.assertEqual(t.ids[t.prompt_len:], list(data.answer_text(e.answer).encode()) + [data.EOS_ID])
        self.assertEqual(len(t.block), len(t.ids))
        self.assertEqual(t.block[0], 0)
        self.assertEqual(t.block[len(data.QA_INSTRUCTION)], 1)
        self.assertEqual(set(t.block[t.prompt_len - 1:]), {-1})
        self.assertEqual(max(t.block), len(e.passages))
        self.assertLess(len(t.ids), 1024)  # prompts stay under 1K byte tokens

    def test_demo_files(self):
        corpus, questions = data.demo_files(SPLITS["test"], 40, 6, seed=2)
        ids = {c["id"] for c in corpus}
        self.assertEqual(len(ids), 40)
        texts = {c["id"]: c["text"] for c in corpus}
        for q in questions:
            self.assertTrue(set(q["passages"]) <= ids)
            self.assertTrue(any(q["answer"].split(" and ")[0] in texts[p] for p in q["passages"]))
        with tempfile.TemporaryDirectory() as d:
            data.write_jsonl(os.path.join(d, "q.jsonl"), questions)
            with open(os.path.join(d, "q.jsonl")) as f:
                self.assertEqual([json.loads(line) for line in f], questions)


if __name__ == "__main__":
    unittest.main()
