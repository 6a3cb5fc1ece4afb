"""F1 as a local ``evaluate`` module (same name, arguments and output as the Hub's ``f1``).

Shipped inside clion_hf so ``evaluate.load`` works with no network; computed directly
rather than through scikit-learn so it needs no extra dependency.
"""

import datasets
import evaluate

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


def _f1(predictions, references, label) -> float:
    tp = sum(1 for p, r in zip(predictions, references, strict=True) if p == r == label)
    fp = sum(1 for p, r in zip(predictions, references, strict=True) if p == label != r)
    fn = sum(1 for p, r in zip(predictions, references, strict=True) if r == label != p)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


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
        if average == "binary":
            return {"f1": _f1(predictions, references, pos_label)}
        if average == "macro":
            labels = sorted(set(references) | set(predictions))
            return {"f1": sum(_f1(predictions, references, c) for c in labels) / len(labels)}
        raise ValueError(f"unsupported average {average!r}; allowed: binary, macro")
