"""Preference learning on Anthropic HH-RLHF (harmless-base) with SmolLM2-135M-Instruct + LoRA.

Data: ../shared/data/hh-rlhf/harmless-base-test-2000.jsonl.gz; records 0-1599 train, 1600-1999 test.
1. Reward model (`llmkit reward --preset reward-smollm2-lora`): pairwise accuracy on the 400 test pairs
   with a Wilson 95% interval.
2. DPO (`llmkit dpo --preset dpo-smollm2-lora`) on the same 1,600 training pairs.
3. Win rate: the starting model and the DPO model answer the held-out prompts (greedy, through the
   engine); the reward model scores both replies; DPO wins where its reply scores higher (ties half).

    python benchmarks/hh_rlhf.py --reward-dir runs/hh-reward --dpo-dir runs/hh-dpo [--train] [--prompts 400]
    python benchmarks/hh_rlhf.py --reward-dir runs/hh-reward --train        # the reward model only

With --train the runs are made first (2-core CPU: ~16 min each; a finished reward model is kept);
without, existing run directories are evaluated. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-2000.jsonl.gz"
TRAIN, TEST = [0, 1600], [1600, 2000]


def train(reward_dir: Path, dpo_dir: Path | None) -> None:
    from llmkit.train.dpo import run_dpo
    from llmkit.train.post_config import DPOConfig, RewardConfig
    from llmkit.train.reward import run_reward

    common = [f"data={HH}", f"data_records={TRAIN}", f"val_data={HH}", f"val_records={TEST}"]
    if not (reward_dir / "reward_head.safetensors").exists():  # a finished reward model is kept
        run_reward(RewardConfig.preset("reward-smollm2-lora", common), reward_dir)
    if dpo_dir is not None:
        run_dpo(DPOConfig.preset("dpo-smollm2-lora", common), dpo_dir)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reward-dir", type=Path, required=True)
    parser.add_argument("--dpo-dir", type=Path, default=None, help="without it: the reward model only")
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--prompts", type=int, default=400, help="held-out prompts for the win rate")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=320, help="reward model context (as in training)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.train:
        train(args.reward_dir, args.dpo_dir)

    import llmkit
    from llmkit.infer import SamplingParams
    from llmkit.train.chat_data import encode_pair, load_records
    from llmkit.train.post_common import reply_text
    from llmkit.train.reward import load_reward_model, pair_rewards, pairwise_accuracy, score

    reward_model, tokenizer = load_reward_model(args.reward_dir)
    test = load_records(HH, "preference", TEST)
    t0 = time.perf_counter()
    pairs = [encode_pair(tokenizer, r, args.max_len) for r in test]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    rewards = pair_rewards(reward_model, pairs, args.max_len, tokenizer.pad_id or 0, 16, torch.device("cpu"), autocast)
    rm = pairwise_accuracy(rewards)  # the Trainer's held-out figure: ties count half
    rm_acc, rm_low, rm_high = rm["accuracy"], rm["ci95_low"], rm["ci95_high"]
    rm_seconds = time.perf_counter() - t0
    print(f"reward model accuracy on {len(test)} held-out pairs: {rm_acc:.3f} (95% CI {rm_low:.3f}-{rm_high:.3f}), "
          f"{rm_seconds:.0f} s", flush=True)
    rm_figures = {"rm_accuracy": round(rm_acc, 4), "rm_ci95_low": round(rm_low, 4), "rm_ci95_high": round(rm_high, 4),
                  "rm_pairs": len(test)}
    if args.dpo_dir is None:
        print(json.dumps(rm_figures))
        return

    prompts = [r.prompt for r in test[:args.prompts]]
    replies = {}
    for name, source in (("start", "smollm2"), ("dpo", args.dpo_dir)):
        llm = llmkit.load(source)
        ids = [llm.tokenizer.encode(llm.tokenizer.apply_chat_template(p)) for p in prompts]
        t0 = time.perf_counter()
        done = llm.engine.generate_batch(ids, SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0))
        replies[name] = [reply_text(llm.tokenizer, c.token_ids) for c in done]
        print(f"{name}: {len(ids)} replies in {time.perf_counter() - t0:.0f} s", flush=True)
    scores = {name: score(reward_model, tokenizer, prompts, texts, max_len=args.max_len, autocast=autocast)
              for name, texts in replies.items()}
    win = pairwise_accuracy(torch.tensor([scores["dpo"], scores["start"]]).T)  # DPO's reply as "chosen"
    n, win_rate, low, high = len(prompts), win["accuracy"], win["ci95_low"], win["ci95_high"]
    lengths = {name: sum(len(tokenizer.encode(t)) for t in texts) / n for name, texts in replies.items()}
    identical = sum(a == b for a, b in zip(replies["dpo"], replies["start"]))
    examples = [{"prompt": prompts[i][-1]["content"], "start": replies["start"][i], "dpo": replies["dpo"][i],
                 "start_reward": round(scores["start"][i], 3), "dpo_reward": round(scores["dpo"][i], 3)}
                for i in range(3)]
    (args.dpo_dir / "winrate_examples.json").write_text(json.dumps(examples, indent=2))
    print(f"DPO vs starting model on {n} held-out prompts: win rate {win_rate:.3f} (95% CI {low:.3f}-{high:.3f}); "
          f"mean reward {sum(scores['dpo']) / n:.3f} vs {sum(scores['start']) / n:.3f}; mean reply "
          f"{lengths['dpo']:.1f} vs {lengths['start']:.1f} tokens; {identical} identical replies")
    print(json.dumps({**rm_figures, "dpo_win_rate": round(win_rate, 4), "dpo_win_ci95_low": round(low, 4),
                      "dpo_win_ci95_high": round(high, 4), "winrate_prompts": n,
                      "dpo_mean_reward": round(sum(scores["dpo"]) / n, 4),
                      "start_mean_reward": round(sum(scores["start"]) / n, 4),
                      "dpo_reply_tokens": round(lengths["dpo"], 1), "start_reply_tokens": round(lengths["start"], 1)}))


if __name__ == "__main__":
    main()
