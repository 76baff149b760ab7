"""Parity of `kvblock tokenize` with Hugging Face tokenizers on the real Llama 3 and Qwen 3 files.

Generates a deterministic, varied text of >= 200 KB (prose in many languages, CJK, emoji, code,
CRLF line ends, long whitespace and digit runs, special-token strings), tokenizes it with both
`Tokenizer.from_file(path).encode(text, add_special_tokens=False).ids` and `kvblock tokenize`, and
requires identical ids, identical decoded text, and (for tokenizers without a normalizer) a
round trip back to the input. Prints both implementations' throughput, measured in this run.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

from tokenizers import Tokenizer

SNIPPETS = [
    "Block-Attention divides retrieved documents into discrete blocks, each of which independently "
    "calculates its KV states, except for the final block. It's fast; we'll see. I'M SURE IT'LL WORK, "
    "DON'T you think? They've done it, she'd say.",
    "Die Aufmerksamkeit wird für jeden Block einmal berechnet und danach überall wiederverwendet. "
    "Größe, Maß, Straße — schön!",
    "L'attention par blocs réduit le temps jusqu'au premier jeton ; c'est « très » efficace. "
    "Où est la bibliothèque ? Élève, garçon, cœur.",
    "La atención por bloques reutiliza el caché: ¿por qué no? ¡Claro que sí! Año, niño, pingüino.",
    "Блочное внимание вычисляет состояния KV для каждого отрывка один раз. Съешь же ещё этих мягких "
    "французских булок, да выпей чаю.",
    "Η προσοχή σε μπλοκ υπολογίζεται μία φορά. Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "يتم حساب الانتباه لكل كتلة مرة واحدة ثم يعاد استخدامه في أي موضع.",
    "ब्लॉक ध्यान प्रत्येक अनुच्छेद के लिए एक बार गणना की जाती है। नमस्ते दुनिया!",
    "ブロック注意は各文書のKV状態を一度だけ計算し、どの位置でも再利用します。東京は晴れです。カタカナとひらがな。",
    "块注意力为每个段落只计算一次KV状态，然后在任何位置重复使用。今天天气很好，我们去公园散步吧！",
    "블록 어텐션은 각 구절의 KV 상태를 한 번만 계산합니다. 안녕하세요, 세계!",
    "การใส่ใจแบบบล็อกคำนวณเพียงครั้งเดียว",
    "Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️ 🚀✨ — and a ZWJ: 🧑‍💻.",
    "def encode(self, text: str) -> list[int]:\n    ids = []\n    for piece in self.split(text):\n"
    "        ids.extend(self.bpe(piece))  # cached per word\n    return ids\n",
    "template <typename T>\nstatic absl::StatusOr<std::vector<T>> Load(const std::string& path) {\n"
    "\tif (path.empty()) return absl::InvalidArgumentError(\"empty\");\n\treturn std::vector<T>{};\n}\n",
    '{"blocks": [[256, 72, 105], [256, 33]], "final_block": "What is 2+2?", "max_new_tokens": 16, '
    '"temperature": 0.0, "nested": {"a": [1, 2, 3], "b": null, "c": true}}',
    "SELECT id, name FROM passages WHERE score >= 0.75 ORDER BY score DESC LIMIT 10;",
    "Numbers: 3.14159265358979, 2,718,281,828, 1e-9, -42, +7, 0x1F600, 007, ½ ¾ ² ³, ٣٤٥, १२३.",
    "Special strings: <|begin_of_text|> <|end_of_text|> <|eot_id|> <|endoftext|> <|im_start|>user\n"
    "hello<|im_end|> <think>reasoning</think> <tool_call>{}</tool_call> <|fim_prefix|>",
    "Unicode spaces:\u00a0non-breaking,\u3000ideographic,\u2009thin,\u200bzero-width,\u2028line sep,"
    "\u0085next line, and tabs\t\there.",
    "Decomposed accents: e\u0301 a\u0300 o\u0308 n\u0303 (NFC composes them); precomposed: é à ö ñ; "
    "ligatures: ﬁ ﬂ; fullwidth: ＡＢＣ１２３; long s: ſ 'ſ 'S 'Ll; Kelvin: K.",
    "Punctuation runs: ...!!!??? --- *** ((( ))) [[[ ]]] {{{ }}} /// \\\\\\ ### @@@ $$$ %%% ^^^ &&&",
    "Mixed scripts: abcДЕЖ東京123αβγ😀xyz; camelCaseWords and snake_case_words and kebab-case-words.",
]

RANGES = [(0x20, 0x7E), (0xA1, 0x17F), (0x391, 0x3C9), (0x410, 0x44F), (0x4E00, 0x9FA5),
          (0xAC00, 0xD7A3), (0x1F600, 0x1F64F), (0x300, 0x36F), (0x621, 0x64A), (0x905, 0x939),
          (0x3041, 0x3096), (0x30A1, 0x30FA)]


def make_text(min_bytes: int, seed: int) -> str:
    rng = random.Random(seed)
    parts = []
    size = 0
    while size < min_bytes:
        kind = rng.random()
        if kind < 0.70:
            s = rng.choice(SNIPPETS)
            if rng.random() < 0.2:
                s = s.upper()
            if rng.random() < 0.3:
                s = s.replace("\n", "\r\n")
        elif kind < 0.78:
            s = rng.choice([" ", "\t", "\n", "\r\n", "  \n", "\u3000"]) * rng.randint(2, 300)
        elif kind < 0.86:
            s = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 1200)))
        else:
            s = "".join(chr(rng.randint(*rng.choice(RANGES))) for _ in range(rng.randint(5, 200)))
        sep = rng.choice([" ", "\n", "\n\n", "\r\n", "\r\n\r\n", "", "  ", "\t"])
        parts.append(s + sep)
        size += len((s + sep).encode("utf-8"))
    return "".join(parts)


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def run_kvblock(kvblock, args):
    proc = subprocess.run([kvblock, "tokenize", *args, "--report-timing"], capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"FAIL: kvblock tokenize {' '.join(args)} exited {proc.returncode}: "
                         f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout, proc.stderr.decode()


def mb_per_s(stderr_line: str) -> float:
    # "kvblock tokenize: load X ms, encode Y MB in Z ms (W MB/s)"
    return float(stderr_line.rsplit("(", 1)[1].split()[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvblock", required=True)
    ap.add_argument("--shared", required=True)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--min-bytes", type=int, default=240_000)
    ap.add_argument("--seed", type=int, default=20250515)
    args = ap.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)

    text = make_text(args.min_bytes, args.seed)
    text_path = os.path.join(args.work_dir, "parity_text.txt")
    with open(text_path, "w", encoding="utf-8", newline="") as f:  # newline="": keep CRLF as is
        f.write(text)
    with open(text_path, "r", encoding="utf-8", newline="") as f:
        text = f.read()
    nbytes = len(text.encode("utf-8"))
    assert nbytes >= 200_000 and "\r\n" in text
    print(f"text: {nbytes} bytes, {len(text)} characters")

    failures = 0
    for name in ("llama3", "qwen3"):
        path = os.path.join(args.shared, "tokenizers", name, "tokenizer.json")
        with open(path, encoding="utf-8") as f:
            has_normalizer = json.load(f).get("normalizer") is not None
        hf = Tokenizer.from_file(path)
        t0 = time.perf_counter()
        want = hf.encode(text, add_special_tokens=False).ids
        hf_s = time.perf_counter() - t0

        out, err = run_kvblock(args.kvblock, ["--tokenizer", path, "--text-file", text_path])
        got = json.loads(out)
        kv_rate = mb_per_s(err)
        hf_rate = nbytes / 1e6 / hf_s
        print(f"{name}: {len(want)} tokens; encode throughput kvblock {kv_rate:.2f} MB/s, "
              f"HF tokenizers {hf_rate:.2f} MB/s (ratio {kv_rate / hf_rate:.2f}); {err.strip()}")
        if got != want:
            i = first_difference(got, want)
            print(f"FAIL {name}: ids differ at index {i} (kvblock {len(got)} ids, HF {len(want)})")
            print(f"  context HF: {hf.decode(want[max(0, i - 5):i + 5], skip_special_tokens=False)!r}")
            print(f"  kvblock ids {got[max(0, i - 5):i + 5]} vs HF ids {want[max(0, i - 5):i + 5]}")
            failures += 1
            continue

        ids_path = os.path.join(args.work_dir, f"parity_ids_{name}.json")
        with open(ids_path, "w") as f:
            json.dump(want, f)
        out, err = run_kvblock(args.kvblock, ["--tokenizer", path, "--text-file", ids_path, "--decode"])
        decoded = out.decode("utf-8")
        hf_decoded = hf.decode(want, skip_special_tokens=False)
        if decoded != hf_decoded:
            i = first_difference(decoded, hf_decoded)
            print(f"FAIL {name}: decoded text differs from HF at character {i}: "
                  f"{decoded[max(0, i - 20):i + 20]!r} vs {hf_decoded[max(0, i - 20):i + 20]!r}")
            failures += 1
            continue
        if not has_normalizer and decoded != text:
            i = first_difference(decoded, text)
            print(f"FAIL {name}: round trip differs at character {i}")
            failures += 1
            continue
        print(f"{name}: identical ids ({len(want)}) and decoded text"
              + ("" if has_normalizer else ", exact round trip"))

    if failures:
        print(f"0 passed, {failures} failed")
        sys.exit(1)
    print("2 passed, 0 failed")


if __name__ == "__main__":
    main()
