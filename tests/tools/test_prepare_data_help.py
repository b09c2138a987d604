"""tools/prepare_data.py --help gives the default of every flag that has one (docs/data.md names
some of them only in its examples: --samples-per-shard 64, --steps 50, --shift 3, --seed 0)."""

import argparse

import pytest

from tests.generation.common import script


def _parser():
    """The tool's parser, caught when parse_args would run it."""
    captured = {}

    def capture(parser, args=None, namespace=None):
        captured["parser"] = parser
        raise SystemExit(0)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(SystemExit):
            script("tools/prepare_data.py").parse_args([])
    return captured["parser"]


def test_every_flag_with_a_default_says_it():
    actions = [a for a in _parser()._actions if a.option_strings and a.nargs != 0 and a.default is not None
               and a.default is not argparse.SUPPRESS]
    assert actions
    assert [a.dest for a in actions if "default: " not in (a.help or "")] == []
