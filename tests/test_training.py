"""The helpers every training loop shares: atomic state, stage markers, checkpointing progress,
SIGTERM as a stop request."""

import os
import signal
import threading
import time

import pytest
import torch

from saeuron_core.training import Progress, StopRequest, load_state, mark_stage_done, save_state, stage_done


def test_state_round_trip_and_a_failed_save_keeps_the_old_one(tmp_path):
    path = tmp_path / "run" / "state.pt"
    assert load_state(path) is None
    save_state(path, {"step": 3, "w": torch.arange(4.0), "history": [{"fvu": 0.5}]})
    state = load_state(path)
    assert state["step"] == 3 and torch.equal(state["w"], torch.arange(4.0)) and state["history"] == [{"fvu": 0.5}]
    with pytest.raises(Exception):
        save_state(path, {"step": 4, "bad": lambda: None})  # cannot be pickled: fails mid-write
    assert load_state(path)["step"] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.pt"]  # no temp file left


def test_stage_markers(tmp_path):
    assert stage_done(tmp_path, "vae") is None
    assert mark_stage_done(tmp_path, "vae", {"steps": 2}) == {"steps": 2}
    assert stage_done(tmp_path, "vae") == {"steps": 2}
    assert (tmp_path / "vae" / "done.json").is_file()


def test_progress_saves_by_step_count_and_by_wall_time():
    saved = []
    by_steps = Progress("t", 10, 0, lambda: saved.append("steps"), every_steps=3)
    ticks = [by_steps.tick(step) for step in range(1, 10)]
    by_steps.close()
    assert ticks == [False, False, True, False, False, True, False, False, True]
    saved.clear()
    by_time = Progress("t", 10, 0, lambda: saved.append("time"), minutes=0.0)  # every tick is overdue
    assert by_time.tick(1) and by_time.tick(2)
    by_time.close()
    never = Progress("t", 10, 0, lambda: saved.append("never"), minutes=60.0)
    assert not never.tick(1)
    never.close()
    assert saved == ["time", "time"]


def test_sigterm_becomes_a_stop_request_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)  # would end the process without the request
        deadline = time.time() + 5
        while not stop.requested and time.time() < deadline:
            time.sleep(0.01)
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) == before


def test_stop_request_is_inert_off_the_main_thread():
    before = signal.getsignal(signal.SIGTERM)
    seen = {}

    def work():
        with StopRequest() as stop:
            seen["requested"] = stop.requested
            seen["handler_unchanged"] = signal.getsignal(signal.SIGTERM) == before

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == {"requested": False, "handler_unchanged": True}


def test_a_loop_pauses_where_the_environment_asks_and_only_there(monkeypatch):
    # the hook the kill / resume tests drive (saeuron_core.pause): announce on stderr, then block
    import sys

    from conftest import start_paused

    from saeuron_core.pause import PAUSE_ENV

    loop = (
        "from saeuron_core.training import Progress\n"
        "p = Progress('t', 5, 0, lambda: None, every_steps=2)\n"
        "for s in range(1, 6):\n"
        "    p.tick(s)\n"
        "print('finished')"
    )
    proc, pid = start_paused([sys.executable, "-c", loop], after=3, timeout=120)
    assert pid == proc.pid and proc.poll() is None  # alive and waiting at step 3
    proc.kill()
    proc.communicate()
    monkeypatch.setenv(PAUSE_ENV, "6")  # a step the loop never reaches: it runs through
    progress = Progress("t", 5, 0, lambda: None)
    assert [progress.tick(s) for s in range(1, 6)] == [False] * 5
    progress.close()
