"""Atomic writes give files the permissions a plain open() would, without touching the umask."""

import os
import stat
import threading

from saeuron_core import io
from saeuron_core.io import atomic_dir, write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_umask_is_read_correctly():
    current = os.umask(0o022)  # single-threaded here: safe to look
    os.umask(current)
    assert io.UMASK == current


def test_atomic_writes_never_set_the_umask(tmp_path, monkeypatch):
    def forbidden(mask):
        raise AssertionError("os.umask called: process-wide, racy in a threaded app")

    monkeypatch.setattr(os, "umask", forbidden)
    write_json(tmp_path / "a.json", {"x": 1})
    io.save_safetensors(
        {"t": __import__("torch").zeros(2)}, tmp_path / "t.safetensors"
    )  # safetensors recreates its file
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "inner.txt").write_text("x")
    assert _mode(tmp_path / "a.json") == 0o666 & ~io.UMASK
    assert _mode(tmp_path / "t.safetensors") == 0o666 & ~io.UMASK
    assert _mode(tmp_path / "folder") == 0o777 & ~io.UMASK


def test_a_file_another_thread_creates_during_an_atomic_write_keeps_the_umask(tmp_path, monkeypatch):
    """The race, made deterministic: should an atomic write ever set the umask to 0, it pauses
    right there while the main thread creates a file; that file must still get normal permissions."""
    real_umask = os.umask
    at_zero, created = threading.Event(), threading.Event()

    def umask_pausing_at_zero(mask):
        old = real_umask(mask)
        if mask == 0 and not at_zero.is_set():
            at_zero.set()
            created.wait(timeout=10)
        return old

    monkeypatch.setattr(os, "umask", umask_pausing_at_zero)

    def writer():
        write_json(tmp_path / "w.json", {"x": 1})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")

    thread = threading.Thread(target=writer)
    thread.start()
    while thread.is_alive() and not at_zero.is_set():
        at_zero.wait(0.01)
    (tmp_path / "plain.txt").write_text("x")  # meanwhile, in the main thread
    created.set()
    thread.join()
    assert _mode(tmp_path / "plain.txt") == 0o666 & ~io.UMASK
    assert _mode(tmp_path / "w.json") == 0o666 & ~io.UMASK


def test_claim_is_exclusive_while_its_owner_lives_and_taken_over_after(tmp_path):
    import os
    import subprocess

    from saeuron_core.io import claim

    path = tmp_path / "set.claim"
    with claim(path) as mine:
        assert mine and path.read_text() == str(os.getpid())
    assert not path.exists()  # released
    path.write_text(str(os.getppid()))  # a live process holds it
    with claim(path) as mine:
        assert not mine
    assert path.read_text() == str(os.getppid())  # not ours to release
    dead = subprocess.Popen(["true"])
    dead.wait()
    path.write_text(str(dead.pid))  # its owner is gone
    with claim(path) as mine:
        assert mine
    assert not path.exists()
