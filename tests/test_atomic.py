"""Replacing an SAE folder (``saes.atomic.atomic_directory`` via ``save_sae``): a crash at any step
of the swap leaves ``saes.load(<run folder>)`` returning the old SAE or the new one, whole.

The crash is injected by fault injection only: every filesystem primitive the swap uses
(``os.replace``/``os.rename``, the atomic exchange, ``shutil.rmtree``, ``os.fsync``) is counted,
and from step ``i`` on each of them raises, as in a process that died there (so no cleanup runs
either). Both swap paths are covered: the exchange, and the renames used where it is missing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import saes
from saes import atomic
from saes.errors import ConfigError
from saes.resolve import find_sae_dir
from saes.sae import build
from saes.sae.base import SAE
from saes.sae.formats import save_sae

HAS_EXCHANGE = atomic._renameat2 is not None


class Crash(BaseException):
    """The process died here (a BaseException: no ``except OSError`` can swallow it)."""


class Faults:
    """Counts the swap's primitives; from call ``crash_at`` on, each raises :class:`Crash`.
    ``partial``: the crashing ``rmtree`` first deletes one file, as a delete cut short does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, exchange: bool) -> None:
        self.crash_at: int | None = None
        self.partial = False
        self.calls: list[str] = []
        real_exchange = atomic.exchange if exchange else (lambda a, b: False)
        for owner, name, real in ((os, "replace", os.replace), (os, "rename", os.rename), (os, "fsync", os.fsync),
                                  (shutil, "rmtree", shutil.rmtree), (atomic, "exchange", real_exchange)):
            monkeypatch.setattr(owner, name, self._wrap(name, real))

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def primitive(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if self.crash_at is not None and len(self.calls) > self.crash_at:
                if name == "rmtree" and self.partial and len(self.calls) == self.crash_at + 1:
                    victim = next((p for p in Path(args[0]).rglob("*") if p.is_file()), None)
                    if victim is not None:
                        victim.unlink()
                raise Crash(f"{name} at step {self.crash_at}")
            return real(*args, **kwargs)
        return primitive

    def arm(self, crash_at: int | None, partial: bool = False) -> None:
        self.calls, self.crash_at, self.partial = [], crash_at, partial


def _sae(seed: int) -> SAE:
    sae = build({"architecture": "jumprelu", "d_sae": 24}, d_in=8)
    sae.initialize(generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.threshold_F.uniform_(0.0, 0.1, generator=torch.Generator().manual_seed(seed))
    return sae


def _same(a: SAE, b: SAE) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return a.config_dict() == b.config_dict() and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _which(run: Path, candidates: dict[str, SAE]) -> str:
    """Which candidate ``saes.load(run)`` returns ('missing' if no SAE is found); fails if it is none
    of them (a half-written or mixed folder)."""
    try:
        loaded = saes.load(run)
    except ConfigError:  # CheckpointError included
        return "missing"
    found = [name for name, sae in candidates.items() if _same(loaded, sae)]
    assert found, f"{run}: the loaded SAE is none of {sorted(candidates)}: {sorted(p.name for p in run.iterdir())}"
    return found[0]


def _save(faults: Faults, sae: SAE, run: Path, crash_at: int | None, partial: bool = False) -> bool:
    """``save_sae`` with a crash at step ``crash_at``; True if it crashed."""
    faults.arm(crash_at, partial)
    try:
        save_sae(sae, run / "sae", {"seed": 1})
    except Crash:
        return True
    finally:
        faults.crash_at = None  # alive again; ``faults.calls`` keeps this save's steps
    return False


@pytest.fixture(params=[pytest.param(True, id="exchange"), pytest.param(False, id="renames")])
def faults(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Faults:
    if request.param and not HAS_EXCHANGE:
        pytest.skip("no renameat2 on this platform")
    return Faults(monkeypatch, exchange=request.param)


@pytest.mark.parametrize("partial", [False, True], ids=["whole", "partial-rmtree"])
def test_a_crash_at_any_step_leaves_the_old_or_the_new_sae(tmp_path: Path, faults: Faults, partial: bool) -> None:
    old, new, later = _sae(1), _sae(2), _sae(3)
    seen: list[str] = []
    step = 0
    while True:
        run = tmp_path / str(step)
        assert not _save(faults, old, run, None)
        crashed = _save(faults, new, run, step, partial)
        state = _which(run, {"old": old, "new": new})
        assert state != "missing", f"no SAE after a crash at step {step} of {faults.calls}"
        seen.append(state)
        assert not _save(faults, later, run, None)  # the next save repairs what the crash left
        assert _which(run, {"later": later}) == "later"
        assert not (run / ".sae.new").exists() and not (run / ".sae.old").exists()
        if not crashed:
            break
        step += 1
    assert step >= 5, f"only {step} primitive calls to crash in"
    assert seen[0] == "old" and seen[-1] == "new"
    assert "old" not in seen[seen.index("new"):], f"went back to the old SAE after a later crash: {seen}"


def test_a_crash_while_writing_leaves_the_old_sae(tmp_path: Path, faults: Faults,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import saes.sae.formats as formats

    real = formats.save_file

    def dies_after_writing(tensors: dict[str, torch.Tensor], path: str) -> None:
        real(tensors, path)
        faults.arm(0)  # dead: every later primitive (the cleanup too) raises
        raise Crash("after the weights, before cfg.json")

    old = _sae(1)
    save_sae(old, tmp_path / "sae", {})
    monkeypatch.setattr(formats, "save_file", dies_after_writing)
    with pytest.raises(Crash):
        save_sae(_sae(2), tmp_path / "sae", {})
    faults.arm(None)
    assert _which(tmp_path, {"old": old}) == "old"


def test_a_crash_in_the_first_save_leaves_nothing_or_the_sae(tmp_path: Path, faults: Faults) -> None:
    new = _sae(2)
    step, states = 0, []
    while _save(faults, new, tmp_path / str(step), step):
        states.append(_which(tmp_path / str(step), {"new": new}))
        step += 1
    states.append(_which(tmp_path / str(step), {"new": new}))
    assert states[0] == "missing" and states[-1] == "new"


def test_two_crashes_in_a_row_still_leave_a_complete_sae(tmp_path: Path, faults: Faults) -> None:
    """A crash, then a crash in the save that repairs it: the SAE loaded is the one loaded before
    the second save or the second save's."""
    a, b, c = _sae(1), _sae(2), _sae(3)
    i = 0
    while True:
        j = 0
        while True:
            run = tmp_path / f"{i}-{j}"
            save_sae(a, run / "sae", {"seed": 1})
            first = _save(faults, b, run, i)
            before = _which(run, {"a": a, "b": b})
            second = _save(faults, c, run, j)
            assert _which(run, {before: {"a": a, "b": b}[before], "c": c}) in (before, "c")
            if not second:
                break
            j += 1
        if not first:
            break
        i += 1


def test_the_loader_reads_a_stand_in_when_sae_is_missing(tmp_path: Path) -> None:
    """What an interrupted rename swap (or the pre-fix save) leaves: no ``sae/``, only its stand-in."""
    old, new = _sae(1), _sae(2)
    save_sae(old, tmp_path / ".sae.old", {})
    assert _same(saes.load(tmp_path), old) and _same(saes.load(tmp_path / "sae"), old)
    save_sae(new, tmp_path / ".sae.new", {})
    assert _same(saes.load(tmp_path), new), ".sae.new is the newer complete folder"
    assert find_sae_dir(tmp_path) == tmp_path / ".sae.new"
    assert atomic.stands_in_for(tmp_path / ".sae.new") == "sae" and atomic.stands_in_for(tmp_path / "sae") == "sae"
    save_sae(_sae(3), tmp_path / "sae", {})
    assert _same(saes.load(tmp_path), _sae(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


@pytest.mark.skipif(not HAS_EXCHANGE, reason="no renameat2 on this platform")
def test_exchange_swaps_two_folders(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    assert atomic.exchange(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b" / "x").read_text() == "a" and not any((tmp_path / "a").iterdir())
    with pytest.raises(FileNotFoundError):
        atomic.exchange(tmp_path / "a", tmp_path / "nothing")
