"""`anomalib train --model.help <Model>` / `--data.help <DataModule>` describe every argument.

The help is rendered in-process with the parser anomalib's CLI builds (``add_subclass_arguments`` on
``AnomalibModule`` / ``AnomalibDataModule``), then read back the way a user reads it: one entry per option, its
description before jsonargparse's ``(type: ..., default: ...)``.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re

import docstring_parser
import pytest
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.models.components import AnomalibModule
from jsonargparse import ArgumentParser

from anomalib_multiclass import data, models
from anomalib_multiclass.models.lgc.torch_model import LGCModel
from anomalib_multiclass.models.mint_ad.torch_model import MintADModel
from anomalib_multiclass.models.omni_ad.torch_model import OmniADModel
from anomalib_multiclass.models.rlr.torch_model import RLRModel
from anomalib_multiclass.models.uniad.torch_model import UniADModel

MODELS = ["UniAD", "MintAD", "RLR", "OmniAD", "LGC"]
DATAMODULES = [
    "MultiClassMVTecAD",
    "MultiClassVisA",
    "MultiClassRealIAD",
    "MultiClassBTAD",
    "MultiClassFolder",
    "MixedMultiClassDataModule",
]
TORCH_MODELS = [UniADModel, MintADModel, RLRModel, OmniADModel, LGCModel]

_OPTION = re.compile(r"^  (--\S+)")


def render_help(base: type, key: str, name: str) -> str:
    """What ``anomalib train --<key>.help <name>`` prints (the CLI's parser, run in-process)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, key, fail_untyped=False, required=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser.parse_args([f"--{key}.help", name])
    return out.getvalue()


def described_options(text: str, key: str) -> dict[str, str]:
    """``{argument: description}`` for every ``--<key>.<argument>`` entry of an argparse help text."""
    entries: list[list[str]] = []
    for line in text.splitlines():
        if _OPTION.match(line):
            entries.append([line])
        elif entries and line.startswith("   "):
            entries[-1].append(line)
        elif entries and line.strip():
            entries.append([])  # a section title or usage text ends the entry
    options: dict[str, str] = {}
    for entry in filter(None, entries):
        first, *rest = entry
        invocation, _, help_start = first.strip().partition("  ")  # argparse puts 2+ spaces before the help
        name = invocation.split()[0].split(",")[0]
        if not name.startswith(f"--{key}.") or name.endswith(".help"):
            continue  # `--model.pre_processor.help CLASS` etc. only list subclasses
        body = " ".join([help_start, *(line.strip() for line in rest)]).strip()
        options[name.removeprefix(f"--{key}.")] = body.split("(type:", 1)[0].split("(required, type:", 1)[0].strip()
    return options


def own_parameters(cls: type) -> list[str]:
    """The constructor's named parameters (not ``self``, ``*args``, ``**kwargs``)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind in kinds][1:]


@pytest.mark.parametrize(("key", "name"), [("model", m) for m in MODELS] + [("data", d) for d in DATAMODULES])
def test_every_argument_has_a_description_in_the_help(key, name):
    module, base = (models, AnomalibModule) if key == "model" else (data, AnomalibDataModule)
    options = described_options(render_help(base, key, name), key)
    # the help lists the class's own arguments and, for datamodules, those reaching the base through **kwargs
    expected = set(own_parameters(getattr(module, name)))
    if key == "data":
        expected |= set(own_parameters(data.MultiClassDataModule))
    assert expected <= set(options), f"{name}: missing from the help: {sorted(expected - set(options))}"
    undescribed = sorted(option for option, description in options.items() if len(description) < 10)
    assert not undescribed, f"{name}: no description in --{key}.help for {undescribed}"


@pytest.mark.parametrize("cls", [*TORCH_MODELS, *(getattr(models, m) for m in MODELS)], ids=lambda c: c.__name__)
def test_class_docstrings_document_each_constructor_argument_on_its_own(cls):
    documented = {p.arg_name: p.description for p in docstring_parser.parse(cls.__doc__).params}
    parameters = own_parameters(cls)
    assert not [p for p in parameters if not documented.get(p)], f"{cls.__name__}: undocumented arguments"
    assert not set(documented) - set(parameters), f"{cls.__name__}: documents what it does not take"


class GroupedDocstring(models.UniAD):
    """A model documented the old way.

    Args:
        backbone, layers: see UniADModel.
        lr: AdamW learning rate.
    """


def test_the_help_reader_sees_grouped_arguments_as_undescribed():
    # what the docstrings used to do: jsonargparse reads "backbone, layers" as one (unknown) argument
    options = described_options(render_help(AnomalibModule, "model", f"{__name__}.GroupedDocstring"), "model")
    assert options["backbone"] == ""
    assert options["layers"] == ""
    assert options["lr"] == "AdamW learning rate."
