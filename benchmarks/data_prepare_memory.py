"""Peak memory of `llmkit data prepare` on one long document: flat in the document's size.

    python benchmarks/data_prepare_memory.py            # 10 MB and 100 MB single-document text files

A text file is one document. `data prepare` reads it a block at a time and tokenizes it in pieces cut at
whitespace (`Tokenizer.encode_long`, each cut checked), so peak RSS should not grow with the file; the
reference, measured in the same run, is `tokenizers` encoding the whole 10 MB text at once (what
`prepare` did before), ~190 bytes per input byte. Two shapes per size: the plays as they are (lines), and
the same text as one line (no newline to cut at: cuts fall at spaces). The tokenizer is an 8,192-token
BPE trained on the built-in corpus, as `llmkit pretrain` makes it. Each run is its own process; its peak
RSS is the kernel's high-water mark (getrusage of the child). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - start, code)
"""


def peak_rss_mib(command: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of `command` run in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, env=env)
    rss_kib, seconds, code = out.stdout.split()[-3:]
    if code != "0":
        raise SystemExit(f"{' '.join(command)} failed:\n{out.stderr}")
    return int(rss_kib) / 1024, float(seconds)


def make_document(path: Path, mb: int, plays: list[Path], one_line: bool) -> None:
    text = "".join(p.read_text(encoding="utf-8") for p in plays)
    if one_line:
        text = text.replace("\n", " ")
    with open(path, "w", encoding="utf-8") as f:
        written = 0
        while written < mb * 1e6:
            f.write(text)
            written += len(text.encode("utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,100", help="document sizes in MB")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from llmkit.data.corpus import cache_root, fetch_shakespeare
    from llmkit.tokenizer import Tokenizer, read_text_files

    plays = sorted((fetch_shakespeare(cache_root() / "data" / "shakespeare") / "train").glob("*.txt"))
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Tokenizer.train(read_text_files(plays), vocab_size=8192).save(tmp / "tok")
        sizes = [int(s) for s in args.sizes.split(",")]
        for shape in ("lines", "one_line"):
            for mb in sizes:
                doc = tmp / f"{shape}_{mb}mb.txt"
                make_document(doc, mb, plays, one_line=shape == "one_line")
                rss, seconds = peak_rss_mib([sys.executable, "-m", "llmkit.cli", "data", "prepare", "--input", str(doc),
                                             "--tokenizer", str(tmp / "tok"), "--out", str(tmp / f"out_{shape}_{mb}")])
                manifest = json.loads((tmp / f"out_{shape}_{mb}" / "manifest.json").read_text())
                assert manifest["documents"] == 1
                rows.append((f"prepare, {shape}", mb, rss, doc.stat().st_size / 1e6 / seconds))
                figures[f"prepare_{shape}_{mb}mb_peak_rss_mib"] = round(rss, 1)
                figures[f"prepare_{shape}_{mb}mb_mb_s"] = round(doc.stat().st_size / 1e6 / seconds, 2)
                doc.unlink()
            figures[f"{shape}_rss_ratio"] = round(figures[f"prepare_{shape}_{sizes[-1]}mb_peak_rss_mib"]
                                                  / figures[f"prepare_{shape}_{sizes[0]}mb_peak_rss_mib"], 3)
        # the reference: the whole first-size document encoded at once
        doc = tmp / "whole.txt"
        make_document(doc, sizes[0], plays, one_line=False)
        script = (f"from llmkit.tokenizer import Tokenizer; t = Tokenizer.load({str(tmp / 'tok')!r}); "
                  f"t.encode(open({str(doc)!r}, encoding='utf-8').read(), add_bos=True)")
        rss, seconds = peak_rss_mib([sys.executable, "-c", script])
        rows.append(("whole-text encode (reference)", sizes[0], rss, doc.stat().st_size / 1e6 / seconds))
        figures[f"whole_encode_{sizes[0]}mb_peak_rss_mib"] = round(rss, 1)
    print(f"{'run':<32} {'MB':>5} {'peak RSS MiB':>13} {'MB/s':>7}")
    for name, mb, rss, speed in rows:
        print(f"{name:<32} {mb:>5} {rss:>13.1f} {speed:>7.2f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
