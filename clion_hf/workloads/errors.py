"""The one error type of the recipes' input checks."""


class RecipeError(ValueError):
    """Bad user input; recipes print it as a single line and exit with status 2."""
