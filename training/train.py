"""The block fine-tuning recipe: stage 1 trains the small byte-level Llama with full attention on
synthetic retrieval QA (the "vanilla" model); stage 2 continues it with the Block-Attention mask
(kvqa/masks.py), mixing block-mode and full-mode examples. Each stage is exported as a Hugging Face
checkpoint (config.json + model.safetensors) that kvblock loads unchanged. Validation accuracy
(greedy, exact match, both modes, PyTorch) is logged while training; the reported scores come from
`kvblock eval`.

usage: python3 training/train.py --out OUTDIR [--stage1-steps N] [--stage2-steps N] ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvqa import data, masks  # noqa: E402
from kvqa.model import LlamaConfig, LlamaForCausalLM, export_hf  # noqa: E402

PAD_BLOCK = 1 << 20  # block index of padding (its own block: padded queries see only padding)


def collate(toks: Sequence[data.Tokenized], block_mode: Sequence[bool]) -> Dict[str, torch.Tensor]:
    """Right-padded batch: ids, targets (next token), loss weights, per-example block index
    (all -1, i.e. one causal block, for full-mode examples)."""
    t = max(len(x.ids) for x in toks)
    b = len(toks)
    ids = torch.full((b, t), data.PAD_ID, dtype=torch.long)
    block = torch.full((b, t), PAD_BLOCK, dtype=torch.long)
    weight = torch.zeros((b, t), dtype=torch.float32)
    for i, (x, bm) in enumerate(zip(toks, block_mode)):
        n = len(x.ids)
        ids[i, :n] = torch.tensor(x.ids)
        block[i, :n] = torch.tensor(x.block) if bm else -1
        weight[i, :n] = torch.tensor(x.loss)
    return {"ids": ids, "block": block, "weight": weight}


def loss_fn(model, batch, use_mask: bool):
    ids = batch["ids"]
    mask = masks.block_mask(batch["block"]) if use_mask else None
    logits = model(ids, mask)
    # Token j is predicted from position j-1; weight[j] says how much it counts.
    lp = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                         ids[:, 1:].reshape(-1), reduction="none")
    w = batch["weight"][:, 1:].reshape(-1)
    return (lp * w).sum() / w.sum()


@torch.no_grad()
def greedy_answers(model, exs: Sequence[data.Example], block_mode: bool, device,
                   max_new: int = 32, batch_size: int = 64) -> List[str]:
    """Greedy continuations of the prompts (no KV cache: the model is small), cut at EOS."""
    model.eval()
    out: List[str] = []
    for s in range(0, len(exs), batch_size):
        toks = [data.tokenize(e) for e in exs[s:s + batch_size]]
        prompts = [x.ids[:x.prompt_len] for x in toks]
        blocks = [x.block[:x.prompt_len] for x in toks]
        lens = [len(p) for p in prompts]
        t = max(lens) + max_new
        ids = torch.full((len(toks), t), data.PAD_ID, dtype=torch.long)
        blk = torch.full((len(toks), t), PAD_BLOCK, dtype=torch.long)
        for i, (p, bl) in enumerate(zip(prompts, blocks)):
            ids[i, :len(p)] = torch.tensor(p)
            blk[i, :len(p)] = torch.tensor(bl) if block_mode else -1
        blk[ids == data.PAD_ID] = -1  # generated tokens: final block (pads after them are unseen)
        ids, blk = ids.to(device), blk.to(device)
        mask = masks.block_mask(blk)
        gen = [[] for _ in toks]
        done = [False] * len(toks)
        cur = torch.tensor(lens, device=device)
        for _ in range(max_new):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(ids, mask)
            nxt = logits[torch.arange(len(toks), device=device), cur - 1].argmax(-1)
            ids[torch.arange(len(toks), device=device), cur] = nxt
            for i, tok in enumerate(nxt.tolist()):
                if not done[i]:
                    if tok == data.EOS_ID:
                        done[i] = True
                    else:
                        gen[i].append(tok)
            cur = cur + 1
            if all(done):
                break
        out += [bytes(x for x in g if x < 256).decode("utf-8", "replace") for g in gen]
    model.train()
    return out


def normalize(text: str) -> str:
    """kvblock eval's normalization (worker/eval/qa_prompt.cc): up to the first newline, trimmed."""
    return text.split("\n", 1)[0].strip()


def accuracy(model, exs, block_mode, device) -> float:
    ans = greedy_answers(model, exs, block_mode, device)
    return sum(normalize(a) == e.answer for a, e in zip(ans, exs)) / len(exs)


class Batches(torch.utils.data.IterableDataset):
    """An endless stream of collated training batches; worker w of n draws from its own seed."""

    def __init__(self, split, seed, batch_size, p_block, k, vary_k, fresh_taken):
        self.split, self.seed, self.batch_size, self.p_block, self.k = split, seed, batch_size, p_block, k
        self.vary_k, self.fresh_taken = vary_k, fresh_taken

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = info.id if info else 0
        stream = data.example_stream(self.split, self.seed * 1000 + wid, k=self.k,
                                     vary_k=self.vary_k, fresh_taken=self.fresh_taken)
        rng = random.Random(self.seed * 1000 + wid + 7)
        while True:
            exs = [next(stream) for _ in range(self.batch_size)]
            modes = [rng.random() < self.p_block for _ in exs]
            yield collate([data.tokenize(e) for e in exs], modes)


def train_stage(name, model, args, split, fresh_taken, val_exs, device, steps, lr, p_block, seed,
                max_seconds, log):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, min(200, steps // 10))
    t0 = time.time()

    def progress(s):
        """Share of the stage done: of its steps or of its time cap, whichever runs out first, so
        the learning rate anneals fully even when the time cap stops the stage."""
        return min(1.0, max(s / steps, (time.time() - t0) / max_seconds))

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.3 + 0.7 * 0.5 * (1 + math.cos(math.pi * progress(s)))))
    loader = torch.utils.data.DataLoader(Batches(split, seed, args.batch_size, p_block, args.k,
                                                 args.vary_k, fresh_taken),
                                         batch_size=None, num_workers=args.workers,
                                         prefetch_factor=4 if args.workers else None)
    it = iter(loader)
    done = 0
    for step in range(steps):
        batch = {k: v.to(device, non_blocking=True) for k, v in next(it).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model, batch, use_mask=p_block > 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        done = step + 1
        if step % 100 == 0 or step == steps - 1:
            log({"stage": name, "step": step, "loss": round(loss.item(), 4),
                 "lr": sched.get_last_lr()[0], "seconds": round(time.time() - t0, 1)})
        out_of_time = time.time() - t0 > max_seconds
        if (args.eval_every and (step + 1) % args.eval_every == 0) or step == steps - 1 or out_of_time:
            log({"stage": name, "step": step, "val_full": accuracy(model, val_exs, False, device),
                 "val_block": accuracy(model, val_exs, True, device),
                 "seconds": round(time.time() - t0, 1)})
        if out_of_time:
            log({"stage": name, "stopped_early_at_step": step, "reason": "time limit"})
            break
    return {"steps": done, "seconds": round(time.time() - t0, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-seed", type=int, default=2026)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--k", type=int, default=4, help="passages per prompt (validation, test)")
    ap.add_argument("--vary-k", type=int, default=1,
                    help="1: training prompts have 1..k passages (curriculum), 0: always k")
    ap.add_argument("--stage1-steps", type=int, default=4000)
    ap.add_argument("--stage2-steps", type=int, default=2000)
    ap.add_argument("--lr1", type=float, default=2e-3)
    ap.add_argument("--lr2", type=float, default=1e-3)
    ap.add_argument("--p-block", type=float, default=0.5, help="stage 2: share of block-mode examples")
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--val-examples", type=int, default=128)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--max-stage1-seconds", type=float, default=1e9, help="time cap of stage 1")
    ap.add_argument("--max-stage2-seconds", type=float, default=1e9, help="time cap of stage 2")
    ap.add_argument("--num-train-towns", type=int, default=20000,
                    help="towns of the fixed training split (used only with --fresh-towns 0)")
    ap.add_argument("--fresh-towns", type=int, default=1,
                    help="1: every training prompt gets new towns (no memorizable facts), "
                         "0: prompts drawn from the fixed training split")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "train_log.jsonl")
    logf = open(log_path, "w")

    def log(rec):
        print(json.dumps(rec), flush=True)
        logf.write(json.dumps(rec) + "\n")
        logf.flush()

    splits = data.make_splits(args.num_train_towns, data.NUM_VAL_TOWNS, data.NUM_TEST_TOWNS,
                             args.data_seed)
    val_exs = data.examples(splits["val"], args.val_examples, seed=args.data_seed + 1, k=args.k)
    cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads)
    model = LlamaForCausalLM(cfg).to(device)
    log({"device": str(device), "parameters": model.num_parameters(), "args": vars(args),
         "torch": torch.__version__})

    fresh_taken = data.held_out_names(splits) if args.fresh_towns else None
    s1 = train_stage("vanilla", model, args, splits["train"], fresh_taken, val_exs, device, args.stage1_steps,
                     args.lr1, 0.0, args.seed * 10 + 1, args.max_stage1_seconds, log)
    export_hf(model, os.path.join(args.out, "vanilla"),
              extra={"kvblock_training": {"stage": "vanilla (full attention)", **s1}})
    s2 = train_stage("blockft", model, args, splits["train"], fresh_taken, val_exs, device, args.stage2_steps,
                     args.lr2, args.p_block, args.seed * 10 + 2, args.max_stage2_seconds, log)
    export_hf(model, os.path.join(args.out, "blockft"),
              extra={"kvblock_training": {"stage": "block fine-tuned (from vanilla)", **s2,
                                          "p_block": args.p_block}})
    summary = {"parameters": model.num_parameters(), "stage1": s1, "stage2": s2,
               "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    with open(os.path.join(args.out, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    log({"summary": summary})


if __name__ == "__main__":
    main()
