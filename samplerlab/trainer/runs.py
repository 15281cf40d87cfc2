"""One run per folder: a run folder is never shared (a lock keeps a second writer out), a rerun
into a used folder is refused unless ``overwrite=true``, the wall-clock cap is per invocation
(resuming trains on), and what was trained (steps trained vs planned, the cap) is recorded for
the console and the report.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from ..errors import ConfigError
from .config import parse_max_time

LOCK_NAME = ".samplerlab.lock"
CHECKPOINT_KEY = "samplerlab_training"  # the training summary inside each checkpoint
# What marks a folder as holding a run: written by every ``samplerlab train``.
RUN_MARKERS = ("config.yaml", "checkpoints", "report.json", "report.md")


# --- threads --------------------------------------------------------------------------------


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def choose_threads(requested: int | None) -> tuple[int, str]:
    """The torch intra-op thread count and where it comes from.

    ``trainer.num_threads`` wins; then ``OMP_NUM_THREADS``; else ``min(4, cpus // 2)`` (at least
    1): on a shared or busy machine, threads that wait for a descheduled sibling at every
    operation make small models several times slower than one thread (measured in
    ``benchmarks/bench_threads.py``), and these models gain little from more than a few.
    """
    if requested is not None:
        return int(requested), "trainer.num_threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env), "OMP_NUM_THREADS"
    cpus = usable_cpus()
    return max(1, min(4, cpus // 2)), f"min(4, half of the {cpus} usable CPUs)"


def set_threads(requested: int | None) -> tuple[int, str]:
    n, why = choose_threads(requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n, why


# --- the run folder -------------------------------------------------------------------------


def is_rank_zero() -> bool:
    """Rank zero of a launch, known from the environment before any trainer exists."""
    return rank_zero_only.rank == 0


def _inside(path: str | Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


class RunLock:
    """An exclusive ``flock`` on ``<out_dir>/.samplerlab.lock`` for the life of a run.

    The kernel drops the lock when the process dies: a killed run never leaves a stale lock.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no lock, the rest still applies
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                f"out_dir: {self.path.parent} is in use by another samplerlab run ({holder}); "
                f"wait for it, or choose another name=... (lock: {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (harmless)
            self._fd = None


def claim_run_dir(cfg: DictConfig) -> RunLock | None:
    """Take ``out_dir`` for this run (rank zero only), or refuse in one line.

    A folder that holds an earlier run is refused unless this run resumes a checkpoint of
    that folder (``ckpt_path`` inside it: the run goes on) or ``overwrite=true`` (the earlier
    run's files are removed first, so nothing of it is mixed into this one).
    """
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir: {out} is a file, not a folder")
    if not is_rank_zero():
        return None
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"out_dir: cannot write to {out} ({e.strerror or e})") from None
    lock = RunLock(out)
    lock.acquire()
    try:
        used = [m for m in RUN_MARKERS if (out / m).exists()]
        resumes_here = cfg.ckpt_path is not None and _inside(cfg.ckpt_path, out)
        if used and not resumes_here:
            if not cfg.overwrite:
                last = out / "checkpoints" / "last.ckpt"
                resume = f"resume it with ckpt_path={last}, " if last.is_file() else ""
                raise ConfigError(
                    f"out_dir: {out} already holds a run ({used[0]}); choose another name=..., "
                    f"{resume}or pass overwrite=true to replace it"
                )
            for child in out.iterdir():
                if child.name == LOCK_NAME:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    except BaseException:
        lock.release()
        raise
    return lock


@contextlib.contextmanager
def run_dir(cfg: DictConfig) -> Iterator[None]:
    lock = claim_run_dir(cfg)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


# --- the wall-clock cap and what was trained ------------------------------------------------


class SessionTimer(Timer):
    """Lightning's ``Timer`` whose budget is per invocation: a resumed run gets the whole
    ``trainer.max_time`` again instead of stopping at once because the checkpoint's clock had
    already run out (Lightning's own Timer restores the elapsed time)."""

    @property
    def state_key(self) -> str:
        return "Timer"  # the key Lightning's Timer saves under: old checkpoints load silently

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = 0


def make_timer(max_time: str | None) -> SessionTimer | None:
    seconds = parse_max_time(max_time)
    if seconds is None:
        return None
    return SessionTimer(duration={"seconds": seconds}, interval="step", verbose=False)


class TrainingSummary(Callback):
    """Records steps trained vs planned and whether the wall-clock cap cut training.

    At the end of training (before the sampler evaluation, which reads
    ``pl_module.training_summary`` into its report) a cut is announced on the console.
    """

    def __init__(self, cfg: DictConfig, timer: SessionTimer | None, checkpoint: Path | None):
        super().__init__()
        self.cfg = cfg
        self.timer = timer
        self.checkpoint = checkpoint
        self.start_step = 0
        self.planned: int | None = None
        self._t0 = 0.0
        self.summary: dict[str, Any] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_step = trainer.global_step
        self._t0 = time.perf_counter()
        est = trainer.estimated_stepping_batches
        self.planned = int(est) if est != float("inf") else None

    def _cut(self, steps: int) -> bool:
        remaining = self.timer.time_remaining() if self.timer is not None else None
        short = self.planned is None or steps < self.planned
        return remaining is not None and remaining <= 0 and short

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # What this checkpoint's training was (``samplerlab evaluate`` reports it).
        steps = int(trainer.global_step)
        checkpoint[CHECKPOINT_KEY] = {
            "steps": steps,
            "planned_steps": self.planned,
            "max_time": self.cfg.trainer.max_time,
            "cut_by_max_time": self._cut(steps),
        }

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t = self.cfg.trainer
        steps = int(trainer.global_step)
        cut = self._cut(steps)
        summary = {
            "steps": steps,
            "planned_steps": self.planned,
            "epochs": int(trainer.current_epoch),
            "max_epochs": int(t.max_epochs),
            "max_steps": int(t.max_steps),
            "max_time": t.max_time,
            "cut_by_max_time": bool(cut),
            "steps_this_session": steps - self.start_step,
            "seconds": round(time.perf_counter() - self._t0, 1),
            "resumed_from": self.cfg.ckpt_path,
            "checkpoint": str(self.checkpoint) if self.checkpoint is not None else None,
            "threads": torch.get_num_threads(),
        }
        summary["line"] = summary_line(summary)
        self.summary = summary
        pl_module.training_summary = summary
        if cut:
            bar = "!" * 78
            rank_zero_only(print)(f"{bar}\nsamplerlab train: WARNING: {summary['line']}\n{bar}")


def summary_line(s: dict[str, Any]) -> str:
    planned = s.get("planned_steps")
    of = f" of {planned} planned" if planned is not None else ""
    if s.get("cut_by_max_time"):
        ckpt = s.get("checkpoint")
        resume = f" (resume with ckpt_path={ckpt} to train on)" if ckpt else ""
        return (
            f"training was CUT by trainer.max_time={s['max_time']}: {s['steps']}{of} steps; "
            f"results are of an under-trained model{resume}"
        )
    took = f" in {s['seconds']:.0f} s" if s.get("seconds") is not None else ""
    return f"Training: {s['steps']}{of} steps{took}"
