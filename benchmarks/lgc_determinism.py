"""Whether one seed fixes an LGC fit on more than one CPU thread, and what broke it before (LGC README, "Repeatable
fits on several CPU threads").

    python -m benchmarks.lgc_determinism [--epochs 1]

1. The backward pass of the two ways to take each image's negative view, repeated 30 times on a (8, 64, 1024) tensor
   with repeated partners: advanced indexing (``x[partner]``, what ``LocalContrastiveLoss`` did until the fix) against
   ``index_select`` (what it does now). Prints whether all 30 gradients are identical.
2. The core benchmark's all-in-all LGC (128 px, ``benchmarks.common.all_in_all_data``), seed 0, fitted twice in
   fresh processes for each setting: 2 threads, 1 thread, 2 threads with ``torch.use_deterministic_algorithms``.
   Prints a hash of the weights of each fit: one seed fixes the fit where the two hashes agree.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

FIT = """
import hashlib, sys
from pathlib import Path
import torch
threads, deterministic, epochs, work = int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), Path(sys.argv[4])
torch.set_num_threads(threads)
torch.use_deterministic_algorithms(deterministic)
from benchmarks.common import SIZES, all_in_all_data, fit_and_test
from benchmarks.proxy import our_model
from anomalib_multiclass.utils.pretrained import install_efficientnet_lite0_weights
install_efficientnet_lite0_weights()
cfg = SIZES["default"]
mixed = all_in_all_data(cfg, work)
torch.manual_seed(0)
model = our_model("LGC", cfg)
fit_and_test(model, mixed(), epochs, work / "mix")
digest = hashlib.sha256()
for name, value in sorted(model.state_dict().items()):
    digest.update(name.encode()); digest.update(value.detach().float().contiguous().numpy().tobytes())
print("WEIGHTS " + digest.hexdigest()[:16])
"""


def backward_repeats(repeats: int = 30) -> dict[str, bool]:
    """Whether ``repeats`` backward passes of each indexing form give identical gradients (2 threads or more)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 1024, generator=generator, requires_grad=True)
    partner = torch.tensor([1, 1, 1, 0, 1, 1, 0, 0])
    upstream = torch.randn(8, 64, 1024, generator=generator)
    forms = {"x[partner]": lambda t: t[partner], "x.index_select(0, partner)": lambda t: t.index_select(0, partner)}
    identical = {}
    for name, form in forms.items():
        gradients = []
        for _ in range(repeats):
            x.grad = None
            form(x).backward(upstream)
            gradients.append(x.grad.clone())
        identical[name] = all(torch.equal(gradients[0], g) for g in gradients[1:])
    return identical


def fit_hash(threads: int, deterministic: bool, epochs: int, work: Path) -> str:
    """The weight hash of one all-in-all LGC fit in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", FIT, str(threads), str(int(deterministic)), str(epochs), str(work)],
        capture_output=True, text=True, env=env, check=False, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("WEIGHTS ")]
    if done.returncode != 0 or not lines:
        return f"failed: {done.stderr[-300:]!r}"
    return lines[0].removeprefix("WEIGHTS ")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, same in backward_repeats().items():
        print(f"backward of {name}: 30 repeats identical: {same}")
    with tempfile.TemporaryDirectory() as scratch:
        for label, threads, deterministic in (("2 threads", 2, False), ("1 thread", 1, False),
                                              ("2 threads, deterministic algorithms", 2, True)):  # fmt: skip
            hashes = [fit_hash(threads, deterministic, args.epochs, Path(scratch) / f"{threads}{deterministic}{i}")
                      for i in range(2)]  # fmt: skip
            verdict = "the same" if hashes[0] == hashes[1] else "different"
            print(f"LGC all-in-all, {args.epochs} epoch(s), {label}: weights {hashes[0]} / {hashes[1]} ({verdict})")


if __name__ == "__main__":
    main()
