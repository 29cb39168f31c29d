#!/usr/bin/env bash
# Asks a chat model each question of data/finetune/facts-questions.tsv (none of them in
# facts.jsonl: paraphrases of its facts), greedy, and counts the answers that contain the
# expected word. Prints one line per question, then the count.
#
#   tools/ask_facts.sh MODEL [largo chat options, e.g. --adapter runs/facts]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
largo=${LARGO:-$here/target/release/largo}
model=$1
shift
right=0
total=0
while IFS=$'\t' read -r question expected; do
  answer=$("$largo" chat --model "$model" "$@" --message "$question" --temperature 0 --max-tokens 40 2>/dev/null | tr '\n' ' ')
  total=$((total + 1))
  if grep -qi -- "$expected" <<<"$answer"; then
    right=$((right + 1))
    mark=right
  else
    mark=wrong
  fi
  printf '%s\t%s\t%s\n' "$mark" "$question" "$answer"
done <"$here/data/finetune/facts-questions.tsv"
echo "$right of $total answered right"
