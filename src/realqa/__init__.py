"""realqa: image quality and aesthetic scoring with a multimodal LLM, by next-token prediction.

    >>> import realqa
    >>> scorer = realqa.load_scorer("path/or/hub-id", adapter="lora-folder")   # doctest: +SKIP
    >>> [r.score for r in scorer.score(["a.jpg", "b.jpg"], task="quality")]     # doctest: +SKIP
"""

from .conversations import read_conversations
from .engine import Scorer, load_scorer
from .media import collect_inputs
from .metrics import Evaluation, evaluate, krcc, plcc, plcc_logistic, rmse, srcc
from .results import ScoreResult
from .tasks import Task

__version__ = "0.1.0"

__all__ = [
    "Evaluation",
    "ScoreResult",
    "Scorer",
    "Task",
    "collect_inputs",
    "evaluate",
    "krcc",
    "load_scorer",
    "read_conversations",
    "plcc",
    "plcc_logistic",
    "rmse",
    "srcc",
]
