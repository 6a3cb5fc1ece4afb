"""``clion-bench``'s command line as a newcomer meets it: help text, option spellings,
``throughput --optimizers``, duration estimates and progress lines."""

from __future__ import annotations

import time

import pytest
import torch

from clion_hf.bench import cli, throughput
from clion_hf.bench.progress import duration_text, ticker


def test_help_describes_subcommands_in_plain_words(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "clion_hf/" not in text and ".py" not in text and "clion_hf." not in text, text
    flat = " ".join(text.split())
    for words in ("run train every optimizer on every workload",
                  "report write report.md, results.csv and plots",
                  "steps time one optimizer step", "throughput samples/s of whole Trainer",
                  "the hyphenated spelling (--max-steps) is accepted too"):  # fmt: skip
        assert words in flat, flat


def test_options_use_underscores_and_accept_hyphens(capsys: pytest.CaptureFixture) -> None:
    def parse(argv: list[str]):  # noqa: ANN202
        return cli.build_parser(argv).parse_args(argv)

    for argv in (["steps", "--momentum_dtype", "bf16", "--warm_cache"],
                 ["steps", "--momentum-dtype", "bf16", "--warm-cache"],
                 ["steps", "--momentum-dtype=bf16", "--warm-cache"]):  # fmt: skip
        args = parse(argv)
        assert (args.momentum_dtype, args.warm_cache) == (torch.bfloat16, True), argv
    args = parse(["run", "--preset", "smoke", "--max-steps", "7", "--dry-run"])
    assert (args.max_steps, args.dry_run) == (7, True)
    args = parse(["study", "gen-gap", "--report-only", "--no-nu-sweep"])
    assert args.report_only and args.no_nu_sweep
    with pytest.raises(SystemExit):  # an unknown option stays unknown in either spelling
        parse(["run", "--preset", "smoke", "--max-stepz", "7"])
    assert "--max-stepz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["steps", "--help"])
    help_text = capsys.readouterr().out
    assert "--momentum_dtype" in help_text and "--warm_cache" in help_text
    assert "--momentum-dtype" not in help_text and "--warm-cache" not in help_text


def test_throughput_optimizers_are_parsed_and_checked(capsys: pytest.CaptureFixture) -> None:
    import clion_hf  # noqa: F401 - registers --optim clion / lion

    assert throughput.parse_optimizers(throughput.DEFAULT_OPTIMIZERS) == list(throughput.OPTIMS)
    assert throughput.parse_optimizers("adamw_torch,clion:mode=element,nu=1e-5,lion") == [
        ("adamw_torch", "adamw_torch", ""),
        ("clion:mode=element,nu=1e-5", "clion", "mode=element,nu=1e-5"),
        ("lion", "lion", ""),
    ]
    for text, words in (
        ("adamw_bogus", "unknown optimizer 'adamw_bogus'; allowed: any transformers --optim"),
        ("clion:mode=elem", "mode='elem' is not allowed"),
        ("lion,lion", "given twice: lion"),
    ):
        with pytest.raises(throughput.OptimizersError, match=words):
            throughput.parse_optimizers(text)
    assert cli.main(["throughput", "--optimizers", "clion:mode=elem"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("clion-bench throughput: error: --optimizers")


def test_steps_prints_its_estimated_duration_first(capsys: pytest.CaptureFixture) -> None:
    argv = ["steps", "--models", "tiny", "--repeats", "1", "--optimizers",
            "adamw-foreach,lion-foreach", "--warm_cache"]  # fmt: skip
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith(("steps: estimated", "tiny:"))]
    assert lines[0].startswith("steps: estimated duration about "), err
    assert "(1 model(s) x 2 optimizers x 2 steps)" in lines[0]


def test_duration_text() -> None:
    assert duration_text(4.2, 4.4) == "about 4 s"
    assert duration_text(40, 130) == "about 40 s .. 2 min"
    assert duration_text(7200, 9000) == "about 2.0 h .. 2.5 h"


def test_ticker_counts_while_work_runs_and_is_silent_for_quick_work(
    capsys: pytest.CaptureFixture,
) -> None:
    with ticker("quick", every=0.2):
        pass
    assert capsys.readouterr().err == ""
    with ticker("slow work", every=0.2):
        time.sleep(0.7)
    assert "slow work: 00:00 elapsed" in capsys.readouterr().err
    with ticker("off", enabled=False, every=0.2):
        time.sleep(0.5)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_throughput_runs_the_chosen_optimizers(capsys: pytest.CaptureFixture) -> None:
    argv = ["throughput", "--rounds", "1", "--steps", "2", "--warmup", "1", "--batch", "2",
            "--block", "8", "--optimizers", "adamw_torch,clion:mode=element,nu=1e-5"]  # fmt: skip
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "throughput: estimated duration about " in captured.err
    rows = [x for x in captured.out.splitlines() if x.startswith("| ") and "---" not in x]
    assert [r.split("|")[1].strip() for r in rows[1:]] == [
        "adamw_torch", "clion:mode=element,nu=1e-5"
    ]
    assert "x adamw_torch" in rows[0]


def test_readme_bench_commands_parse():
    """Every ``clion-bench`` line in README's code blocks is a command line the CLI accepts
    (flags, presets, subcommands), so a renamed flag cannot leave README wrong."""
    import re
    import shlex

    from _paths import REPO

    from clion_hf.bench.specs import get_preset
    from clion_hf.bench.stability import get_stability_preset
    from clion_hf.bench.study import get_study_preset

    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    lines = [x.split("#")[0].strip() for b in blocks for x in b.splitlines()]
    commands = [shlex.split(x)[1:] for x in lines if x.startswith("clion-bench ")]
    assert len(commands) >= 10
    for argv in commands:
        if argv == ["--help"]:
            continue
        args = cli.build_parser(argv).parse_args(argv)  # argparse exits (2) on a bad line
        if getattr(args, "preset", None):  # and the preset it names exists
            {"run": get_preset, "gen-gap": get_study_preset, "stability": get_stability_preset
             }[getattr(args, "study", args.command)](args.preset)  # fmt: skip


def test_readme_links_and_images_point_into_the_repository():
    """Every relative link and image of README (reports, plots, result directories) names a
    file or directory that is committed, so moving a report cannot leave README pointing at
    nothing."""
    import re
    import subprocess

    from _paths import REPO

    readme = (REPO / "README.md").read_text()
    targets = {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", readme)
               if not re.match(r"[a-z]+:", t) and not t.startswith("#")}  # fmt: skip
    assert len(targets) >= 20
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    files = set(tracked.stdout.splitlines()) if tracked.returncode == 0 else None
    for target in sorted(targets):
        path = target.rstrip("/")
        assert (REPO / path).exists(), target
        if files:  # in a git checkout: committed, not just lying in this working tree
            assert path in files or any(f.startswith(path + "/") for f in files), target


def test_sigterm_after_the_work_is_ignored_only_when_run_as_a_program(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Interpreter shutdown resets Python signal handlers to the default action, so a
    SIGTERM during torch's teardown would kill a finished runner (-15) instead of letting it
    exit with its code: as a program, main() leaves SIGTERM ignored; called in-process with
    argv, it gives the caller's handler back."""
    import signal

    def caller(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, caller)
    try:
        assert cli.main(["throughput", "--optimizers", "clion:mode=elem"]) == 2
        assert signal.getsignal(signal.SIGTERM) is caller
        monkeypatch.setattr("sys.argv", ["clion-bench", "throughput", "--optimizers",
                                         "clion:mode=elem"])  # fmt: skip
        assert cli.main() == 2
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
    capsys.readouterr()
