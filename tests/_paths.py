"""Where the tests find the repository: one definition, imported by the test modules."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def recipe_exit_status(recipe: str, argv: list[str], env: dict[str, str], monkeypatch) -> int:
    """Run ``recipes/RECIPE.py``'s ``main()`` in this process, through its ``run()``, with
    the session's offline caches; the status it exits with (bad input: 2)."""
    import runpy
    import sys

    import torch

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "CLION_HF_CACHE"):
        monkeypatch.setenv(name, env[name])
    path = REPO / "recipes" / f"{recipe}.py"
    monkeypatch.setattr(sys, "argv", [str(path), *argv])
    threads = torch.get_num_threads()  # the offline defaults take one thread: put it back
    try:
        module = runpy.run_path(str(path), run_name="recipe_under_test")
        try:
            module["run"](module["main"])
        except SystemExit as exit_:
            return exit_.code
    finally:
        torch.set_num_threads(threads)
    raise AssertionError(f"{recipe} did not exit")
