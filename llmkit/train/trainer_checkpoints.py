"""A Trainer's checkpoints: the resumable checkpoint of a step (model files, the trainable tensors under a
save_model hook, training_state.pt with the optimizer and random states) written whole or not at all and
rotated; the final model files under FINAL_SAVE_MARKER; and on --resume the checks that the checkpoint is this
run's (same stage and PEFT method, unchanged starting weights, a readable training state) before it is
loaded. A mixin of llmkit.train.trainer.Trainer, whose attributes (config, out, dist, save_model, ...) it reads.
"""

from __future__ import annotations

import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from llmkit.atomic import atomic_open, atomic_write_text, fsync_dir, fsync_tree
from llmkit.checkpoint import FINAL_SAVE_MARKER, load_config, load_state_dict, save_checkpoint, weights_sha256
from llmkit.errors import CheckpointError, ConfigError, first_line
from llmkit.train import distributed as D

TRAINING_STATE = "training_state.pt"
TRAINABLE = "trainable.safetensors"  # with a save_model hook: the trainable tensors, for resume
# settings that change no tensor's shape: left out when a checkpoint does not fit the model
BUDGET_FIELDS = {"max_steps", "max_tokens", "epochs", "time_limit_s", "lr", "eval_every", "log_every", "ckpt_every",
                 "keep_checkpoints", "plot", "sample_every", "threads", "eval_tokens"}


@contextmanager
def ctrl_c_after_it():
    """Ctrl-C while a checkpoint is written takes effect once it is whole. Raised inside torch.save, the
    KeyboardInterrupt was replaced by the RuntimeError of torch's half-written zip file (a traceback and
    exit 1 instead of the one line naming the checkpoint to resume from, and the save lost). Only where
    Python's own handler is in place (main thread, SIGINT not ignored or taken over by the caller)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    pressed: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pressed:
        raise KeyboardInterrupt


class TrainerCheckpoints:
    """Checkpoint save, load and resume checks of the Trainer (see the module docstring)."""

    def starting_fingerprints(self) -> dict[str, dict]:
        """{role: {"path", "sha256"}} of the starting models' weights (hashed once)."""
        if self._fingerprints is None:
            self._fingerprints = {role: {"path": str(d), "sha256": weights_sha256(d)}
                                  for role, d in self.starting_models.items()}
        return self._fingerprints

    def _checkpoint_root(self) -> Path:
        return self.out / "checkpoints"

    def _save(self, wrapped, model, optimizers, step, tokens_seen, train_time) -> None:
        with ctrl_c_after_it():
            self._save_now(wrapped, model, optimizers, step, tokens_seen, train_time)

    def _save_now(self, wrapped, model, optimizers, step, tokens_seen, train_time) -> None:
        state = D.full_model_state(wrapped, self.config.fsdp)
        optimizer_states = [D.full_optimizer_state(wrapped, opt, self.config.fsdp) for opt in optimizers]
        if not self.dist.is_main:
            return
        root = self._checkpoint_root()
        final = root / f"step_{step:07d}"
        partial = root / f".step_{step:07d}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        self._write_model(partial, model, state, metadata={"step": step})
        if self.save_model is not None:
            trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            save_file({k: v.contiguous() for k, v in state.items() if k in trainable}, partial / TRAINABLE)
        training_state = {
            "step": step, "tokens": tokens_seen, "train_time_s": train_time, "total_steps": self.total_steps,
            "planned_steps": self.planned_steps, "batch_tokens": self.batch_tokens, "world_size": self.dist.world_size,
            "optimizers": optimizer_states, "rng": torch.get_rng_state(),
            "config": {k: v for k, v in self.config.to_dict().items() if not isinstance(v, dict)},
            "stage": self.stage, "peft": self.peft, "starting_models": self.starting_fingerprints(),
        }
        with atomic_open(partial / TRAINING_STATE) as f:
            torch.save(training_state, f)
        fsync_tree(partial)
        shutil.rmtree(final, ignore_errors=True)
        partial.replace(final)  # a checkpoint directory exists whole or not at all
        atomic_write_text(root / "latest", final.name + "\n")
        fsync_dir(root)  # both renames on disk before older checkpoints are deleted
        older = sorted((p for p in root.glob("step_*") if p.is_dir() and p != final and _checkpoint_step(p) >= 0),
                       key=_checkpoint_step)
        for old in older[: max(len(older) + 1 - self.config.keep_checkpoints, 0)]:
            shutil.rmtree(old, ignore_errors=True)

    def _check_checkpoint_folder(self, resume: bool) -> None:
        """A fresh run must not write among an earlier run's checkpoints (rotation would delete one run's
        with the other's); leftovers of a save cut short (.partial) are removed."""
        root = self._checkpoint_root()
        if self.dist.is_main:
            for leftover in root.glob(".step_*.partial"):
                shutil.rmtree(leftover, ignore_errors=True)
        if not resume and (root / "latest").exists():
            earlier = (root / "latest").read_text().strip()
            raise ConfigError(f"{root}: holds checkpoint {earlier} of an earlier run; pass --resume to continue "
                              f"it, or remove {root} (or choose another --out) to start afresh")

    def _latest_checkpoint(self) -> Path:
        root = self._checkpoint_root()
        pointer = root / "latest"
        if not pointer.exists():
            raise CheckpointError(f"{pointer}: missing; there is no checkpoint to resume in {self.out} "
                                  "(run without --resume to start afresh)")
        name = pointer.read_text(errors="replace").strip()
        directory = root / name
        if not name.startswith("step_") or "/" in name or not directory.is_dir():
            raise CheckpointError(f"{pointer}: names {name!r}, which is not a checkpoint folder in {root}; point it "
                                  "at one of the step_* folders there, or run without --resume to start afresh")
        return directory

    def _check_same_run(self, directory: Path, training: dict) -> None:
        """A checkpoint is resumed by the stage and PEFT method that wrote it, from the same starting
        weights; older checkpoints, which did not record these, are taken on trust."""
        stage, peft = training.get("stage"), training.get("peft")
        if stage is not None and (stage != self.stage or peft != self.peft):
            how = f"`llmkit {stage}`" + (f" with peft={peft}" if peft != "none" else "")
            now = f"`llmkit {self.stage}`" + (f" with peft={self.peft}" if self.peft != "none" else "")
            raise CheckpointError(f"{directory}: was written by {how}, not {now}; resume it with {how}, "
                                  "or choose another --out")
        saved = training.get("starting_models")
        if not isinstance(saved, dict):
            return
        now = self.starting_fingerprints()
        for role, before in saved.items():
            if role not in now:
                continue
            after = now[role]
            if before.get("sha256") != after["sha256"]:
                what = {"teacher": "the teacher", "reward_model": "the reward model"}.get(role, "the starting model")
                if before.get("path") == after["path"]:
                    where = (f"{what} at {after['path']} changed since this run began (sha256 "
                             f"{str(before.get('sha256'))[:12]}... then, {after['sha256'][:12]}... now)")
                else:
                    where = (f"this run began from {what} {before.get('path')} (sha256 {str(before.get('sha256'))[:12]}...), "
                             f"not {after['path']} (sha256 {after['sha256'][:12]}...)")
                raise CheckpointError(f"{directory}: {where}; resume with the original {role} weights, or start "
                                      "a new --out")
            after["path"] = before.get("path", after["path"])  # the same weights: the run began from there

    def _load_latest(self, wrapped, optimizers) -> tuple[int, int, float]:
        directory, training = self._resume_state  # read and checked by prepare_output
        now = self.config.to_dict()
        self.config_changes = [(k, v, now[k]) for k, v in training.get("config", {}).items() if k in now and now[k] != v]
        if self.save_model is not None:  # frozen weights come from the model as constructed
            state = load_state_dict(directory / TRAINABLE)
        elif load_config(directory) != self.model.config:
            raise CheckpointError(f"{directory}: the checkpoint's model config differs from this run's; resume with "
                                  "the same preset and overrides")
        else:
            state = load_state_dict(directory / "model.safetensors")
        if self.model.config.tie_embeddings and "tok_emb.weight" in state:
            state["lm_head.weight"] = state["tok_emb.weight"]
        try:
            D.load_full_state(wrapped, optimizers, state, training["optimizers"], self.config.fsdp)
            torch.set_rng_state(training["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:  # shapes or keys of another model/optimizer
            changed = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in self.config_changes
                                if k not in BUDGET_FIELDS)  # (a longer run or a new lr changes no tensor)
            if changed:  # e.g. lora_rank: say which setting, not only which tensor
                raise CheckpointError(f"{directory}: does not fit this run's model and optimizer; settings changed "
                                      f"since the checkpoint: {changed}; resume with the checkpoint's settings, or "
                                      "start afresh") from None
            raise CheckpointError(f"{directory}: does not fit this run's model and optimizer ({first_line(e)}); "
                                  "resume with the same preset and overrides, or start afresh") from None
        saved_tokens = training.get("batch_tokens", self.batch_tokens)  # (older checkpoints did not record it)
        if saved_tokens != self.batch_tokens and not {"batch_tokens", "micro_batch", "seq_len"} & {
                k for k, _, _ in self.config_changes}:  # no field changed it: another number of processes did
            self.step_size_change = (saved_tokens, training.get("world_size", 1))
        saved_budget = training.get("planned_steps", self.planned_steps)
        if saved_budget == self.planned_steps:  # the same budget: the saved (possibly time-fitted) plan
            self.total_steps = training.get("total_steps", self.total_steps)
        else:  # a new step or token budget given on resume: the schedule follows it from here
            self.budget_change = (saved_budget, self.planned_steps)
        return training["step"], training["tokens"], training["train_time_s"]

    def _save_final(self, wrapped, model) -> None:
        """The final model files, one at a time, under a marker that loaders refuse (llmkit.checkpoint): a
        kill part-way leaves a folder that says so, never one step's backbone beside another's head; the
        last checkpoint holds the same weights, and --resume writes them again from it."""
        state = D.full_model_state(wrapped, self.config.fsdp)
        if self.dist.is_main:
            marker = self.out / FINAL_SAVE_MARKER
            atomic_write_text(marker, f"the final save of `llmkit {self.stage}` was cut short and its files may "
                                      f"mix two steps; run `llmkit {self.stage} --out {self.out} --resume` with the "
                                      "run's settings to write them again\n")
            fsync_dir(self.out)
            self._write_model(self.out, model, state)
            marker.unlink()
            fsync_dir(self.out)

    def _write_model(self, directory: Path, model, state: dict, metadata: dict | None = None) -> None:
        if self.save_model is not None:
            self.save_model(directory, state)
        else:
            save_checkpoint(directory, model, self.tokenizer, state=state, metadata=metadata)


TRAINING_STATE_KEYS = {"step": int, "tokens": int, "train_time_s": (int, float), "optimizers": list,
                       "rng": torch.Tensor}


def read_training_state(path: Path) -> dict:
    """A checkpoint's training_state.pt (tensors and plain containers only: weights_only), its keys checked."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete: resume from an earlier one (edit "
                              f"{path.parent.parent / 'latest'}) or start afresh")
    try:
        training = torch.load(path, weights_only=True)
    except Exception as e:  # truncated or garbage: EOFError, RuntimeError, UnpicklingError, ...
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                              "the file is truncated or corrupt: resume from an earlier checkpoint or start afresh") from None
    wrong = [k for k, kind in TRAINING_STATE_KEYS.items() if not isinstance(training, dict)
             or not isinstance(training.get(k), kind)
             or (kind in (int, (int, float)) and not training[k] >= 0)]  # a step of -5: not ours either
    if wrong:
        raise CheckpointError(f"{path}: not a training state written by llmkit (missing or wrong {', '.join(wrong)}); "
                              "resume from an earlier checkpoint or start afresh")
    return training


def _checkpoint_step(path: Path) -> int:
    try:
        return int(path.name.removeprefix("step_"))
    except ValueError:
        return -1  # not a checkpoint of ours: left alone
