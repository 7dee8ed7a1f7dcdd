"""Flags derived from dataclass configs: one per field, help from the field's docstring, the config
built back (nested ones included), new fields picked up without an edit."""

import argparse
from dataclasses import dataclass, field

import pytest

from saeuron_core.cli.config_flags import add_config_flags, field_docs
from saeuron_core.cli.features import SAE_FIELDS_NOT_TRAINED
from saeuron_core.sae import SaeConfig
from saeuron_core.sae_train import TrainConfig


@dataclass(frozen=True)
class Inner:
    width: int = 4
    """How wide."""
    names: tuple[str, ...] = ()
    """Names, repeatable."""


def _bigger_inner():
    return Inner(width=9)


@dataclass
class Outer:
    inner: Inner = field(default_factory=_bigger_inner)
    """The inner config (its default differs from Inner's own)."""
    rate: float | None = None
    """A rate; None = pick one. 100% documented."""
    fast: bool = False
    """Go fast."""
    device: str = "cpu"
    """Where it runs (a field a parser may already have a flag for)."""


def parse(cls, argv, **kwargs):
    p = argparse.ArgumentParser()
    p.add_argument("--device")  # as the model options have
    flags = add_config_flags(p, cls, **kwargs)
    return flags, p.parse_args(argv), p


def test_field_docstrings_are_read():
    docs = field_docs(TrainConfig)
    assert docs["epochs"].startswith("Passes over the store")
    assert field_docs(SaeConfig)["k"].startswith("Non-zero latents per token")


def test_unset_flags_keep_the_dataclass_defaults_nested_ones_included():
    flags, args, _ = parse(Outer, [])
    assert flags.given(args) == {}
    assert flags.build(args) == Outer()
    assert flags.build(args).inner.width == 9  # the field's default factory, not Inner()


def test_flags_build_the_config_back():
    flags, args, _ = parse(Outer, ["--width", "3", "--names", "a", "--names", "b", "c", "--rate", "0.5", "--fast"])
    cfg = flags.build(args)
    assert cfg == Outer(inner=Inner(width=3, names=("a", "b", "c")), rate=0.5, fast=True)
    assert isinstance(cfg.inner.names, tuple)


def test_a_field_whose_flag_is_taken_gets_a_prefixed_one():
    # e.g. a `device` field added to a training config, on a command that has the model's --device
    flags, args, _ = parse(Outer, ["--device", "cuda", "--outer-device", "mps"])
    assert args.device == "cuda" and flags.build(args).device == "mps"


def test_help_comes_from_the_docstring_with_the_default():
    _, _, p = parse(Outer, [])
    text = " ".join(p.format_help().split())
    assert "How wide. (default: 9)" in text and "100% documented. (default: none)" in text


def test_train_config_flags_keep_todays_spellings():
    p = argparse.ArgumentParser()
    flags = add_config_flags(p, TrainConfig, exclude=SAE_FIELDS_NOT_TRAINED)
    args = p.parse_args(
        [
            "--expansion-factor",
            "8",
            "--k",
            "8",
            "--batch-size",
            "32",
            "--epochs",
            "30",
            "--lr",
            "1e-3",
            "--seed",
            "2",
            "--num-latents",
            "0",
            "--dead-feature-threshold",
            "5",
        ]
    )
    cfg = flags.build(args)
    assert cfg.sae == SaeConfig(expansion_factor=8, k=8, dead_feature_threshold=5)
    assert (cfg.batch_size, cfg.epochs, cfg.lr, cfg.seed) == (32, 30, 1e-3, 2)
    # every field but the excluded ones has a flag: a new field gets one without an edit
    options = {o for a in p._actions for o in a.option_strings}
    for name in [*TrainConfig.__dataclass_fields__, *SaeConfig.__dataclass_fields__]:
        if name not in ("sae", *SAE_FIELDS_NOT_TRAINED):
            assert f"--{name.replace('_', '-')}" in options


def test_aliases_and_prefix():
    from saeuron_core.baselines.attack import AttackConfig

    p = argparse.ArgumentParser()
    flags = add_config_flags(p, AttackConfig, prefix="attack-", aliases={"n_tokens": "--tokens"})
    assert flags.build(p.parse_args(["--tokens", "3", "--attack-steps", "7"])) == AttackConfig(steps=7, n_tokens=3)


def test_a_field_without_a_command_line_form_is_refused_when_the_parser_is_built():
    @dataclass
    class Odd:
        table: dict = field(default_factory=dict)

    with pytest.raises(TypeError, match="'table'"):
        add_config_flags(argparse.ArgumentParser(), Odd)
    add_config_flags(argparse.ArgumentParser(), Odd, exclude=("table",))


def test_a_bad_value_is_one_line_from_the_config_check(tmp_path, capsys):
    from saeuron_core.cli import main

    assert main(["--threads", "1", "train-sae", "--store", str(tmp_path), "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "saeuron train-sae: error: epochs must be >= 1, got 0"


@dataclass
class Deep:
    outer: Outer = field(default_factory=lambda: Outer(rate=0.25))
    """Two levels of nesting."""


def test_configs_nested_two_levels_build_back():
    flags, args, _ = parse(Deep, ["--width", "2", "--fast"])
    cfg = flags.build(args)
    assert cfg == Deep(outer=Outer(inner=Inner(width=2), rate=0.25, fast=True))
