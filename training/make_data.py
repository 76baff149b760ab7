"""Writes the recipe's evaluation data and kvblock demo's bundled data (deterministic).

  OUT/val.jsonl, OUT/test.jsonl   examples for `kvblock eval` ({"id","passages":[texts],
                                  "passage_ids","question","answer","relevant"})
  --demo-dir DIR                  also DIR/corpus.jsonl ({"id","title","text"}, test-split towns)
                                  and DIR/questions.jsonl ({"id","question","passages":[ids],
                                  "answer"}) for worker/demo/data/

Training examples are drawn on the fly from the train towns (train.py); the splits use disjoint
towns and founders.
usage: python3 training/make_data.py --out DIR [--demo-dir worker/demo/data]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvqa import data  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--demo-dir")
    ap.add_argument("--data-seed", type=int, default=2026)
    ap.add_argument("--num-train-towns", type=int, default=20000)
    ap.add_argument("--val-examples", type=int, default=500)
    ap.add_argument("--test-examples", type=int, default=1000)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--demo-passages", type=int, default=120)
    ap.add_argument("--demo-questions", type=int, default=6)
    args = ap.parse_args()
    splits = data.make_splits(args.num_train_towns, data.NUM_VAL_TOWNS, data.NUM_TEST_TOWNS,
                             args.data_seed)
    os.makedirs(args.out, exist_ok=True)
    # val: the same seed as train.py's validation examples.
    data.write_jsonl(os.path.join(args.out, "val.jsonl"),
                     [e.to_json() for e in data.examples(splits["val"], args.val_examples, args.data_seed + 1, args.k)])
    data.write_jsonl(os.path.join(args.out, "test.jsonl"),
                     [e.to_json() for e in data.examples(splits["test"], args.test_examples, args.data_seed + 2, args.k)])
    if args.demo_dir:
        os.makedirs(args.demo_dir, exist_ok=True)
        corpus, questions = data.demo_files(splits["test"], args.demo_passages, args.demo_questions,
                                            args.data_seed + 3)
        data.write_jsonl(os.path.join(args.demo_dir, "corpus.jsonl"), corpus)
        data.write_jsonl(os.path.join(args.demo_dir, "questions.jsonl"), questions)


if __name__ == "__main__":
    main()
