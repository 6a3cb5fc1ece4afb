"""F1 as a local ``evaluate`` module (same name, arguments and output as the Hub's ``f1``).

Shipped inside clion_hf so ``evaluate.load`` works with no network; scikit-learn computes
it, as in the Hub's module.
"""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = "F1: the harmonic mean of precision and recall."
_KWARGS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    pos_label (int): the positive class for average="binary". Defaults to 1.
    average (str): "binary" (default) or "macro" (unweighted mean over classes).
Returns:
    f1 (float): in [0, 1]; a class with no true or predicted positive scores 0.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class F1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, pos_label=1, average="binary") -> dict:
        if average not in ("binary", "macro"):
            raise ValueError(f"unsupported average {average!r}; allowed: binary, macro")
        score = f1_score(references, predictions, pos_label=pos_label, average=average,
                         zero_division=0.0)  # fmt: skip
        return {"f1": float(score)}
