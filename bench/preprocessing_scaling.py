"""Preprocessing at growing corpus sizes: time and peak RSS of ours against the stock HF recipe.

Target (performance issue, item 2): tokenise + pack a ~60 MB corpus >= 3x faster than `datasets.map(tokenize)`
+ `group_texts` (run_mlm.py), with peak RSS <= 1.5 GB, and our peak RSS flat (within 20%) from 15 MB to 60 MB.
The corpora are WikiText-2 train repeated (whole lines) up to each size, written once to the bench cache. Each
size runs both recipes in their own subprocesses (pretrain_throughput.measure_preprocessing: the same children
as the throughput benchmark, fresh caches, the same 16k WordPiece tokenizer, 128-token blocks).

Usage: python bench/preprocessing_scaling.py [--quick] [--sizes-mb 15,30,60]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from pretrain_throughput import measure_preprocessing  # noqa: E402

SEQ_LEN, VOCAB = 128, 16000


def repeated_corpus(source: str, megabytes: float) -> str:
    """`source` repeated line by line until it reaches `megabytes` (cached by name)."""
    path = os.path.join(common.cache_dir(), f"{os.path.basename(source)}.{megabytes:g}MB.txt")
    if os.path.isfile(path):
        return path
    with open(source, encoding="utf-8") as f:
        lines = f.readlines()
    target, written = int(megabytes * 2**20), 0
    with open(path + ".tmp", "w", encoding="utf-8") as out:
        while written < target:
            for line in lines:
                out.write(line)
                written += len(line.encode("utf-8"))
                if written >= target:
                    break
    os.replace(path + ".tmp", path)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="sizes 5 and 10 MB; writes preprocessing_scaling_quick.json")
    p.add_argument("--sizes-mb", default=None, help="comma-separated corpus sizes in MB (default 15,30,60)")
    args = p.parse_args()
    source = common.wikitext2_file("train")
    if source is None:
        print("SKIPPED: WikiText-2 not found under $MLM_DATA_DIR/wikitext-2-raw")
        return
    sizes = [float(s) for s in (args.sizes_mb or ("5,10" if args.quick else "15,30,60")).split(",")]
    _, tokenizer_dir = common.wordpiece_tokenizer(source, VOCAB)
    rows = []
    for size in sizes:
        corpus = repeated_corpus(source, size)
        scratch = common.scratch_dir("prep-scaling-")
        try:
            common.log(f"{size:g} MB: ours and stock")
            summary, _, _ = measure_preprocessing(corpus, tokenizer_dir, SEQ_LEN, 1, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        rows.append({"corpus_mb": size, "corpus_bytes": os.path.getsize(corpus), **summary})
        common.log(f"{size:g} MB: ours {summary['ours']['seconds']:.1f}s / {summary['ours']['peak_rss_mb']:.0f} MB, "
                   f"stock {summary['stock']['seconds']:.1f}s / {summary['stock']['peak_rss_mb']:.0f} MB "
                   f"-> {summary['speedup']:.2f}x")
    ours_rss = [r["ours"]["peak_rss_mb"] for r in rows]
    largest = rows[-1]
    out = {
        "benchmark": "preprocessing_scaling",
        "command": "python " + " ".join(sys.argv),
        "machine": common.machine_info(),
        "settings": {"source": source, "tokenizer": f"WordPiece {VOCAB}", "seq_len": SEQ_LEN,
                     "stock": "datasets.Dataset.from_text -> map(tokenize, batched) -> map(group_texts) (run_mlm.py)",
                     "ours": "mlm.pretrain.packing.build_packed_dataset (streamed into a memory-mapped token array)"},
        "rows": rows,
        "ours_peak_rss_growth": round(max(ours_rss) / min(ours_rss) - 1, 4),
        "targets": {"speedup_at_largest": 3.0, "peak_rss_mb_max": 1536, "ours_peak_rss_growth_max": 0.20},
        "targets_met": {
            "speedup_at_largest": largest["speedup"] >= 3.0,
            "peak_rss_mb_max": largest["ours"]["peak_rss_mb"] <= 1536,
            "ours_peak_rss_flat": max(ours_rss) / min(ours_rss) - 1 <= 0.20,
        },
    }
    name = "preprocessing_scaling_quick.json" if args.quick else "preprocessing_scaling.json"
    common.write_json(os.path.join(common.RESULTS_DIR, name), out)
    common.log(f"ours peak RSS growth {out['ours_peak_rss_growth']:.1%} over {sizes[0]:g}-{sizes[-1]:g} MB; "
               f"targets {out['targets_met']} -> bench/results/{name}")


if __name__ == "__main__":
    main()
