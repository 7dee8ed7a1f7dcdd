"""`saeuron` commands come from the library and from the ``saeuron.commands`` entry points."""

from importlib.metadata import EntryPoint

import pytest

from saeuron_core.cli import build_parser, main, registry


def commands(parser) -> dict:
    """Command name -> its parser (argparse keeps the subparsers action among the parser's actions)."""
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices


def test_installed_entry_points_add_the_benchmark_and_baseline_commands():
    found = commands(build_parser())
    assert {"generate", "cache", "train-sae", "stats", "unlearn", "prepare", "locate"} <= set(found)
    assert {"erase", "build-model", "tune", "evaluate", "attack"} <= set(found), "reinstall: pip install -e ."
    # the benchmark extends library commands with its own options
    assert "--judge" in found["locate"].format_help() and "--object" in found["generate"].format_help()


def hello_register(sub):
    p = sub.add_parser("hello", help="a third party's command")
    p.add_argument("--name", default="world")
    p.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)
    registry.extend(sub, "generate").add_argument("--hello-flag", action="store_true")


def test_a_third_party_registers_a_command_and_extends_one(monkeypatch, capsys):
    ep = EntryPoint("hello", f"{__name__}:hello_register", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "registered", lambda: [ep])
    assert main(["--threads", "1", "hello", "--name", "you"]) == 0
    assert capsys.readouterr().out == "hello you\n"
    assert "--hello-flag" in commands(build_parser())["generate"].format_help()


def test_without_entry_points_only_the_library_commands_remain_and_help_says_why(monkeypatch):
    monkeypatch.setattr(registry, "registered", lambda: [])
    parser = build_parser()
    assert "evaluate" not in commands(parser)
    assert "pip install -e ." in parser.format_help()


def test_extending_a_missing_command_names_it():
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    with pytest.raises(LookupError, match="no `saeuron nope` command"):
        registry.extend(sub, "nope")


def test_the_default_thread_count_follows_omp_num_threads(monkeypatch):
    """Several processes on a shared machine say their share in OMP_NUM_THREADS; the CLI's own
    default (min(4, cores)) must not override it."""
    import os

    from saeuron_core.cli.options import default_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() == max(1, min(4, os.cpu_count() or 1))
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert default_threads() == max(1, min(4, os.cpu_count() or 1))
