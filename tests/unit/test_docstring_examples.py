"""The ``Example:`` of every model's docstring runs as written (doctest): a user can copy it."""

import doctest

import pytest

import anomalib_multiclass.models as models


@pytest.mark.parametrize("name", ["UniAD", "MintAD", "RLR", "OmniAD", "LGC"])
def test_model_docstring_example_runs(name):
    model_class = getattr(models, name)
    assert "Example:" in model_class.__doc__
    tests = [test for test in doctest.DocTestFinder(recurse=False).find(model_class) if test.examples]
    assert tests, f"{name} has no runnable example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 5
    assert result.failed == 0, f"{name}'s docstring example failed (see the output above)"
