"""The Block-Attention mask against a brute-force construction, and the property that justifies
training with it: a non-final block under the mask computes exactly what it computes alone."""

import os
import random
import sys
import unittest

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kvqa import masks  # noqa: E402
from kvqa.model import LlamaConfig, LlamaForCausalLM  # noqa: E402


def brute_force(block):
    """mask[i][j] by the paper's definition, one pair at a time."""
    t = len(block)
    m = [[False] * t for _ in range(t)]
    for i in range(t):
        for j in range(t):
            if j > i:
                continue
            if block[i] == -1:          # final block / answer: everything before it
                m[i][j] = True
            elif block[j] == block[i]:  # non-final block: only itself
                m[i][j] = True
    return m


def random_layout(rng, n_blocks, with_final=True):
    block = []
    for b in range(n_blocks):
        block += [b] * rng.randint(1, 9)
    if with_final:
        block += [-1] * rng.randint(1, 9)
    return block


class MaskTest(unittest.TestCase):
    def test_block_mask_equals_brute_force(self):
        rng = random.Random(7)
        for trial in range(50):
            layouts = [random_layout(rng, rng.randint(0, 5), with_final=rng.random() < 0.8)
                       for _ in range(3)]
            t = max(len(x) for x in layouts)
            padded = [x + [1 << 20] * (t - len(x)) for x in layouts]
            got = masks.block_mask(torch.tensor(padded))
            for b, x in enumerate(padded):
                self.assertEqual(got[b].tolist(), brute_force(x), f"trial {trial} layout {x}")

    def test_every_query_sees_itself(self):
        block = torch.tensor([[0, 0, 1, 1, -1, -1, 1 << 20, 1 << 20]])
        self.assertTrue(masks.block_mask(block)[0].diagonal().all())

    def test_all_final_is_causal(self):
        block = torch.full((2, 11), -1)
        self.assertTrue(torch.equal(masks.block_mask(block)[0], masks.full_mask(11)))

    def test_non_final_block_under_mask_equals_block_alone(self):
        torch.manual_seed(3)
        cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2)
        model = LlamaForCausalLM(cfg).eval()
        lens = [5, 7, 4]
        ids = torch.randint(0, 256, (1, sum(lens) + 6))
        block = torch.tensor([sum(([b] * n for b, n in enumerate(lens)), []) + [-1] * 6])
        with torch.no_grad():
            joint = model(ids, masks.block_mask(block))
            start = 0
            for n in lens:
                alone = model(ids[:, start:start + n])  # positions 0..n-1, causal
                torch.testing.assert_close(joint[:, start:start + n], alone, rtol=1e-4, atol=1e-4)
                start += n
            # The final block is not independent: it sees the blocks.
            shuffled = ids.clone()
            shuffled[:, :lens[0]] = torch.randint(0, 256, (1, lens[0]))
            self.assertFalse(torch.allclose(model(shuffled, masks.block_mask(block))[:, -6:],
                                            joint[:, -6:]))


if __name__ == "__main__":
    unittest.main()
