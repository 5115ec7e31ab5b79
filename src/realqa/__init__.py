"""realqa: image quality and aesthetic scoring with a multimodal LLM, by next-token prediction.

    >>> import realqa
    >>> scorer = realqa.load_scorer("path/or/hub-id", adapter="lora-folder")   # doctest: +SKIP
    >>> [r.score for r in scorer.score(["a.jpg", "b.jpg"], task="quality")]     # doctest: +SKIP
    >>> metric = realqa.create_metric("realqa-demo")                            # doctest: +SKIP
    >>> metric(["a.jpg", "b.jpg"])                                              # doctest: +SKIP
"""

from .conversations import read_conversations
from .engine import Scorer, load_scorer
from .media import collect_inputs
from .metric import Metric, create_metric, list_models, register_model
from .metrics import Evaluation, evaluate, krcc, plcc, plcc_logistic, rmse, srcc
from .results import ScoreResult
from .tasks import Task

__version__ = "0.1.0"

__all__ = [
    "Evaluation",
    "Metric",
    "ScoreResult",
    "Scorer",
    "Task",
    "create_metric",
    "collect_inputs",
    "evaluate",
    "krcc",
    "list_models",
    "load_scorer",
    "read_conversations",
    "register_model",
    "plcc",
    "plcc_logistic",
    "rmse",
    "srcc",
]
