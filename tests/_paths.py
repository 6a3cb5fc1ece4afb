"""Where the tests find the repository: one definition, imported by the test modules."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
