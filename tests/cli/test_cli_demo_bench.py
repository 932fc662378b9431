"""`crossent demo` reproduces the tutorial and its fix; `crossent bench` runs whatever scripts exist
(tested on stand-in scripts, never the real, slow benchmarks)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_helpers import run

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "crossent-demo"
    return out, run("demo", "--out", out).stdout


def test_demo_follows_the_tutorial(demo_run):
    _, text = demo_run
    epochs = re.findall(r"^Epoch \[(\d+)/1000\], Loss: (\d\.\d{4})$", text, re.MULTILINE)
    assert [int(e) for e, _ in epochs[:10]] == list(range(100, 1001, 100))
    assert "SimpleNN = Linear(in_features=1, out_features=2, bias=True)" in text
    assert "crossent.nn.CrossEntropyLoss()" in text and "SGD lr=0.01" in text
    assert re.search(r"^Prediction for input 3\.0: [01]", text, re.MULTILINE)
    raw = re.search(r"^Test Accuracy: (\d+\.\d\d)%$", text, re.MULTILINE)
    bits = re.search(r"^Test Accuracy \(binary digits\): (\d+\.\d\d)%$", text, re.MULTILINE)
    assert raw and bits
    # a threshold on n gets at most 5 of the 7 test numbers; the binary digits get all of them
    assert float(raw.group(1)) <= 71.43
    assert float(bits.group(1)) == 100.0
    assert "What a careful engineer sees" in text


def test_demo_outputs_are_usable(demo_run):
    out, _ = demo_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["binary_digits"]["accuracy"] == 1.0
    assert metrics["tutorial"]["accuracy"] <= metrics["best_threshold_test_accuracy"] == 5 / 7
    for png in ("loss_curves.png", "confusion_matrices.png"):
        assert (out / png).read_bytes()[:8] == PNG
    # the saved models are ordinary model folders
    table = run("predict", "--model", out / "binary-digits", "--data", out / "test.csv").stdout
    assert table.splitlines()[0] == "predicted,prob_0,prob_1"
    assert [line.split(",")[0] for line in table.splitlines()[1:]] == [
        "0",
        "0",
        "1",
        "1",
        "0",
        "0",
        "1",
    ]
    res = run("evaluate", "--model", out / "tutorial", "--data", out / "test.csv")
    assert "accuracy" in res.stdout


@pytest.fixture()
def fake_benchmarks(tmp_path) -> Path:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "bench_cross_entropy.py").write_text(
        "import argparse\n"
        "p = argparse.ArgumentParser(); p.add_argument('--quick', action='store_true')\n"
        "a = p.parse_args()\n"
        "print('| case | ms |'); print(f'| ce quick={a.quick} | 1.0 |')\n"
    )
    (folder / "bench_shapes.py").write_text("import sys\nprint('shapes args', sys.argv[1:])\n")
    (folder / "bench_broken.py").write_text("raise SystemExit(3)\n")
    (folder / "not_a_bench.py").write_text("raise SystemExit('must not run')\n")
    return folder


def test_bench_runs_every_script_in_order(fake_benchmarks):
    res = run("bench", "--dir", fake_benchmarks, "--quick", expect=1)
    text = res.stdout
    order = [text.index(f"== bench_{n}") for n in ("cross_entropy", "shapes", "broken")]
    assert order == sorted(order)
    assert "| ce quick=True | 1.0 |" in text  # --quick passed to the script that accepts it
    assert "shapes args []" in text  # ... and not to the one that does not
    assert "| bench_broken | failed (exit 3) |" in text and "| bench_cross_entropy | ok |" in text
    assert "must not run" not in text
    assert "1 benchmark(s) failed: bench_broken" in res.stderr


def test_bench_only_and_list(fake_benchmarks):
    assert run("bench", "--dir", fake_benchmarks, "--list").stdout.split() == [
        "bench_cross_entropy",
        "bench_shapes",
        "bench_broken",
    ]
    res = run("bench", "--dir", fake_benchmarks, "--only", "cross_entropy")
    assert "| ce quick=False | 1.0 |" in res.stdout and "bench_shapes" not in res.stdout
    res = run("bench", "--dir", fake_benchmarks, "--only", "linear_cross_entropy", expect=2)
    assert "no benchmark named bench_linear_cross_entropy" in res.stderr


def test_bench_plain_script_folder(tmp_path):
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "bench_x.py").write_text("print('ran as a file')\n")
    assert "ran as a file" in run("bench", "--dir", folder).stdout


def test_bench_finds_the_checkout_benchmarks():
    listed = run("bench", "--list").stdout.split()
    assert "bench_cross_entropy" in listed
