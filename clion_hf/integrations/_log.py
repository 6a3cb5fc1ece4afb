"""The logger of the Transformers integration: a leaf module, so that ``transformers.py``
and ``_callback.py`` (which imports ``transformers.TrainerCallback``) share it without
importing each other."""

import logging

# A child of transformers' library logger: it follows `--log_level` / the Trainer's
# verbosity and prints next to the Trainer's own "***** Running training *****" lines.
logger = logging.getLogger("transformers.clion_hf")
