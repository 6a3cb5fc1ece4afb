"""``clion-bench throughput``: what it computes and prints (not how fast anything is)."""

from __future__ import annotations

import math
import statistics

import pytest

from clion_hf.bench import throughput
from clion_hf.bench.cli import main


def test_ratio_interval_and_verdict() -> None:
    med, low, high = throughput.ratio_interval([1.02, 0.99, 1.01, 1.0])
    assert med == pytest.approx(1.005) and low < 1.0 < high
    assert throughput.verdict(low, high).startswith("no difference detected")
    med, low, high = throughput.ratio_interval([0.90, 0.91, 0.89])
    assert high < 0.98 and throughput.verdict(low, high) == "slower; below the 0.98x goal"
    _, low, high = throughput.ratio_interval([1.10, 1.12, 1.11])
    assert throughput.verdict(low, high) == "faster; meets the >= 0.98x goal"
    _, low, high = throughput.ratio_interval([1.0])
    assert math.isnan(low) and throughput.verdict(low, high) == "one round: no interval"


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--rounds", "0"], "--rounds 0 must be >= 1"),
     (["--warmup", "-1"], "--warmup -1 must be >= 0"),
     (["--warmup", "0", "--steps", "1"], "--steps 1 must be >= 2 with --warmup 0")],
)  # fmt: skip
def test_bad_arguments_are_one_line(argv: list[str], message: str, capsys) -> None:  # noqa: ANN001
    assert main(["throughput", *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"clion-bench throughput: error: {message}\n"


@pytest.mark.slow
def test_interleaved_rounds_give_a_table(tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "t.md"
    argv = ["throughput", "--family", "gpt2", "--size", "tiny", "--rounds", "2", "--steps", "2",
            "--warmup", "1", "--batch", "4", "--block", "16", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = out.read_text()
    assert text.strip() == capsys.readouterr().out.strip()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    labels = [r.split("|")[1].strip() for r in rows[1:]]
    assert labels == [label for label, _, _ in throughput.OPTIMS]
    cells = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in rows[1:]}
    assert cells["adamw_torch_fused"][1] == "1.000" and cells["adamw_torch_fused"][3] == "reference"
    assert cells["clion element"][4] and cells["clion global"][4]  # sign-branch fractions
    assert not cells["lion"][4]
    assert "synthetic inputs; 2 rounds of 1 warm-up + 2 timed Trainer steps" in text


def test_ratio_interval_uses_the_exact_t_quantile_beyond_30_rounds() -> None:
    """The 95% interval's half-width is t(0.975, n - 1) standard errors for any n (a table
    that stopped at 30 degrees of freedom gave 2.042 instead of 2.000 at 60)."""
    from scipy import stats as st

    ratios = [1.0 + 0.01 * ((i * 7) % 13 - 6) for i in range(61)]
    _, low, high = throughput.ratio_interval(ratios)
    logs = [math.log(r) for r in ratios]
    se = statistics.stdev(logs) / math.sqrt(len(logs))
    half = (math.log(high) - math.log(low)) / 2
    assert half / se == pytest.approx(st.t.ppf(0.975, 60), rel=1e-9)
