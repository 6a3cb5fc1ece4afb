"""Accuracy as a local ``evaluate`` module (same name and output as the Hub's ``accuracy``).

Shipped inside clion_hf so ``evaluate.load`` works with no network; scikit-learn computes
it, as in the Hub's module.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score

_DESCRIPTION = "Accuracy: the fraction of predictions equal to their reference label."
_KWARGS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
Returns:
    accuracy (float): in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references) -> dict:
        if not references:
            raise ValueError("accuracy needs at least one reference")
        return {"accuracy": float(accuracy_score(references, predictions))}
