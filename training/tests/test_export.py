"""Export round trip: a model exported as a Hugging Face checkpoint loads back to the same function
(float32 exactly, bfloat16 to the rounding of its weights), with the names, shapes and config keys
kvblock's worker/model reads; where transformers is installed, its LlamaForCausalLM computes the
same logits from the exported directory."""

import json
import os
import sys
import tempfile
import unittest

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kvqa import data  # noqa: E402
from kvqa.model import LlamaConfig, LlamaForCausalLM, export_hf, load_hf  # noqa: E402

CFG = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)


def trained_like(seed):
    torch.manual_seed(seed)
    m = LlamaForCausalLM(CFG).eval()
    with torch.no_grad():  # norms away from 1, so a lost or swapped norm weight shows
        for n, p in m.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.2)
    return m


class ExportTest(unittest.TestCase):
    def setUp(self):
        self.ids = torch.randint(0, data.VOCAB_SIZE, (2, 40), generator=torch.Generator().manual_seed(1))

    def test_float32_round_trip_is_exact(self):
        m = trained_like(1)
        with tempfile.TemporaryDirectory() as d:
            export_hf(m, d, dtype=torch.float32)
            back = load_hf(d).eval()
        with torch.no_grad():
            self.assertTrue(torch.equal(m(self.ids), back(self.ids)))

    def test_bfloat16_round_trip(self):
        m = trained_like(2)
        with tempfile.TemporaryDirectory() as d:
            export_hf(m, d, dtype=torch.bfloat16)
            from safetensors import safe_open
            with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
                self.assertEqual({f.get_tensor(k).dtype for k in f.keys()}, {torch.bfloat16})
            back = load_hf(d).eval()
        for (n, p), (n2, q) in zip(m.state_dict().items(), back.state_dict().items()):
            self.assertEqual(n, n2)
            self.assertTrue(torch.equal(p.to(torch.bfloat16).float(), q), n)
        with torch.no_grad():
            torch.testing.assert_close(back(self.ids), m(self.ids), rtol=0.05, atol=0.05)

    def test_layout_kvblock_reads(self):
        m = trained_like(3)
        with tempfile.TemporaryDirectory() as d:
            export_hf(m, d, extra={"kvblock_note": "x"})
            with open(os.path.join(d, "config.json")) as f:
                cfg = json.load(f)
            from safetensors import safe_open
            with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        self.assertEqual(cfg["architectures"], ["LlamaForCausalLM"])
        self.assertEqual((cfg["vocab_size"], cfg["bos_token_id"], cfg["eos_token_id"],
                          cfg["pad_token_id"]), (259, 256, 257, 258))
        self.assertEqual(cfg["kvblock_note"], "x")
        h, kv = CFG.hidden_size, CFG.num_key_value_heads * CFG.head_dim
        self.assertEqual(shapes["model.embed_tokens.weight"], (259, h))
        self.assertEqual(shapes["lm_head.weight"], (259, h))
        self.assertEqual(shapes["model.norm.weight"], (h,))
        self.assertEqual(shapes["model.layers.1.self_attn.k_proj.weight"], (kv, h))
        self.assertEqual(shapes["model.layers.1.mlp.down_proj.weight"], (h, CFG.intermediate_size))
        self.assertEqual(len(shapes), 2 + 1 + 9 * CFG.num_hidden_layers)

    def test_transformers_computes_the_same_function(self):
        try:
            import transformers
        except ImportError:
            self.skipTest("transformers is not installed")
        m = trained_like(4)
        with tempfile.TemporaryDirectory() as d:
            export_hf(m, d, dtype=torch.float32)
            hf = transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                               attn_implementation="eager").eval()
        with torch.no_grad():
            torch.testing.assert_close(hf(self.ids).logits, m(self.ids), rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
    unittest.main()
